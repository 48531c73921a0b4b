"""Time-boxed calls into hardware libraries that can hang (NVML, for one, can block for minutes on a
GPU that is falling off the bus).

Python cannot interrupt a thread stuck in a C call, so a call that overruns its time box is
abandoned: its worker thread is left to finish (or not) on its own, and the next call gets a fresh
worker. The caller learns which calls are still stuck and avoids repeating them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class CallTimeout(TimeoutError):
    """A time-boxed call did not return in time; it may still be running in an abandoned thread."""


class _Worker:
    def __init__(self, name: str):
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.requests.get()
            if job is None:
                return
            fn, args, done, box, on_late = job
            try:
                box.append((True, fn(*args)))
            except BaseException as e:
                box.append((False, e))
            done.set()
            if getattr(done, "abandoned", False):  # set, under the box's lock, only before done was set
                on_late()


class TimeBox:
    """Runs calls one at a time on a worker thread, each limited to `timeout_s` seconds.

    `stuck` counts abandoned workers whose call has not come back yet; past `max_stuck` the box
    refuses new calls at once (raising CallTimeout) rather than leaking a thread per poll.
    """

    def __init__(self, name: str, timeout_s: float, max_stuck: int = 4):
        self.name = name
        self.timeout_s = timeout_s
        self.max_stuck = max_stuck
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._stuck = 0
        self._spawned = 0

    @property
    def stuck(self) -> int:
        with self._lock:
            return self._stuck

    def call(self, fn: Callable[..., Any], *args: Any, on_late: Callable[[], None] | None = None) -> Any:
        """fn(*args) on the worker; raises CallTimeout after `timeout_s` s, else returns or re-raises.

        `on_late` runs (on the abandoned worker) if a timed-out call does come back eventually.
        """
        with self._lock:
            if self._stuck >= self.max_stuck:
                raise CallTimeout(f"{self.name}: {self._stuck} calls still stuck; not calling {getattr(fn, '__name__', fn)}")
            if self._worker is None:
                self._spawned += 1
                self._worker = _Worker(f"{self.name}-{self._spawned}")
            worker = self._worker
        done = threading.Event()
        box: list[tuple[bool, Any]] = []

        def late() -> None:
            with self._lock:
                self._stuck -= 1
            if on_late is not None:
                on_late()

        worker.requests.put((fn, args, done, box, late))
        if not done.wait(self.timeout_s):
            with self._lock:
                if not done.is_set():
                    done.abandoned = True  # type: ignore[attr-defined]  # read by the worker when the call returns
                    self._stuck += 1
                    if self._worker is worker:
                        self._worker = None
                    worker.requests.put(None)  # the worker exits after the stuck call, if it ever returns
                    raise CallTimeout(f"{self.name}: {getattr(fn, '__name__', fn)} did not return within {self.timeout_s:g} s")
        ok, value = box[0]
        if ok:
            return value
        raise value

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.requests.put(None)
                self._worker = None
