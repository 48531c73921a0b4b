"""The embedded collector: scrapes every exporter of the inventory and writes the samples to the store.

Each cycle scrapes all targets concurrently, each with its own timeout, and stamps a target's samples
with the time its scrape started (as Prometheus does). Per target it also records `up` (1/0) and
`scrape_duration_seconds`, labelled `instance` and `factory` (no `job` label: on our series `job` is
the Slurm job of `aif_gpu_job_info`). A cycle's samples are written
in one transaction: when `collect_once` returns, they are on disk.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from telemetry.exposition import ExpositionError, parse_samples, parse_series
from telemetry.inventory import Inventory
from telemetry.store import SeriesKey, Store, series_key

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One exporter to scrape; `labels` are added to its series unless the exporter sets them itself."""

    address: str
    labels: dict[str, str]
    _keys: dict[str, SeriesKey] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def keys(self, series_texts: list[str]) -> list[SeriesKey]:
        """Store keys of one scrape's series lines; lines seen in the previous scrape are not parsed again.

        Only this scrape's lines are kept, so series that come and go (a job's info) do not pile up.
        Raises ExpositionError for a line whose labels do not parse.
        """
        previous, current = self._keys, {}
        for text in series_texts:
            k = previous.get(text)
            if k is None:
                name, labels = parse_series(text)
                k = series_key(name, {**self.labels, **labels})
            current[text] = k
        self._keys = current
        return [current[t] for t in series_texts]


def targets_of(inventory: Inventory) -> list[Target]:
    return [
        Target(address, {"factory": f.id, "instance": address})
        for f in inventory.live_factories()
        for address in f.targets
    ]


@dataclass
class ScrapeResult:
    target: Target
    started: float
    duration_s: float
    samples: list[tuple[str, float, int | None]]
    error: str | None = None


def scrape(target: Target, timeout_s: float) -> ScrapeResult:
    """Fetch and parse one target; errors are returned, never raised."""
    started = time.time()
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(target.url, timeout=timeout_s) as resp:
            ctype = resp.headers.get("Content-Type", "")
            if not ctype.startswith("text/plain") and "openmetrics" not in ctype:
                raise ExpositionError(f"answered {ctype or 'no content type'}, not Prometheus text")
            samples = parse_samples(resp.read().decode("utf-8"))
            target.keys([text for text, _, _ in samples])  # labels that do not parse fail the whole scrape
        return ScrapeResult(target, started, time.perf_counter() - t0, samples)
    except (OSError, ExpositionError, UnicodeDecodeError) as e:
        return ScrapeResult(target, started, time.perf_counter() - t0, [], f"{type(e).__name__}: {e}")


class Collector:
    """Scrapes `targets` every `interval_s` seconds into `store`."""

    def __init__(self, store: Store, targets: list[Target], interval_s: float = 5.0, timeout_s: float | None = None):
        if interval_s <= 0:
            raise ValueError("scrape interval must be positive")
        self.store = store
        self.targets = targets
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else max(0.5, interval_s * 0.8)
        self._pool = ThreadPoolExecutor(max_workers=min(32, max(1, len(targets))), thread_name_prefix="scrape")
        self._stop = threading.Event()
        self._down: set[str] = set()
        self.cycles = 0
        self.samples_written = 0

    def collect_once(self) -> int:
        """One scrape of every target, written durably; returns the number of samples stored."""
        results = list(self._pool.map(lambda t: scrape(t, self.timeout_s), self.targets))
        keys: list[SeriesKey] = []
        t_ms: list[int] = []
        values: list[float] = []
        for r in results:
            self._log_state(r)
            stamp = int(r.started * 1000)
            keys += r.target.keys([text for text, _, _ in r.samples])
            values += [value for _, value, _ in r.samples]
            t_ms += [stamp if ts is None else ts for _, _, ts in r.samples]
            keys += [series_key("up", r.target.labels), series_key("scrape_duration_seconds", r.target.labels)]
            values += [0.0 if r.error else 1.0, r.duration_s]
            t_ms += [stamp, stamp]
        ids = self.store.series_ids(keys)
        self.store.append(ids, np.array(t_ms, dtype=np.int64), np.array(values, dtype=np.float64))
        self.cycles += 1
        self.samples_written += len(values)
        return len(values)

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
