"""The one object every condition source produces and every conditioning method reads."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Condition:
    """A batch of conditions, named by role so that no method has to guess from tensor ranks.

    tokens: per-token features ``[B, L, Dt]`` (a text encoder's hidden states).
    mask:   ``[B, L]`` bool, True where a token is real, False where it is padding.
    pooled: one vector per sample ``[B, Dp]`` (CLIP's pooled/projected text embedding).

    Any field may be ``None`` where a source has none (a class label has no tokens).
    """

    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and self.tokens.ndim != 3:
            raise ValueError(f"Condition.tokens must be [B, L, D], got shape {tuple(self.tokens.shape)}.")
        if self.pooled is not None and self.pooled.ndim != 2:
            raise ValueError(f"Condition.pooled must be [B, D], got shape {tuple(self.pooled.shape)}.")
        if self.mask is not None:
            if self.tokens is None:
                raise ValueError("Condition.mask was given without Condition.tokens; pass both or neither.")
            if self.mask.shape != self.tokens.shape[:2]:
                raise ValueError(
                    f"Condition.mask must be [B, L] = {tuple(self.tokens.shape[:2])}, "
                    f"got {tuple(self.mask.shape)}."
                )
            if self.mask.dtype != torch.bool:
                raise ValueError(f"Condition.mask must be a bool tensor (True = a real token), got {self.mask.dtype}; "
                                 "convert a 0/1 attention mask with mask.bool() and an additive 0/-inf mask with "
                                 "mask == 0.")
        sizes = {t.shape[0] for t in (self.tokens, self.pooled) if t is not None}
        if len(sizes) > 1:
            raise ValueError(f"Condition fields disagree on the batch size: {sorted(sizes)}.")

    @property
    def batch_size(self) -> int | None:
        for t in (self.tokens, self.pooled):
            if t is not None:
                return t.shape[0]
        return None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Condition:
        """Move every tensor; the bool mask keeps its dtype."""

        def move(t: torch.Tensor | None, keep_dtype: bool = False) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device) if keep_dtype else t.to(device=device, dtype=dtype)

        return Condition(tokens=move(self.tokens), mask=move(self.mask, keep_dtype=True), pooled=move(self.pooled))

    def __getitem__(self, index) -> Condition:
        """Select samples along the batch dimension (slices, index tensors)."""
        return Condition(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                            for f in fields(self)})

    def fields_of(self, other: Condition) -> Condition:
        """This condition without the fields ``other`` lacks: a learned null holds only the inputs its model
        reads, and a caption batched with it (guidance, caption dropout) must have the same fields."""
        return Condition(**{f.name: None if getattr(other, f.name) is None else getattr(self, f.name)
                            for f in fields(Condition)})

    def where(self, replace: torch.Tensor, other: Condition) -> Condition:
        """Per sample, ``other`` where ``replace [B]`` is True, else this condition (caption dropout); fields
        ``other`` lacks are dropped (see :meth:`fields_of`)."""
        kept = self.fields_of(other)
        out = {}
        for f in fields(Condition):
            mine, theirs = getattr(kept, f.name), getattr(other, f.name)
            if mine is None:
                out[f.name] = None
                continue
            pick = replace.view(-1, *([1] * (mine.ndim - 1)))
            out[f.name] = torch.where(pick, theirs.to(mine.dtype), mine)
        return Condition(**out)

    @staticmethod
    def cat(conditions: list[Condition]) -> Condition:
        """Concatenate along the batch (for classifier-free guidance: conditional and null in one pass)."""
        out = {}
        for f in fields(Condition):
            values = [getattr(c, f.name) for c in conditions]
            if all(v is None for v in values):
                out[f.name] = None
            elif any(v is None for v in values):
                raise ValueError(f"Cannot concatenate conditions where only some have '{f.name}'.")
            else:
                out[f.name] = torch.cat(values, dim=0)
        return Condition(**out)
