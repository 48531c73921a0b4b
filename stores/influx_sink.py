"""The InfluxDB sink: telemetry and rollup rows written to any server speaking InfluxDB 2's
`/api/v2/write` line protocol (InfluxDB 2, InfluxDB 3, VictoriaMetrics), through influxdb-client,
with an on-disk spool so that nothing acknowledged to the caller is ever lost.

URL: `influxdb+http://host:8086?org=O&bucket=B` (or `influxdb+https://`), optional `spool=DIR`
(default `data/influx-spool/`). The token comes only from the environment: `AIFMON_INFLUXDB_TOKEN`,
or the file named by `AIFMON_INFLUXDB_TOKEN_FILE`; never from the URL or the command line.

Mapping: measurement = metric name, tags = labels, one float field `value`, time in ms. Rollup rows
(`replace_rows`): measurement = table name, tags = the string columns, float fields = the numeric
columns, time = the window start in ms. VictoriaMetrics names such series `measurement_field`
(`aif_gpu_power_watts_value`).

**Why not influxdb-client's batching mode.** Its WriteApi in batching mode acknowledges a point when
it enters an in-memory buffer; after its retries are spent, or when the process exits without
`close()`, the buffer is dropped (influxdb-client-python #165, #80, #198, #644). This sink uses the
SYNCHRONOUS WriteApi, so every request's outcome is known before `append` returns, and does its own
batching (`batch_lines` lines per request) and its own retrying (the spool).

**Acknowledgement.** `append` and `replace_rows` return only when every point of the call is either
accepted by the server (HTTP 2xx) or durably in the spool (file and directory fsynced). A SIGKILL at
any moment therefore loses nothing that was acknowledged.

**The spool** is a directory of segment files `<seq:020d>-<lines>.lp`, each holding at most
`batch_lines` rendered line-protocol lines, numbered in write order:

- *Writing a segment*: write `…lp.tmp`, fsync it, rename it to its final name, fsync the directory,
  then acknowledge. A crash before the rename leaves only a `.tmp` file, which was never
  acknowledged and is deleted when the spool is next opened.
- *Order*: while the spool is not empty (or the server was found down less than
  `retry_interval_s` ago), new points go behind it instead of overtaking it. Replay sends segments
  oldest first and deletes them oldest first, each deletion only after the server acknowledged the
  request that carried the segment. After any crash the segments left are a suffix of the write
  order, so replaying them re-applies writes in their original order (a window's rollup rows
  rewritten twice end with the second version).
- *Exactly once*: a segment is deleted only after an acknowledgement, so every point reaches the
  server at least once. A point can reach it twice only when the server applied a request but the
  acknowledgement was lost (connection dropped or timed out after the write was applied, or a crash
  between the acknowledgement and the unlink); the request is then replayed. The spool stores the
  rendered lines, with explicit timestamps, so the replay is byte-identical. InfluxDB identifies a
  point by (measurement, tag set, field key, timestamp) and a second write of the same point
  overwrites the field with the same value: the stored data is exactly what one write would have
  left. (VictoriaMetrics keeps duplicate samples unless started with `-dedup.minScrapeInterval=1ms`,
  which gives it the same overwrite semantics.)
- *One owner*: the spool is locked (flock) by one sink at a time, and remembers its target
  (server, org, bucket), so points spooled for one bucket are never replayed into another.

Replay runs when a sink opens, at each write once `retry_interval_s` has passed since the last
failure (for at most `replay_budget_s` per call, so a long backlog does not stall the collector),
and at `close()`, which drains what the server takes and leaves the rest for the next sink on the
same spool.

Limits: line protocol cannot delete, so `replace_rows` overwrites the rows of a window group by
group; a group that disappears from a recomputed window keeps its old row. NaN and ±Inf cannot be
written in line protocol; such samples are skipped and counted (`points_skipped`). The sink is
write-only: reads come from the PromQL backend over the same data. Labels keep every character (backslashes
included, see `_ESCAPE_KEY`) except a newline, which line protocol cannot carry and is written `\\n`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from aifmon.stores.store import RowWriter, SampleWriter, SeriesKey, Store, StoreConfigError, StoreError, series_ids_from_json
from aifmon.stores.texts import Texts
from aifmon.telemetry.redact import redact_url

log = logging.getLogger(__name__)

DEFAULT_SPOOL_DIR = "data/influx-spool"
TOKEN_ENV = "AIFMON_INFLUXDB_TOKEN"
TOKEN_FILE_ENV = "AIFMON_INFLUXDB_TOKEN_FILE"
DEFAULT_PORT = 8086
BATCH_LINES = 5000  # InfluxDB's documented optimal batch size

# The escaping influxdb-client's own Point uses (influxdb_client/client/write/point.py), so the server
# parses these lines as it parses the official client's; plus one rule the client lacks: a backslash is
# written `\\`. Unescaped, a value ending in one (`C:\`) escaped the comma behind it and swallowed the
# next tag; the client's remedy (a space after it) stores `C: `. Line protocol reads `\\` as one backslash
# (VictoriaMetrics, tested in tests/test_influx_sink.py); InfluxDB 2's parser keeps both and refuses a tag value ending in one
# (influxdata/docs-v2#5481). A newline cannot be carried at all: like the client, it is written `\n`.
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\\": "\\\\", "\n": r"\n", "\t": r"\t", "\r": r"\r"})

_SEGMENT = re.compile(r"^(\d{20})-(\d+)\.lp$")
_TABLE = re.compile(r"[a-z][a-z0-9_]*")
# Statuses that mean "this request's content is wrong": sending it again cannot succeed.
_BAD_REQUEST = {400, 413, 422}


class _Transient(Exception):
    """The server did not take a request now (down, overloaded, or refusing our credentials); retry later."""


class _Rejected(Exception):
    """The server refused a request's content (bad line protocol, too large); retrying cannot help."""


