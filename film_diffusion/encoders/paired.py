"""Two encoders at once: one gives the tokens, the other the pooled vector, as SD3 pairs T5's tokens with
CLIP's pooled embedding (SD3 also appends CLIP's tokens to T5's; here the tokens are one encoder's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers looks a component's base up here

from film_diffusion.conditioning.condition import Condition
from film_diffusion.encoders.base import TextEncoder
from film_diffusion.encoders.clip_openclip import OpenCLIP
from film_diffusion.encoders.clip_transformers import TransformersCLIP
from film_diffusion.encoders.t5 import TransformersT5
from film_diffusion.errors import UserError

PAIRABLE: dict[str, type[TextEncoder]] = {cls.__name__: cls for cls in (OpenCLIP, TransformersCLIP, TransformersT5)}
"""The encoder classes a saved pair may name."""


class PairedEncoder(TextEncoder):
    """``tokens`` and ``mask`` from ``tokens_from``, ``pooled`` from ``pooled_from``; the context is the token
    encoder's. Both are frozen unless each was built trainable."""

    def __init__(self, tokens_from: TextEncoder, pooled_from: TextEncoder) -> None:
        super().__init__(trainable=tokens_from.trainable or pooled_from.trainable)
        self.tokens_from, self.pooled_from = tokens_from, pooled_from
        self.token_dim, self.max_length = tokens_from.token_dim, tokens_from.max_length
        self.pooled_dim = pooled_from.pooled_dim

    def _options(self) -> str:
        return f"tokens={self.tokens_from.identity}, pooled={self.pooled_from.identity}"

    def _saved_options(self) -> dict[str, Any]:
        return {"tokens_class": type(self.tokens_from).__name__, "pooled_class": type(self.pooled_from).__name__}

    def _save_model(self, folder: Path) -> None:
        self.tokens_from.save_pretrained(folder / "tokens")
        self.pooled_from.save_pretrained(folder / "pooled")

    @classmethod
    def _load_saved(cls, folder: Path, **options: Any) -> PairedEncoder:
        classes = [PAIRABLE.get(options.get(key)) for key in ("tokens_class", "pooled_class")]
        if None in classes:
            raise UserError(f"'{folder}' names encoder classes {options} that film-diffusion cannot pair; save the "
                            "pair again.")
        return cls(classes[0].from_pretrained(folder / "tokens"), classes[1].from_pretrained(folder / "pooled"))

    def _token_counts(self, captions: list[str]) -> list[int]:
        return self.tokens_from._token_counts(captions)

    def _encode(self, captions: list[str]) -> Condition:
        tokens = self.tokens_from._encode(captions)
        return Condition(tokens=tokens.tokens, mask=tokens.mask, pooled=self.pooled_from.encode(captions).pooled)

