"""Running long-lived parts together until they are told to stop: workers in threads, child processes, signals.

`aifmon up` runs the simulators as child processes and the collector, rollups, compactor and alert evaluator
as workers; `aifmon collect`, `rollup schedule` and `alerts evaluate` run one or two workers. All of them stop
on SIGINT (Ctrl-C) or SIGTERM (systemd, Docker), in order, so the collector commits the cycle it is in.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

CHILD_STOP_TIMEOUT_S = 10.0
"""How long a child process may take to exit after SIGTERM, s."""


class Worker(Protocol):
    """A part that runs in a thread until `stop()` is called from another."""

    def run(self) -> None: ...

    def stop(self) -> None: ...


@contextmanager
def child_processes(commands: Sequence[list[str]]) -> Iterator[list[subprocess.Popen]]:
    """Start each command as a child process; on leaving, send each SIGTERM and wait for it to exit."""
    children: list[subprocess.Popen] = []
    try:
        for command in commands:
            children.append(subprocess.Popen(command))
        yield children
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=CHILD_STOP_TIMEOUT_S)


def run_workers(workers: Sequence[Worker], children: Sequence[subprocess.Popen] = ()) -> subprocess.Popen | None:
    """Run each worker's `run()` in a thread until SIGINT or SIGTERM, or until a child process exits; then stop
    and join the workers in order. Returns the child that exited, or None when a signal stopped them."""
    threads = [threading.Thread(target=w.run, name=type(w).__name__) for w in workers]
    for thread in threads:
        thread.start()
    try:
        return wait_for_signal(children)
    finally:
        for worker, thread in zip(workers, threads):
            worker.stop()
            thread.join()


def wait_for_signal(children: Sequence[subprocess.Popen] = (), poll_s: float = 1.0) -> subprocess.Popen | None:
    """Block until SIGINT or SIGTERM (returns None) or until one of `children` exits (returns it), checking them
    every `poll_s` s. The handlers stay installed: a second Ctrl-C does not break off the orderly stop that follows."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    while not stop.wait(poll_s):
        for child in children:
            if child.poll() is not None:
                return child
    return None
