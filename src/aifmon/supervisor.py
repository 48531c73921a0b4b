"""Running long-lived parts together until they are told to stop: workers in threads, child processes, signals.

`aifmon up` runs the simulators as child processes and the collector, rollups, compactor and alert evaluator
as workers; `aifmon collect`, `rollup schedule` and `alerts evaluate` run one or two workers. All of them stop
on SIGINT (Ctrl-C) or SIGTERM (systemd, Docker), in order, so the collector commits the cycle it is in.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

CHILD_STOP_TIMEOUT_S = 10.0
"""How long a child process may take to exit after SIGTERM, s."""


class Worker(Protocol):
    """A part that runs in a thread until `stop()` is called from another."""

    def run(self) -> None: ...

    def stop(self) -> None: ...


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """What a child runs between fork and exec so that the kernel sends it SIGTERM when this process dies: a parent
    killed with SIGKILL (no `finally` runs) then leaves no orphan holding its ports. Linux only (None elsewhere,
    where children outlive a killed parent). The signal follows the thread that forked, so `child_processes` is
    called from the main thread. libc's prctl is looked up here, in the parent: after fork only async-signal-safe
    work is safe, and the loader's lock may be held by another thread."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None).prctl
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


@contextmanager
def child_processes(commands: Sequence[list[str]]) -> Iterator[list[subprocess.Popen]]:
    """Start each command as a child process that dies with this one (Linux); on leaving, send each SIGTERM and
    wait for it to exit."""
    children: list[subprocess.Popen] = []
    preexec = _die_with_parent()
    try:
        for command in commands:
            children.append(subprocess.Popen(command, preexec_fn=preexec))
        yield children
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=CHILD_STOP_TIMEOUT_S)


def run_workers(workers: Sequence[Worker], children: Sequence[subprocess.Popen] = ()) -> subprocess.Popen | None:
    """Run each worker's `run()` in a thread until SIGINT or SIGTERM, or until a child process exits; then stop
    and join the workers in order. Returns the child that exited, or None when a signal stopped them. The signal
    handlers are in place before the first worker starts, so a signal once any worker has run stops them in order."""
    signalled = _on_stop_signals()
    threads = [threading.Thread(target=w.run, name=type(w).__name__) for w in workers]
    for thread in threads:
        thread.start()
    try:
        return _wait(signalled, children)
    finally:
        for worker, thread in zip(workers, threads):
            worker.stop()
            thread.join()


def wait_for_signal(children: Sequence[subprocess.Popen] = ()) -> subprocess.Popen | None:
    """Block until SIGINT or SIGTERM (returns None) or until one of `children` exits (returns it). The handlers stay
    installed: a second Ctrl-C does not break off the orderly stop that follows."""
    return _wait(_on_stop_signals(), children)


def _on_stop_signals() -> Callable[[], bool]:
    """Handle SIGINT and SIGTERM from now on; returns whether one has arrived.

    The handler only sets a flag. A `threading.Event` set from a handler deadlocks: the handler runs in the main
    thread between two bytecodes, possibly while that thread, waiting on the same event, holds its lock (seen: a
    simulator that ignored every SIGTERM after one arrived at that moment)."""
    arrived = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal arrived
        arrived = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    return lambda: arrived


def _wait(signalled: Callable[[], bool], children: Sequence[subprocess.Popen], poll_s: float = 0.2) -> subprocess.Popen | None:
    """Until `signalled()` (None) or one of `children` exits (that child), checking every `poll_s` s."""
    while not signalled():
        for child in children:
            if child.poll() is not None:
                return child
        time.sleep(poll_s)
    return None
