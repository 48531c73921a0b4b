"""The embedded collector: scrapes every exporter of the inventory and writes the samples to the store.

Each cycle scrapes all targets concurrently and stamps a target's samples with the time its scrape
started (as Prometheus does). A scrape has one deadline on the time it waits on the target (connect, headers and body) and
a body size limit, so a target that trickles its answer cannot hold the cycle open; whatever fails a
target (it is down or late, its body is too large, not Prometheus text, or has a bad line) fails only
that target: it gets `up` 0 and its reason is counted (`Collector.failures`), and the other targets'
samples of the cycle are stored. A series text that repeats a label name is a bad line, as in Prometheus. NaN and
+-Inf sample values are stored as values, as Prometheus does. A sample whose own timestamp is outside the window
around now (`aifmon.ingest.window`: a reset BMC clock's 1970, a NaN timestamp) is refused and counted
(`Collector.refused`); the other samples of its scrape are stored.
Per target it also records `up` (1/0) and `scrape_duration_seconds`, and the running counts
`scrape_failures_total{reason}` (failed scrapes) and `scrape_samples_refused_total{reason}` (refused samples), each
from the first one on, labelled `instance` and `factory` (no `job` label: on our series `job` is
the Slurm job of `aif_gpu_job_info`). Series that were in a target's previous scrape and are not in
this one (the target is down, or a job ended) get a staleness marker, so live reads drop them at once. A cycle's samples are written
in one transaction: when `collect_once` returns, they are on disk.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from aifmon.ingest.parser import parse_stream
from aifmon.ingest.series_index import SeriesIndex
from aifmon.ingest.window import NO_TIMESTAMP, SCRAPE_WINDOW, SampleWindow
from aifmon.stores.store import SampleWriter, SeriesKey, series_key
from aifmon.telemetry.inventory import Inventory

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 2**20
"""Default body size limit of one scrape, bytes: 400,000 series (a large factory) of about 150 bytes a line are 60 MB."""
CHUNK_BYTES = 4 * 2**20
"""One read of a body, bytes, parsed before the next: only a chunk of the body is held. A 64 MB body parses in 4 MB
chunks on one thread in about a third more time than whole on two (`bench/ingest.py` times both)."""


@dataclass(frozen=True)
class Target:
    """One exporter to scrape at `http://{address}/metrics`; `labels` are added to its series unless the exporter
    sets them itself."""

    address: str
    labels: dict[str, str]


def target_labels(factory_id: str, address: str) -> dict[str, str]:
    """The labels the collector adds to every series of a factory's target."""
    return {"factory": factory_id, "instance": address}


def targets_of(inventory: Inventory) -> list[Target]:
    return [Target(address, target_labels(f.id, address)) for f in inventory.live_factories() for address in f.targets]


FAILURES = "scrape_failures_total"
"""Failed scrapes of a target so far, by `reason` (what `Collector.failures` counts)."""
REFUSED = "scrape_samples_refused_total"
"""Samples of a target refused so far for their timestamp, by `reason` (what `Collector.refused` counts)."""


@dataclass
class ScrapeResult:
    """One target's scrape: series ids, values and times (ms) ready to append, or the error and its reason."""

    target: Target
    started: float  # s since the Unix epoch
    duration_s: float
    series_ids: np.ndarray
    values: np.ndarray
    t_ms: np.ndarray
    error: str | None = None
    reason: str | None = None  # one word per kind of failure: what `Collector.failures` counts
    present: np.ndarray | None = None  # ids of every series in the exposition, refused samples' too (None: series_ids)
    refused: Counter[str] = field(default_factory=Counter)  # samples refused for their timestamp, by reason


