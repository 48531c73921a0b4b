"""The embedded collector: scrapes every exporter of the inventory and writes the samples to the store.

Each cycle scrapes all targets concurrently, each with its own timeout, and stamps a target's samples
with the time its scrape started (as Prometheus does). Per target it also records `up` (1/0) and
`scrape_duration_seconds`, labelled `instance` and `factory` (no `job` label: on our series `job` is
the Slurm job of `aif_gpu_job_info`). Series that were in a target's previous scrape and are not in
this one (the target is down, or a job ended) get a staleness marker, so live reads drop them at once. A cycle's samples are written
in one transaction: when `collect_once` returns, they are on disk.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from aifmon.ingest.parser import parse_exposition, warm_up
from aifmon.ingest.series_index import SeriesIndex
from aifmon.stores.store import SampleWriter, series_key
from aifmon.telemetry.exposition import ExpositionError
from aifmon.telemetry.inventory import Inventory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One exporter to scrape; `labels` are added to its series unless the exporter sets them itself."""

    address: str
    labels: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"


def target_labels(factory_id: str, address: str) -> dict[str, str]:
    """The labels the collector adds to every series of a factory's target."""
    return {"factory": factory_id, "instance": address}


def targets_of(inventory: Inventory) -> list[Target]:
    return [Target(address, target_labels(f.id, address)) for f in inventory.live_factories() for address in f.targets]


@dataclass
class ScrapeResult:
    """One target's scrape: series ids, values and times (ms) ready to append, or the error."""

    target: Target
    started: float
    duration_s: float
    series_ids: np.ndarray
    values: np.ndarray
    t_ms: np.ndarray
    error: str | None = None


def scrape(target: Target, index: SeriesIndex, timeout_s: float) -> ScrapeResult:
    """Fetch, parse and resolve one target; errors are returned, never raised. A bad line fails the whole scrape."""
    started = time.time()
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(target.url, timeout=timeout_s) as resp:
            ctype = resp.headers.get("Content-Type", "")
            if not ctype.startswith("text/plain") and "openmetrics" not in ctype:
                raise ExpositionError(f"answered {ctype or 'no content type'}, not Prometheus text")
            body = resp.read()
        samples = parse_exposition(body, "s" if "openmetrics" in ctype else "ms")
        ids = index.ids(samples)
        t_ms = np.where(samples.t_ms >= 0, samples.t_ms, int(started * 1000))
        return ScrapeResult(target, started, time.perf_counter() - t0, ids, samples.values, t_ms)
    except (OSError, ExpositionError) as e:
        empty = np.zeros(0)
        return ScrapeResult(target, started, time.perf_counter() - t0, empty.astype(np.int64), empty, empty.astype(np.int64),
                            f"{type(e).__name__}: {e}")


class Collector:
    """Scrapes `targets` every `interval_s` seconds into `store`."""

    def __init__(self, store: SampleWriter, targets: list[Target], interval_s: float = 5.0, timeout_s: float | None = None):
        if interval_s <= 0:
            raise ValueError("scrape interval must be positive")
        self.store = store
        self.targets = targets
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else max(0.5, interval_s * 0.8)
        warm_up()  # the first cycle is on time, not late by the parser's compilation
        self._indexes = {t.address: SeriesIndex(store, t.labels) for t in targets}
        self._live = {t.address: np.zeros(0, dtype=np.int64) for t in targets}  # series of each target's last scrape
        self._pool = ThreadPoolExecutor(max_workers=min(32, max(1, len(targets))), thread_name_prefix="scrape")
        self._stop = threading.Event()
        self._down: set[str] = set()
        self.cycles = 0
        self.samples_written = 0

    def collect_once(self) -> int:
        """One scrape of every target, written durably in one transaction; returns the number of samples stored."""
        results = list(self._pool.map(lambda t: scrape(t, self._indexes[t.address], self.timeout_s), self.targets))
        health = self.store.series_ids([series_key(m, r.target.labels) for r in results for m in ("up", "scrape_duration_seconds")])
        ids, t_ms, values = [health], [], []
        for r in results:
            self._log_state(r)
            t_ms.append(np.full(2, int(r.started * 1000), dtype=np.int64))
            values.append(np.array([0.0 if r.error else 1.0, r.duration_s]))
        for r in results:
            ids.append(r.series_ids)
            t_ms.append(r.t_ms)
            values.append(r.values)
        n = sum(len(v) for v in values)
        self.store.append(np.concatenate(ids), np.concatenate(t_ms), np.concatenate(values))
        for r in results:
            live = self._live[r.target.address]
            if r.series_ids is live:  # the series index hands back the last scrape's ids when nothing changed
                continue
            gone = np.setdiff1d(live, r.series_ids)
            self.store.mark_stale(gone, int(r.started * 1000))  # a target that went down, or a job that ended
            self._live[r.target.address] = r.series_ids
        self.cycles += 1
        self.samples_written += n
        return n

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