def _write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it (a separate function so tests can make the disk full)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make renames and unlinks in `path` durable (POSIX keeps directory entries apart from file data)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InfluxSink(SampleWriter, RowWriter):
    """Write-only store that sends samples and rollup rows to an InfluxDB 2 write endpoint, spooling
    to disk while the server cannot take them (see the module docstring for the guarantees)."""

    @classmethod
    def instead(cls, capability: type[Store]) -> str:
        return ("the InfluxDB sink is write-only; read the same data through the PromQL backend "
                "(victoriametrics+http:// or prometheus+http://) or a duckdb:/// store")

    def __init__(
        self,
        server_url: str,
        org: str,
        bucket: str,
        token: str,
        spool_dir: str | Path = DEFAULT_SPOOL_DIR,
        *,
        url: str | None = None,
        batch_lines: int = BATCH_LINES,
        timeout_s: float = 10.0,
        retry_interval_s: float = 5.0,
        replay_budget_s: float = 5.0,
    ):
        """`server_url`: `http(s)://host:port`; `timeout_s`: per request, s; `retry_interval_s`: how long
        after a failure new points go straight to the spool before the server is tried again, s;
        `replay_budget_s`: the most time one write call spends replaying the backlog, s."""
        if batch_lines < 1:
            raise ValueError("batch_lines must be at least 1")
        self.url = url or f"influxdb+{server_url}?org={org}&bucket={bucket}"
        self.server_url, self.org, self.bucket = server_url, org, bucket
        self.spool_dir = Path(spool_dir)
        self.batch_lines = batch_lines
        self.retry_interval_s = retry_interval_s
        self.replay_budget_s = replay_budget_s
        # Self-metrics, in points: sent directly, put in the spool, replayed from it, skipped (NaN/Inf or
        # rejected by the server and moved to `rejected/`).
        self.points_sent = 0
        self.points_spooled = 0
        self.points_replayed = 0
        self.points_skipped = 0
        self._lock = threading.Lock()  # one request or spool change at a time
        self._ids_lock = threading.Lock()
        self._closed = False
        self._retry_at = 0.0  # time.monotonic() before which the server is not tried again
        self._down_since: float | None = None
        self._ids: dict[SeriesKey, int] = {}
        self._prefixes: list[str] = []  # series id -> "measurement,tag=v,…" (line protocol up to the field)
        self._open_spool()
        self._backlog = self._segments()  # the spool's segments, oldest first; changed only under _lock
        self._next_seq = self._backlog[-1][0] + 1 if self._backlog else 1
        # debug=False: the client's debug mode logs request headers, the Authorization token among them.
        self._client = InfluxDBClient(url=server_url, token=token, org=org, timeout=int(timeout_s * 1000), debug=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        if self._backlog:
            log.info("InfluxDB sink: %d points in spool %s from an earlier run; replaying", self.spool_backlog_points, self.spool_dir)
            with self._lock:
                self._drain(time.monotonic() + replay_budget_s)

    # -- spool ---------------------------------------------------------------------------------
    def _open_spool(self) -> None:
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.spool_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot create InfluxDB spool {self.spool_dir}: {e}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreError(
                f"InfluxDB spool {self.spool_dir} is held by another InfluxDB sink (this or another aifmon process); "
                "stop it, or give this one its own spool with ?spool=DIR in the store URL"
            ) from None
        for tmp in self.spool_dir.glob("*.tmp"):  # torn writes: never acknowledged
            tmp.unlink()
        target = f"{self.server_url} org={self.org} bucket={self.bucket}\n"
        target_file = self.spool_dir / "target"
        held = target_file.read_text() if target_file.exists() else None
        if held != target:
            waiting = sum(n for _, n, _ in self._segments())
            if held is not None and waiting:
                os.close(self._lock_fd)
                raise StoreError(
                    f"InfluxDB spool {self.spool_dir} holds {waiting} unsent points for {held.strip()}, "
                    f"not for {target.strip()}; open that target once to replay them, or choose another spool with ?spool=DIR"
                )
            try:
                _write_durably(self.spool_dir / "target.tmp", target.encode())
                os.replace(self.spool_dir / "target.tmp", target_file)
                _fsync_dir(self.spool_dir)
            except OSError as e:
                os.close(self._lock_fd)
                raise StoreError(f"cannot write to InfluxDB spool {self.spool_dir}: {e}") from None

    def _segments(self) -> list[tuple[int, int, Path]]:
        """(sequence number, line count, path) of every spooled segment, oldest first."""
        found = []
        for path in self.spool_dir.iterdir():
            m = _SEGMENT.match(path.name)
            if m:
                found.append((int(m[1]), int(m[2]), path))
        return sorted(found)

    @property
    def spool_backlog_points(self) -> int:
        """Points waiting in the spool."""
        return sum(n for _, n, _ in self._backlog)

    def _spool(self, chunks: list[list[str]]) -> None:
        """Put chunks in the spool, durably, behind everything already there."""
        written: list[tuple[int, int, Path]] = []
        try:
            for chunk in chunks:
                seq = self._next_seq + len(written)
                final = self.spool_dir / f"{seq:020d}-{len(chunk)}.lp"
                tmp = final.with_name(final.name + ".tmp")
                _write_durably(tmp, ("\n".join(chunk) + "\n").encode())
                os.rename(tmp, final)
                written.append((seq, len(chunk), final))
            _fsync_dir(self.spool_dir)
        except OSError as e:
            # Nothing of this call is acknowledged, so take back what did land: a caller that retries
            # must not find half of it replayed twice. Earlier calls' segments are untouched.
            for _, _, path in written:
                path.unlink(missing_ok=True)
            for tmp in self.spool_dir.glob("*.tmp"):
                tmp.unlink(missing_ok=True)
            raise StoreError(
                f"cannot write to InfluxDB spool {self.spool_dir} ({e}); the server is unreachable and these "
                f"{sum(map(len, chunks))} points were NOT stored; free disk space there"
            ) from None
        self._backlog += written
        self._next_seq += len(written)
        self.points_spooled += sum(map(len, chunks))

    def _drain(self, deadline: float) -> None:
        """Replay spooled segments oldest first until the spool is empty, the server fails, or `deadline`."""
        while self._backlog and time.monotonic() < deadline:
            batch: list[tuple[int, Path]] = []
            lines = 0
            for _, n, path in self._backlog:
                if batch and lines + n > self.batch_lines:
                    break
                batch.append((n, path))
                lines += n
            body = b"".join(path.read_bytes() for _, path in batch)
            try:
                self._send(body)
            except _Transient as e:
                self._failed(e)
                return
            except _Rejected as e:
                self._quarantine(batch, e)
            else:
                self._succeeded()
                for _, path in batch:  # oldest first: what a crash leaves behind is a suffix
                    path.unlink()
                _fsync_dir(self.spool_dir)
                self.points_replayed += lines
            del self._backlog[:len(batch)]
            if not self._backlog:
                log.info("InfluxDB sink: spool empty; %d points replayed to %s so far", self.points_replayed, self.server_url)

    def _quarantine(self, batch: list[tuple[int, Path]], error: _Rejected) -> None:
        """Move segments the server refuses to `rejected/`: retrying cannot help, and they must not
        block everything behind them. Kept on disk for the operator."""
        rejected = self.spool_dir / "rejected"
        rejected.mkdir(exist_ok=True)
        for n, path in batch:
            os.rename(path, rejected / path.name)
            self.points_skipped += n
        _fsync_dir(rejected)
        _fsync_dir(self.spool_dir)
        log.error("InfluxDB sink: %s refused %d spooled points (%s); moved them to %s", self.server_url,
                  sum(n for n, _ in batch), error, rejected)

    # -- sending -------------------------------------------------------------------------------
    def _send(self, body: bytes) -> None:
        """One synchronous write request; returns when the server acknowledged it."""
        try:
            # influxdb-client annotates write_precision as WritePrecision, whose constants (MS) are plain str
            self._write_api.write(bucket=self.bucket, org=self.org, record=body,
                                  write_precision=WritePrecision.MS)  # type: ignore[arg-type]
        except ApiException as e:
            if e.status in _BAD_REQUEST:
                raise _Rejected(f"HTTP {e.status}: {(e.body or e.reason or '').strip()[:300]}") from None
            # 5xx, 429, and also 401/403/404 (token, org or bucket refused): the points are fine, the
            # server or its configuration is not; keep them until an operator has fixed it.
            hint = f"; check {TOKEN_ENV}, org and bucket" if e.status in (401, 403, 404) else ""
            raise _Transient(f"HTTP {e.status}: {(e.body or e.reason or '').strip()[:300]}{hint}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _Transient(f"{type(e).__name__}: {e}") from None

    def _succeeded(self) -> None:
        if self._down_since is not None:
            log.info("InfluxDB sink: %s takes writes again after %.0f s", self.server_url, time.monotonic() - self._down_since)
            self._down_since = None

    def _failed(self, error: _Transient) -> None:
        self._retry_at = time.monotonic() + self.retry_interval_s
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("InfluxDB sink: %s is not taking writes (%s); spooling to %s", self.server_url, error, self.spool_dir)

    def _write_lines(self, lines: list[str]) -> None:
        """Send `lines` in order, or spool what the server does not take; returns once all are safe."""
        chunks = [lines[i:i + self.batch_lines] for i in range(0, len(lines), self.batch_lines)]
        with self._lock:
            if self._closed:
                raise StoreError(f"InfluxDB sink {self.url} is closed")
            if not chunks:
                return
            now = time.monotonic()
            if self._backlog:
                self._spool(chunks)  # behind the backlog, never ahead of it
                if now >= self._retry_at:
                    self._drain(now + self.replay_budget_s)
                return
            if now < self._retry_at:  # found down moments ago: do not pay a timeout per call
                self._spool(chunks)
                return
            for i, chunk in enumerate(chunks):
                try:
                    self._send(("\n".join(chunk) + "\n").encode())
                except _Transient as e:
                    self._failed(e)
                    self._spool(chunks[i:])
                    return
                except _Rejected as e:
                    raise StoreError(
                        f"InfluxDB at {self.server_url} rejected a write ({e}); {i * self.batch_lines} of the "
                        f"{len(lines)} points of this call were stored before it, the rest were not"
                    ) from None
                self._succeeded()
                self.points_sent += len(chunk)

    # -- store interface: writes ---------------------------------------------------------------
    def register(self, metrics: Texts, labels: Texts) -> np.ndarray:
        return series_ids_from_json(self, metrics, labels)

    def series_ids(self, keys: list[SeriesKey]) -> np.ndarray:
        """Ids for these series, valid within this sink only (line protocol names series by their
        measurement and tags, so nothing needs registering on the server)."""
        with self._ids_lock:
            for key in keys:
                if key not in self._ids:
                    metric, labels = key
                    tags = "".join(
                        f",{k.translate(_ESCAPE_KEY)}={v.translate(_ESCAPE_KEY)}" for k, v in sorted(labels) if v != ""
                    )  # an empty label is an absent one (Prometheus), and InfluxDB refuses empty tag values
                    self._ids[key] = len(self._prefixes)
                    self._prefixes.append(metric.translate(_ESCAPE_MEASUREMENT) + tags)
            return np.fromiter((self._ids[k] for k in keys), dtype=np.int64, count=len(keys))

    def append(self, series_ids: np.ndarray, t_ms: np.ndarray, values: np.ndarray) -> None:
        """Write samples (time in ms since the epoch, scalar or one per sample; values in base units).

        Returns when every sample is accepted by the server or fsynced in the spool. NaN and ±Inf are
        skipped (line protocol has no such values) and counted in `points_skipped`.
        """
        ids = np.asarray(series_ids, dtype=np.int64)
        v = np.asarray(values, dtype=np.float64)
        t = np.broadcast_to(np.asarray(t_ms, dtype=np.int64), ids.shape)
        if v.shape != ids.shape:
            raise ValueError(f"{ids.size} series ids but {v.size} values")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self._prefixes)):
            raise ValueError("series id not issued by this sink's series_ids()")
        finite = np.isfinite(v)
        if not finite.all():
            self.points_skipped += int((~finite).sum())
            ids, v, t = ids[finite], v[finite], t[finite]
        p = self._prefixes
        # Python floats (tolist) so repr gives the shortest exact decimal; a '.' or exponent keeps it a float field.
        self._write_lines([f"{p[i]} value={x!r} {ts}" for i, x, ts in zip(ids.tolist(), v.tolist(), t.tolist())])

    def replace_rows(self, table: str, window_start_ms: int, rows: pd.DataFrame) -> None:
        """Write rollup rows as points of measurement `table` at time `window_start_ms` (ms): string
        columns become tags, numeric columns float fields.

        A row rewritten with the same tags overwrites the earlier one; a group missing from a rewrite
        keeps its old row (line protocol cannot delete).
        """
        if not _TABLE.fullmatch(table):
            raise ValueError(f"derived table name {table!r} must be lower_snake_case")
        if "window_start_ms" not in rows or not (rows["window_start_ms"] == window_start_ms).all():
            raise ValueError(f"rows for {table} must all have window_start_ms = {window_start_ms}")
        data = rows.drop(columns="window_start_ms")
        numeric = [c for c in data.columns if pd.api.types.is_numeric_dtype(data[c])]
        tag_cols = sorted(c for c in data.columns if c not in numeric)
        if not numeric:
            raise ValueError(f"rows for {table} have no numeric column to write as a field")
        lines = []
        for tag_values, field_values in zip(
            data[tag_cols].itertuples(index=False, name=None), data[numeric].astype("float64").itertuples(index=False, name=None)
        ):
            tags = "".join(
                f",{str(k).translate(_ESCAPE_KEY)}={str(v).translate(_ESCAPE_KEY)}"
                for k, v in zip(tag_cols, tag_values) if not pd.isna(v) and str(v) != ""
            )
            fields = ",".join(f"{str(k).translate(_ESCAPE_KEY)}={x!r}" for k, x in zip(numeric, field_values) if np.isfinite(x))
            if fields:
                lines.append(f"{table}{tags} {fields} {int(window_start_ms)}")
            else:
                self.points_skipped += 1
        self._write_lines(lines)

    def close(self, timeout_s: float = 60.0) -> None:
        """Replay the spool for up to `timeout_s` s, then release it and the client. Points the server
        did not take stay in the spool for the next sink opened on it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._backlog:
                self._drain(time.monotonic() + timeout_s)
            left = self.spool_backlog_points
            if left:
                log.warning("InfluxDB sink: %d points remain in spool %s; the next sink opened on it replays them", left, self.spool_dir)
            self._client.close()
            os.close(self._lock_fd)  # releases the flock

    def mark_stale(self, series_ids: np.ndarray, t_ms: int) -> None:
        pass  # line protocol has no staleness: readers of InfluxDB judge it by time


def _read_token() -> str:
    """The API token from AIFMON_INFLUXDB_TOKEN or the file AIFMON_INFLUXDB_TOKEN_FILE names."""
    direct, file = os.environ.get(TOKEN_ENV), os.environ.get(TOKEN_FILE_ENV)
    if direct and file:
        raise StoreConfigError(f"both {TOKEN_ENV} and {TOKEN_FILE_ENV} are set; set only one")
    if file:
        try:
            direct = Path(file).read_text().strip()
        except OSError as e:
            raise StoreConfigError(f"cannot read the InfluxDB token file {TOKEN_FILE_ENV}={file}: {e.strerror}") from None
        if not direct:
            raise StoreConfigError(f"the InfluxDB token file {file} ({TOKEN_FILE_ENV}) is empty")
    if not direct:
        raise StoreConfigError(
            f"no InfluxDB token: set {TOKEN_ENV}, or {TOKEN_FILE_ENV} to a file holding it (for a server without "
            "authentication, such as VictoriaMetrics, any non-empty value)"
        )
    return direct


def open_influx_sink(url: str) -> InfluxSink:
    """Open the sink an `influxdb+http://host:8086?org=O&bucket=B[&spool=DIR]` URL names (also
    `influxdb+https://`). Raises StoreConfigError with the expected form when the URL does not parse, or without a token."""
    form = "expected influxdb+http://host:8086?org=O&bucket=B (optionally &spool=DIR; the token comes from " \
           f"{TOKEN_ENV} or {TOKEN_FILE_ENV})"
    shown = redact_url(url)  # a refused URL may hold the token; messages end up in logs
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise StoreConfigError(f"store URL {shown!r}: {e}; {form}") from None
    if parts.scheme not in ("influxdb+http", "influxdb+https"):
        raise StoreConfigError(f"store URL {shown!r}: {form}")
    if parts.username is not None or parts.password is not None:
        # Say it without echoing the URL: it holds a secret, and errors end up in logs.
        raise StoreConfigError(f"InfluxDB store URL for {parts.hostname}: a token never goes in the URL; set {TOKEN_ENV} or {TOKEN_FILE_ENV}")
    if not parts.hostname:
        raise StoreConfigError(f"store URL {shown!r} names no host; {form}")
    if parts.path not in ("", "/") or parts.fragment:
        raise StoreConfigError(f"store URL {shown!r}: unexpected path {parts.path!r}; {form}")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    if "token" in query:
        raise StoreConfigError(f"InfluxDB store URL for {parts.hostname}: a token never goes in the URL; set {TOKEN_ENV} or {TOKEN_FILE_ENV}")
    unknown = sorted(set(query) - {"org", "bucket", "spool"})
    if unknown:
        raise StoreConfigError(f"store URL {shown!r}: unknown parameter(s) {', '.join(unknown)}; {form}")
    for key, values in query.items():
        if len(values) != 1 or not values[0]:
            raise StoreConfigError(f"store URL {shown!r}: {key}= must be given once, not empty; {form}")
    missing = [k for k in ("org", "bucket") if k not in query]
    if missing:
        raise StoreConfigError(f"store URL {shown!r}: missing {' and '.join(k + '=' for k in missing)}; {form}")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    server_url = f"{parts.scheme.removeprefix('influxdb+')}://{host}:{port or DEFAULT_PORT}"
    return InfluxSink(
        server_url, query["org"][0], query["bucket"][0], _read_token(),
        query.get("spool", [DEFAULT_SPOOL_DIR])[0], url=url,
    )