class ScrapeFailed(Exception):
    """A fetch that failed; `reason` is one word: timeout, connection, http_status, content_type or too_large."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _Deadline:
    """A budget of time spent waiting on a target, s: past it, the socket is shut down, which ends a read blocked on it
    at once. Socket timeouts (urllib's included) bound each read, not the answer: a target that sends a byte a second
    never times out. Time the scrape spends on the body between reads (parsing it, registering new series) is not
    the target's and is not counted. One timer thread per fetch: when it fires early because of that time, it waits
    again for what is left (a timer per read would start several threads a scrape, thousands a second at a site)."""

    def __init__(self, conn: http.client.HTTPConnection, budget_s: float):
        self.conn, self.budget_s = conn, budget_s
        self.expired = threading.Event()
        self._lock = threading.Lock()
        self._waited_s = 0.0
        self._since: float | None = None  # when the wait under way began (perf_counter, s)
        self._timer: threading.Timer | None = None
        self._over = False
        self._arm(budget_s)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Count the time of the block against the budget; raises TimeoutError if the budget ran out."""
        with self._lock:
            if self._waited_s >= self.budget_s:
                raise TimeoutError
            self._since = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self._waited_s += time.perf_counter() - self._since
                self._since = None
        if self.expired.is_set():  # the shut-down socket ends a body early, as if it were complete
            raise TimeoutError

    def cancel(self) -> None:
        with self._lock:
            self._over = True
            if self._timer is not None:
                self._timer.cancel()

    def _arm(self, after_s: float) -> None:
        self._timer = threading.Timer(after_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._over:
                return
            waited = self._waited_s + (time.perf_counter() - self._since if self._since is not None else 0.0)
            if waited < self.budget_s:
                self._arm(self.budget_s - waited)
                return
            self.expired.set()
        sock = self.conn.sock  # once: the fetch's own close() may set it to None meanwhile
        if sock is not None:  # None while connecting: the wait after connect() raises then
            with contextlib.suppress(OSError):  # already closed: the fetch ended as the deadline came
                sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def fetch(address: str, timeout_s: float, max_bytes: int) -> Iterator[tuple[str, Iterator[bytes]]]:
    """GET `http://{address}/metrics`: (Content-Type, the body in chunks of up to `CHUNK_BYTES`), answered within
    `timeout_s` seconds of waiting on the target (`_Deadline`) and at most `max_bytes` bytes long. Raises ScrapeFailed,
    from the chunks too: read them inside the block. The body is never held whole: a chunk is parsed while the target
    sends the next (TCP holds it back meanwhile)."""
    conn = http.client.HTTPConnection(address, timeout=timeout_s)
    deadline = _Deadline(conn, timeout_s)
    try:
        with deadline.waiting():
            conn.connect()
        with deadline.waiting():  # a deadline passed while connecting (no socket to shut down yet) ends it here
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
        if resp.status != 200:
            raise ScrapeFailed("http_status", f"answered HTTP {resp.status} {resp.reason}")
        ctype = resp.getheader("Content-Type", "")
        if not ctype.startswith("text/plain") and "openmetrics" not in ctype:
            raise ScrapeFailed("content_type", f"answered {ctype or 'no content type'}, not Prometheus text")
        if resp.length is not None and resp.length > max_bytes:
            raise ScrapeFailed("too_large", f"body is larger than the limit of {max_bytes} bytes")
        yield ctype, _chunks(resp, deadline, max_bytes)
    except (OSError, http.client.HTTPException) as e:
        # A read that waits timeout_s on the socket (TimeoutError) may come just before the timer: a timeout too.
        if deadline.expired.is_set() or isinstance(e, TimeoutError):
            raise ScrapeFailed("timeout", f"no complete answer within {timeout_s:g} s") from None
        raise ScrapeFailed("connection", f"{type(e).__name__}: {e}") from None
    finally:
        deadline.cancel()
        conn.close()


def _chunks(resp: http.client.HTTPResponse, deadline: _Deadline, max_bytes: int) -> Iterator[bytes]:
    """The body of `resp` in reads of up to `CHUNK_BYTES`; raises ScrapeFailed past `max_bytes`, IncompleteRead if it
    ends before its Content-Length."""
    size = 0
    while True:
        with deadline.waiting():
            chunk = resp.read(CHUNK_BYTES)  # fills the chunk, chunked transfer encoding too, unless the body ends
        if not chunk:
            if resp.length:  # http.client's read(n) ends a short body quietly: its cut-off last line would parse
                raise http.client.IncompleteRead(b"", resp.length)
            return
        size += len(chunk)
        if size > max_bytes:
            raise ScrapeFailed("too_large", f"body is larger than the limit of {max_bytes} bytes")
        yield chunk


def resolve(chunks: Iterable[bytes], timestamp_unit: str, index: SeriesIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scrape's body, chunk by chunk (`parse_stream`, `SeriesIndex.piece_ids`): (series ids, values, timestamps in
    ms or NO_TIMESTAMP), the body never held whole. Raises what they raise."""
    value_parts, time_parts, row = [], [], 0
    for samples in parse_stream(chunks, timestamp_unit):
        index.piece_ids(samples, row)
        value_parts.append(samples.values)
        time_parts.append(samples.t_ms)
        row += len(samples)
    return index.finish(), np.concatenate(value_parts or [np.zeros(0)]), np.concatenate(time_parts or [np.zeros(0, np.int64)])


def scrape(target: Target, index: SeriesIndex, timeout_s: float, max_bytes: int = MAX_BODY_BYTES,
           window: SampleWindow = SCRAPE_WINDOW) -> ScrapeResult:
    """Fetch (within `timeout_s` seconds and `max_bytes` bytes), parse and resolve one target; errors are returned,
    never raised. A bad line fails the whole scrape; a sample whose timestamp is outside `window` is left out."""
    started = time.time()
    t0 = time.perf_counter()
    try:
        with fetch(target.address, timeout_s, max_bytes) as (ctype, chunks):
            ids, values, t_ms = resolve(chunks, "s" if "openmetrics" in ctype else "ms", index)
        now_ms = int(started * 1000)
        refused, counts = window.refused(t_ms, now_ms)
        t_ms = np.where(t_ms == NO_TIMESTAMP, now_ms, t_ms)
        if refused is None:
            return ScrapeResult(target, started, time.perf_counter() - t0, ids, values, t_ms)
        kept = ~refused
        return ScrapeResult(target, started, time.perf_counter() - t0, ids[kept], values[kept], t_ms[kept],
                            present=ids, refused=counts)
    except (ScrapeFailed, ValueError) as e:  # ValueError: ExpositionError, or bytes that are not UTF-8 in a series text
        empty = np.zeros(0)
        reason = e.reason if isinstance(e, ScrapeFailed) else "bad_body"
        return ScrapeResult(target, started, time.perf_counter() - t0, empty.astype(np.int64), empty, empty.astype(np.int64),
                            f"{reason}: {e}", reason)


class Collector:
    """Scrapes `targets` every `interval_s` seconds into `store`, each within `timeout_s` seconds (default 80 % of the
    interval, at least 0.5 s) and `max_body_bytes`, keeping samples whose timestamps are inside `window`."""

    def __init__(self, store: SampleWriter, targets: list[Target], interval_s: float = 5.0, timeout_s: float | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, window: SampleWindow = SCRAPE_WINDOW):
        if interval_s <= 0:
            raise ValueError("scrape interval must be positive")
        self.store = store
        self.targets = targets
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else max(0.5, interval_s * 0.8)
        self.max_body_bytes = max_body_bytes
        self.window = window
        self._indexes = {t.address: SeriesIndex(store, t.labels) for t in targets}
        self._live = {t.address: np.zeros(0, dtype=np.int64) for t in targets}  # series of each target's last scrape
        self._pool = ThreadPoolExecutor(max_workers=min(32, max(1, len(targets))), thread_name_prefix="scrape")
        self._stop = threading.Event()
        self._down: set[str] = set()
        self.cycles = 0
        self.samples_written = 0
        self.failures: Counter[tuple[str, str]] = Counter()  # failed scrapes by (target address, reason)
        self.refused: Counter[tuple[str, str]] = Counter()  # samples refused for their timestamp by (target address, reason)
        self._own: dict[SeriesKey, int] = {}

    def collect_once(self) -> int:
        """One scrape of every target, written durably in one transaction; returns the number of samples stored."""
        results = list(self._pool.map(
            lambda t: scrape(t, self._indexes[t.address], self.timeout_s, self.max_body_bytes, self.window), self.targets))
        health = self._own_ids([series_key(m, r.target.labels) for r in results for m in ("up", "scrape_duration_seconds")])
        ids, t_ms, values = [health], [], []
        for r in results:
            self._log_state(r)
            if r.reason:
                self.failures[r.target.address, r.reason] += 1
            for reason, n in r.refused.items():
                if not self.refused[r.target.address, reason]:  # logged once; the counter series tracks the rest
                    log.warning("target %s: %d sample(s) refused, whose timestamp %s", r.target.address, n,
                                self.window.explain(reason, int(r.started * 1000)))
                self.refused[r.target.address, reason] += n
            t_ms.append(np.full(2, int(r.started * 1000), dtype=np.int64))
            values.append(np.array([0.0 if r.error else 1.0, r.duration_s]))
        ids.append(self._counts(results, t_ms, values))
        for r in results:
            ids.append(r.series_ids)
            t_ms.append(r.t_ms)
            values.append(r.values)
        n = sum(len(v) for v in values)
        self.store.append(np.concatenate(ids), np.concatenate(t_ms), np.concatenate(values))
        for r in results:
            live, present = self._live[r.target.address], r.series_ids if r.present is None else r.present
            if present is live:  # the series index hands back the last scrape's ids when nothing changed
                continue
            gone = np.setdiff1d(live, present)
            self.store.mark_stale(gone, int(r.started * 1000))  # a target that went down, or a job that ended
            self._live[r.target.address] = present
        self.cycles += 1
        self.samples_written += n
        return n

    def _counts(self, results: list[ScrapeResult], t_ms: list[np.ndarray], values: list[np.ndarray]) -> np.ndarray:
        """The series ids of the failure and refusal counters (FAILURES, REFUSED), whose values and times (each target's
        scrape start, as for `up`) it appends to `values` and `t_ms`."""
        started = {r.target.address: int(r.started * 1000) for r in results}
        labels = {r.target.address: r.target.labels for r in results}
        counts = [(metric, address, reason, n) for metric, counter in ((FAILURES, self.failures), (REFUSED, self.refused))
                  for (address, reason), n in counter.items()]
        t_ms.append(np.array([started[address] for _, address, _, _ in counts], dtype=np.int64))
        values.append(np.array([n for *_, n in counts], dtype=np.float64))
        return self._own_ids([series_key(metric, {**labels[address], "reason": reason}) for metric, address, reason, _ in counts])

    def _own_ids(self, keys: list[SeriesKey]) -> np.ndarray:
        """Ids of the collector's own series (`up`, the counters), remembered here: a few per target, where the store
        would search its whole series table on every cycle."""
        if missing := [k for k in keys if k not in self._own]:
            self._own.update(zip(missing, self.store.series_ids(missing).tolist()))
        return np.array([self._own[k] for k in keys], dtype=np.int64)

    def _log_state(self, r: ScrapeResult) -> None:
        """Log a target going down or coming back once, not on every cycle."""
        if r.error and r.target.address not in self._down:
            self._down.add(r.target.address)
            log.warning("target %s is down: %s", r.target.address, r.error)
        elif not r.error and r.target.address in self._down:
            self._down.discard(r.target.address)
            log.info("target %s is back", r.target.address)

    def run(self) -> None:
        """Collect on interval boundaries until stop(); a failed cycle is logged and the next one runs."""
        while not self._stop.wait(self.interval_s - (time.time() % self.interval_s)):
            try:
                self.collect_once()
            except Exception:
                log.exception("collection cycle failed")

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)
