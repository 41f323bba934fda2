"""Encode each caption once, so a frozen text encoder costs (almost) nothing during training.

Two layers: an in-run memo (a caption seen before is not re-encoded) and a safetensors file holding
a dataset's caption embeddings, made ahead of training by :func:`save_embeddings` and keyed by the
encoder's identity, so a file built by one encoder is refused by any other.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from film_diffusion.conditioning.condition import Condition
from film_diffusion.encoders.base import TextEncoder
from film_diffusion.errors import UserError

Row = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # one caption: tokens (L, D), mask (L,), pooled (Dp,)

IDENTITY_KEY = "film_diffusion.encoder"
CAPTIONS_KEY = "film_diffusion.captions"


class EmbeddingCache:
    """Stands in for a frozen encoder: same ``encode``, ``token_dim`` and ``pooled_dim``.

    Captions found in ``file`` (from :func:`save_embeddings`) or seen earlier in the run are served
    from memory; the rest are encoded together, ``batch_size`` at a time, and remembered, so each
    distinct caption is encoded once per run. Every such batch is padded to ``batch_size`` rows with the
    empty caption: a CPU matmul rounds differently for another number of rows, so this keeps a caption's
    embedding the same bits whichever captions arrive with it, and a resumed run sees what an
    uninterrupted one saw. ``capacity`` bounds the memo for datasets too large to
    hold (it then keeps the most recently used captions and warns at the first one it drops, since a
    shuffled loader will encode that caption again); pre-encode those with :func:`save_embeddings`.
    A caption costs ``max_length x token_dim`` floats (10 KB for the built-in CLIP, 240 KB for CLIP-L).
    The file's captions are always kept.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        file: str | Path | None = None,
        capacity: int | None = None,
        batch_size: int = 16,
    ) -> None:
        _require_frozen(encoder)
        self.encoder = encoder
        self.capacity = capacity
        self.batch_size = batch_size
        self.token_dim = encoder.token_dim
        self.pooled_dim = encoder.pooled_dim
        self._stored: dict[str, Row] = {} if file is None else _load_embeddings(Path(file), encoder)
        self._memo: OrderedDict[str, Row] = OrderedDict()
        self._warned_full = False

    def encode(self, captions: Sequence[str]) -> Condition:
        if isinstance(captions, str):
            raise UserError("encode() takes a list of captions, got a single string; wrap it in a list.")
        found: dict[str, Row] = {}
        for caption in dict.fromkeys(captions):
            if caption in self._stored:
                found[caption] = self._stored[caption]
            elif caption in self._memo:
                self._memo.move_to_end(caption)
                found[caption] = self._memo[caption]
        missing = [caption for caption in dict.fromkeys(captions) if caption not in found]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            padded = chunk + [""] * (self.batch_size - len(chunk))  # a fixed shape: the same bits for a caption
            for caption, row in zip(chunk, _rows(self.encoder.encode(padded)[: len(chunk)]), strict=True):
                found[caption] = self._memo[caption] = row
        if self.capacity is not None and len(self._memo) > self.capacity:
            if not self._warned_full:
                warnings.warn(f"EmbeddingCache(capacity={self.capacity}) is full, so captions it drops will be "
                              "encoded again when they come back; raise capacity above the number of distinct "
                              "captions, pass capacity=None, or pre-encode them with save_embeddings().",
                              stacklevel=2)
                self._warned_full = True
            while len(self._memo) > self.capacity:
                self._memo.popitem(last=False)
        device = self.encoder.device
        tokens, mask, pooled = (
            torch.stack([t.to(device) for t in parts]) for parts in zip(*map(found.get, captions), strict=True)
        )
        return Condition(tokens=tokens, mask=mask, pooled=pooled)


def save_embeddings(encoder: TextEncoder, captions: Iterable[str], path: str | Path, batch_size: int = 256) -> Path:
    """Encode every distinct caption once and write them, with the encoder's identity, to ``path``
    (safetensors); ``EmbeddingCache(encoder, file=path)`` then serves them without the encoder."""
    _require_frozen(encoder)
    unique = list(dict.fromkeys(captions))
    batches = range(0, len(unique), batch_size)
    parts = [encoder.encode(unique[i : i + batch_size]).to("cpu") for i in tqdm(batches, desc="encoding captions")]
    condition = Condition.cat(parts)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "tokens": condition.tokens.contiguous(),
            "mask": condition.mask,
            "pooled": condition.pooled.contiguous(),
        },
        path,
        metadata={IDENTITY_KEY: encoder.identity, CAPTIONS_KEY: json.dumps(unique)},
    )
    return path


def _load_embeddings(path: Path, encoder: TextEncoder) -> dict[str, Row]:
    if not path.is_file():
        raise UserError(f"Embedding file '{path}' does not exist; build it first with save_embeddings().")
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        built_by = metadata.get(IDENTITY_KEY)
        if built_by is None:
            raise UserError(
                f"'{path}' holds no encoder identity, so save_embeddings() did not write it; "
                "rebuild it with save_embeddings()."
            )
        if built_by != encoder.identity:
            raise UserError(
                f"Embedding file '{path}' was built by a different encoder ({built_by}) than this one "
                f"({encoder.identity}); rebuild it with save_embeddings() for this encoder."
            )
        rows = zip(
            f.get_tensor("tokens"), f.get_tensor("mask"), f.get_tensor("pooled"), strict=True
        )  # views of one table
        return dict(zip(json.loads(metadata[CAPTIONS_KEY]), rows, strict=True))


def _rows(condition: Condition) -> list[Row]:
    """Split a batch into per-caption rows that own their memory (a view would pin the whole batch), kept
    in host memory: a run's captions would otherwise fill the GPU (240 KB each for CLIP-L)."""
    return [
        (t.to("cpu", copy=True), m.to("cpu", copy=True), p.to("cpu", copy=True))
        for t, m, p in zip(condition.tokens, condition.mask, condition.pooled, strict=True)
    ]


def _require_frozen(encoder: TextEncoder) -> None:
    if encoder.trainable:
        raise UserError(
            "A trainable encoder's embeddings change as it trains, so they cannot be cached; cache a frozen "
            "encoder (trainable=False) or call its encode() directly."
        )
