"""Sharded datasets written by the tests: Hugging Face parquet and arrow files, WebDataset tars, and the same
images as a captioned folder, so that the loaders can be compared item for item."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import webdataset
from PIL import Image

BROKEN = b"this is not an image"
datasets.disable_progress_bars()  # writing a test's files is not news


def png(seed: int, side: int = 20) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def samples(count: int, broken: tuple[int, ...] = ()) -> list[dict]:
    """``count`` samples: a 20x20 PNG (or, at ``broken``, bytes that are no image), a caption and a label."""
    return [{"image": BROKEN if i in broken else png(i), "text": f"picture number {i}", "label": i % 3}
            for i in range(count)]


def write_parquet(root: Path, rows: list[dict], files: int = 2, row_group: int = 8) -> Path:
    """``rows`` as ``datasets`` writes them (an ``Image`` feature), over ``files`` train files of row groups of
    ``row_group``, plus a test-split file that a run must not read."""
    root.mkdir(parents=True, exist_ok=True)
    per_file = -(-len(rows) // files)
    for k in range(files):
        _hf(rows[k * per_file:(k + 1) * per_file]).to_parquet(str(root / f"train-{k:05d}.parquet"),
                                                             batch_size=row_group)
    _hf(samples(3)).to_parquet(str(root / "test-00000.parquet"))
    return root


def write_arrow(root: Path, rows: list[dict], files: int = 2) -> Path:
    """``rows`` saved by ``datasets``' ``save_to_disk`` in ``files`` arrow files."""
    _hf(rows).save_to_disk(str(root), num_shards=files)
    return root


def _hf(rows: list[dict]) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "label": datasets.Value("int64")})
    columns = {"image": [{"bytes": r["image"], "path": None} for r in rows], "text": [r["text"] for r in rows],
               "label": [r["label"] for r in rows]}
    return datasets.Dataset.from_dict(columns, features=features)


def write_tars(root: Path, rows: list[dict], per_shard: int = 10, caption: str = "txt") -> Path:
    """``rows`` as WebDataset shards ``train-000000.tar``...: ``KEY.png`` with ``KEY.txt`` and ``KEY.cls``
    (``caption="txt"``), or with ``KEY.json`` holding ``text`` and ``label`` (``caption="json"``)."""
    root.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, len(rows), per_shard)):
        with webdataset.TarWriter(str(root / f"train-{shard:06d}.tar")) as tar:
            for i, row in enumerate(rows[start:start + per_shard], start=start):
                sample = {"__key__": f"{i:06d}", "png": row["image"]}
                if caption == "txt":
                    sample |= {"txt": row["text"], "cls": row["label"]}
                else:
                    sample["json"] = json.dumps({"text": row["text"], "label": row["label"]}).encode()
                tar.write(sample)
    return root


def write_folder(root: Path, rows: list[dict]) -> Path:
    """The same images as a captioned folder (metadata.jsonl)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        (root / f"{i:06d}.png").write_bytes(row["image"])
        lines.append(json.dumps({"file_name": f"{i:06d}.png", "text": row["text"]}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root
