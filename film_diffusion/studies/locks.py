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
def holding(path: Path, wait: bool) -> Iterator[bool]:
    """Hold the lock ``path`` for the block; yields whether this process holds it. Without ``wait`` a lock another
    process holds yields False at once; with ``wait`` the block starts once that process lets it go."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is None:
            yield True
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
