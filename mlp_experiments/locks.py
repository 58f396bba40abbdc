"""File locks between processes on one machine (or one shared filesystem).

Used where processes would otherwise race: two runs of one configuration on its checkpoint,
fresh processes creating a SQLite store's tables, sweep workers counting a study's trials.
The kernel releases a lock when its holder dies, so a killed process never leaves one behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class Locked(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is locked by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[Callable[[], None]]:
    """Hold an exclusive lock on `path` (created if missing). `wait=False` raises Locked at
    once when another process holds it. Yields the function that releases it early."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            raise Locked(path, handle.read().strip()) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        release = once(lambda: fcntl.flock(handle, fcntl.LOCK_UN))
        try:
            yield release
        finally:
            release()


def once(action: Callable[[], object]) -> Callable[[], None]:
    """`action` made safe to call twice (released early, then again on exit)."""
    done = []

    def run_once() -> None:
        if not done:
            done.append(True)
            action()

    return run_once
