"""The null condition: what a text-conditioned model sees when it is told nothing.

Classifier-free guidance needs the same null in training (caption dropout) and in sampling (the
unconditional half of the batch), so both read it here, by the name a pipeline folder records.
"""

from __future__ import annotations

import torch

from film_diffusion.conditioning.condition import Condition
from film_diffusion.conditioning.learned_null import LearnedNull
from film_diffusion.encoders.base import TextEncoder
from film_diffusion.errors import UserError

NULL_CONDITIONS: tuple[str, ...] = ("empty_caption", "zeros", "learned")
"""``empty_caption``: the encoded caption ``""`` (Stable Diffusion's choice); ``zeros``: zero tokens, all
masked (a cross-attention site then adds nothing), and a zero pooled vector; ``learned``: the model's
own trained null (``learned_null_tokens``, PixArt's choice)."""


def check_null_condition(kind: str, learned: LearnedNull | None) -> None:
    """``kind`` is a known null, and ``learned`` (the model's ``conditioner.learned_null``) exists if it is needed."""
    if kind not in NULL_CONDITIONS:
        raise UserError(f"Unknown null condition {kind!r}; choose one of {', '.join(map(repr, NULL_CONDITIONS))}.")
    if kind == "learned" and learned is None:
        raise UserError("null_condition='learned' needs a model built with learned_null_tokens (the encoder's "
                        "max_length); build it so, or choose the null the model was trained with.")


def null_condition(encoder: TextEncoder, kind: str, batch_size: int, learned: LearnedNull | None = None) -> Condition:
    """``batch_size`` copies of the null condition of ``kind``; ``learned`` is the model's
    ``conditioner.learned_null``, which the kind ``learned`` needs."""
    check_null_condition(kind, learned)
    if kind == "learned":
        return learned(batch_size)
    one = encoder.encode([""])
    if kind == "zeros":
        one = Condition(tokens=torch.zeros_like(one.tokens), mask=torch.zeros_like(one.mask),
                        pooled=torch.zeros_like(one.pooled))
    return one[[0] * batch_size]
