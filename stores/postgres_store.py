"""The ledger's rows in PostgreSQL: where a site stack keeps the hourly rollup tables, so that the rollup service
writes them while the dashboard, the monthly report and the alert evaluator read the same rows (a DuckDB file has
one writer, and a PromQL server keeps no derived tables).

`postgresql://host:5432/dbname`: the user comes from `AIFMON_POSTGRES_USER` (default `aifmon`), the password from
the file `AIFMON_POSTGRES_PASSWORD_FILE` names (or `AIFMON_POSTGRES_PASSWORD`), never from the URL. A table is
created from the first rows written to it, one column per DataFrame column (integers BIGINT, floats DOUBLE
PRECISION, booleans BOOLEAN, the rest TEXT), as the embedded store's derived tables are; a column a later frame
brings is added. One window's rows are replaced in one transaction, so a reader sees the old rows or the new ones.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from aifmon.stores.store import RowStore, SampleReader, SampleWriter, Store, StoreConfigError, StoreError
from aifmon.telemetry.redact import redact_url

USER_ENV = "AIFMON_POSTGRES_USER"
PASSWORD_ENV = "AIFMON_POSTGRES_PASSWORD"
PASSWORD_FILE_ENV = "AIFMON_POSTGRES_PASSWORD_FILE"
CONNECT_TIMEOUT_S = 10


def _column_type(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "BOOLEAN"
    if pd.api.types.is_integer_dtype(dtype):
        return "BIGINT"
    if pd.api.types.is_float_dtype(dtype):
        return "DOUBLE PRECISION"
    return "TEXT"


def _table(table: str) -> str:
    """The same derived-table names the embedded store uses (`derived_<table>`), checked before any SQL is built."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", table):
        raise ValueError(f"derived table name {table!r} must be lower_snake_case")
    return f"derived_{table}"


class PostgresRowStore(RowStore):
    """Rollup rows in a PostgreSQL database (see the module docstring). One connection, used under a lock: the
    dashboard's threads take turns, and a lost connection is opened again at the next call."""

    @classmethod
    def instead(cls, capability: type[Store]) -> str:
        if capability in (SampleReader, SampleWriter) or issubclass(capability, (SampleReader, SampleWriter)):
            return ("PostgreSQL keeps the ledger's rows, not samples: give the samples' store as --store "
                    "(victoriametrics+http://..., prometheus+http://... or duckdb:///...) and this URL as --rows-store")
        return super().instead(capability)

    def __init__(self, url: str, conninfo: dict[str, Any]):
        self.url = url
        self._conninfo = conninfo
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        with self._lock:
            self._connection()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(**self._conninfo, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)
            except psycopg.Error as e:
                raise StoreError(f"cannot connect to the rows store {redact_url(self.url)}: {str(e).strip()}") from None
        return self._conn

    def _columns(self, cur: psycopg.Cursor, name: str) -> dict[str, str]:
        """Column name -> SQL type of table `name`, in table order; empty when there is no such table."""
        cur.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position", [name])
        return dict(cur.fetchall())

    def replace_rows(self, table: str, window_start_ms: int, rows: pd.DataFrame) -> None:
        name = _table(table)
        if not (rows["window_start_ms"] == window_start_ms).all():
            raise ValueError(f"rows for {table} must all have window_start_ms = {window_start_ms}")
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    have = self._columns(cur, name)
                    if not have and rows.empty:
                        return  # an empty frame of a table never written: nothing to replace
                    types = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_column_type(t)))
                                               for c, t in rows.dtypes.items())
                    ident = sql.Identifier(name)
                    if not have:
                        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(ident, types))
                        cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (window_start_ms)").format(sql.Identifier(f"{name}_window"), ident))
                    for column, dtype in rows.dtypes.items():
                        if have and column not in have:
                            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(ident, sql.Identifier(column), sql.SQL(_column_type(dtype))))
                    cur.execute(sql.SQL("DELETE FROM {} WHERE window_start_ms = %s").format(ident), [window_start_ms])
                    if not rows.empty:
                        columns = sql.SQL(", ").join(sql.Identifier(c) for c in rows.columns)
                        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(ident, columns)) as copy:
                            for record in rows.astype(object).where(rows.notna(), None).itertuples(index=False, name=None):
                                copy.write_row(record)
            except psycopg.Error as e:
                self._drop_broken()
                raise StoreError(f"replacing {table} rows in {redact_url(self.url)} failed, the old rows stay: {str(e).strip()}") from None

    def read_rows(self, table: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        name = _table(table)
        with self._lock:
            try:
                with self._connection().cursor() as cur:
                    types = self._columns(cur, name)
                    if not types:
                        return pd.DataFrame()
                    cur.execute(sql.SQL("SELECT * FROM {} WHERE window_start_ms >= %s AND window_start_ms < %s ORDER BY window_start_ms")
                                .format(sql.Identifier(name)), [int(start_ms), int(end_ms)])
                    records = cur.fetchall()
            except psycopg.Error as e:
                self._drop_broken()
                raise StoreError(f"reading {table} rows from {redact_url(self.url)} failed: {str(e).strip()}") from None
        frame = pd.DataFrame.from_records(records, columns=list(types))
        for column, kind in types.items():  # the dtypes the embedded store gives back for the same rows
            if kind == "bigint" and not frame[column].isna().any():
                frame[column] = frame[column].astype(np.int64)
            elif kind == "double precision":
                frame[column] = frame[column].astype(np.float64)
        return frame

    def first_window_ms(self) -> int | None:
        with self._lock:
            try:
                with self._connection().cursor() as cur:
                    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'derived\\_%%'")
                    firsts: list[int | None] = []
                    for (name,) in cur.fetchall():
                        cur.execute(sql.SQL("SELECT min(window_start_ms) FROM {}").format(sql.Identifier(name)))
                        row = cur.fetchone()
                        firsts.append(row[0] if row else None)
            except psycopg.Error as e:
                self._drop_broken()
                raise StoreError(f"reading the rows of {redact_url(self.url)} failed: {str(e).strip()}") from None
        known = [int(f) for f in firsts if f is not None]
        return min(known) if known else None

    def _drop_broken(self) -> None:
        """After an error, a connection that is no longer usable is closed, so the next call opens a new one."""
        if self._conn is not None and self._conn.broken:
            self._conn.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def open_postgres(url: str, parts: Any) -> PostgresRowStore:
    """The rows store a `postgresql://host:port/db` URL names (checked by the caller), credentials from the environment."""
    if parts.username is not None or parts.password is not None:
        raise StoreConfigError(f"store URL {redact_url(url)!r}: credentials never go in the URL; set {USER_ENV}, and "
                               f"{PASSWORD_FILE_ENV} naming a file that holds the password (or {PASSWORD_ENV})")
    database = parts.path.lstrip("/")
    if not parts.hostname or not database or parts.query:
        raise StoreConfigError(f"store URL {redact_url(url)!r}: expected postgresql://host:5432/database")
    password = os.environ.get(PASSWORD_ENV)
    if file := os.environ.get(PASSWORD_FILE_ENV):
        try:
            with open(file, encoding="utf-8") as fh:
                password = fh.read().strip()
        except OSError as e:
            raise StoreConfigError(f"cannot read the PostgreSQL password file {PASSWORD_FILE_ENV}={file}: {e.strerror}") from None
    conninfo = {"host": parts.hostname, "port": parts.port or 5432, "dbname": database, "user": os.environ.get(USER_ENV, "aifmon")}
    if password:
        conninfo["password"] = password
    return PostgresRowStore(url, conninfo)
