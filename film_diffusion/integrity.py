"""Folders that can prove they are whole: a manifest of every file's size and SHA-256, written last.

safetensors checks its header but not its data, so a flipped byte in a weight loads silently; a copy cut
short, a file deleted by hand or another run's file dropped in are as silent. Checkpoints and the pipeline
folder the trainer writes carry ``checksums.json``; :func:`verify` names the first file that disagrees.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from film_diffusion.errors import UserError, first_line

MANIFEST = "checksums.json"
_CHUNK = 1 << 22


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record every file under ``folder`` (its relative path, size and SHA-256) in ``folder/checksums.json``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps(entries, indent=1))


def verify(folder: Path) -> None:
    """Raise a :class:`UserError` naming the first file of the manifest that is missing, of another size or
    of other content, or else the first ``.safetensors`` file whose header does not parse (a pickle saved under
    that name, a file cut short): a folder saved without a manifest gets that second check only."""
    check_manifest(folder)
    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise UserError(f"'{path}' is not a readable safetensors file ({first_line(err)}); it is damaged or "
                            "another format (film-diffusion reads weights only as safetensors): use another "
                            "copy.") from None


def check_manifest(folder: Path) -> None:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return
    try:
        entries = json.loads(manifest.read_text())
        expected = {name: (int(e["bytes"]), str(e["sha256"])) for name, e in entries.items()}
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        raise UserError(f"'{manifest}' is damaged (not the JSON film-diffusion writes); the folder cannot be "
                        "checked: use another copy.") from None
    for name, (size, sha) in expected.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"'{path}' is missing from '{folder}'; the folder is incomplete: use another copy.")
        found = path.stat().st_size
        if found != size:
            raise UserError(f"'{path}' has {found} bytes where {size} were written (truncated or replaced); the "
                            "file is damaged: use another copy.")
        if file_digest(path) != sha:
            raise UserError(f"'{path}' does not match the checksum it was written with (a changed byte); the "
                            "file is damaged: use another copy.")
