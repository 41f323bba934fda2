"""Locks that let several ``film-diffusion compare`` processes share one comparison: each run, and the comparison's
own files, are held by one process at a time.

A lock is ``flock`` on a file under ``OUTPUT/locks/``: the system releases it when its holder exits or is killed, so
a kill never leaves a run locked. Where ``fcntl`` is missing (Windows) every lock is granted at once: one process
at a time is then the user's to keep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


@contextlib.contextmanager
def holding(path: Path, wait: bool) -> Iterator[int | None]:
    """Hold the lock ``path`` for the block; yields its file descriptor, or None where another process holds it and
    ``wait`` is False. With ``wait`` the block starts once that process lets it go. A child process started with the
    descriptor (:func:`passed_on`) keeps the lock held should this process be killed before it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is None:
            yield handle.fileno()
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        try:
            yield handle.fileno()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def passed_on(lock: int | None) -> tuple[int, ...]:
    """``pass_fds`` for a child process that should hold ``lock`` (a descriptor from :func:`holding`) too."""
    return () if lock is None or fcntl is None else (lock,)
