"""Files and folders that are either whole or absent: written under a temporary name beside the final one and
renamed when complete, so that a kill at any moment leaves the old version or the new one, never half of one.

:func:`written` is the one way film-diffusion writes such a file or folder; :func:`clean_leftovers` removes what a
kill left behind, and :func:`remove_folder` deletes a folder so that a kill never leaves half of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"  # being written
OLD_SUFFIX = ".old"  # the previous version of a folder, moved aside while the new one takes its name
DELETING_SUFFIX = ".deleting"  # being removed


def partial_path(final: Path) -> Path:
    """The temporary name ``final`` is written under."""
    return final.with_name(final.name + PARTIAL_SUFFIX)


def discard(path: Path) -> None:
    """Remove a file or folder, if there is one."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def publish(partial: Path, final: Path) -> None:
    """Give a completely written file or folder its final name. A folder already there is first moved aside
    (renaming over a non-empty folder is not possible), so that a kill at any moment leaves a complete folder
    under the final name or under ``.old`` (which :func:`clean_leftovers` renames back)."""
    if partial.is_dir():
        old = final.with_name(final.name + OLD_SUFFIX)
        discard(old)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        discard(old)
    else:
        os.replace(partial, final)


@contextlib.contextmanager
def written(final: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write ``final`` (a file, or a folder the block creates) under; publish it when
    the block ends, and discard it if the block raises.

        with written(run / "config.yaml") as path:
            path.write_text(text)
    """
    final = Path(final)
    partial = partial_path(final)
    discard(partial)  # a kill's leftover from an earlier try
    try:
        yield partial
    except BaseException:
        discard(partial)
        raise
    publish(partial, final)


def write_text(final: str | Path, text: str) -> None:
    """``Path.write_text``, whole or not at all."""
    with written(final) as path:
        path.write_text(text)


def remove_folder(folder: Path) -> None:
    """Rename first, then delete: a kill mid-way leaves a ``.deleting`` folder, never a half-deleted one under
    its name."""
    doomed = folder.with_name(folder.name + DELETING_SUFFIX)
    os.replace(folder, doomed)
    shutil.rmtree(doomed)


def clean_leftovers(folder: Path) -> list[Path]:
    """Remove what a kill can leave in ``folder`` (``.partial`` writes, ``.deleting`` removals, ``.old`` copies
    that were being replaced) and return what was removed. An ``.old`` folder whose final name is missing (a kill
    between the two renames of :func:`publish`) is the only complete copy: it gets its name back."""
    removed = []
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.name.endswith(OLD_SUFFIX) and not path.with_name(path.name.removesuffix(OLD_SUFFIX)).exists():
            os.replace(path, path.with_name(path.name.removesuffix(OLD_SUFFIX)))
        elif path.name.endswith((PARTIAL_SUFFIX, OLD_SUFFIX, DELETING_SUFFIX)):
            discard(path)
            removed.append(path)
    return removed
