"""A T5 encoder from transformers (``T5EncoderModel`` and its tokenizer), as PixArt-alpha and SD3 read
captions: from a hub id (``google/t5-v1_1-xxl``, ``DeepFloyd/t5-v1_1-xxl``) or a local folder.

T5 gives tokens only. Methods that read a pooled vector get the mean of the real (unmasked) tokens: one
vector per caption from the same states, so that FiLM or adaLN-Zero can run on a T5 model; SD3 takes its
pooled vector from CLIP instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers looks a component's base up here
from transformers import AutoTokenizer, T5EncoderModel

from film_diffusion.conditioning.condition import Condition
from film_diffusion.encoders.base import Layer, TransformersEncoder, check_layer
from film_diffusion.errors import UserError, first_line

DEFAULT_T5_LENGTH = 120
"""PixArt-alpha's caption length in T5 tokens (SD3 uses 256; T5's relative positions take any length)."""


class TransformersT5(TransformersEncoder):
    """Tokens from the last layer (``last_hidden_state``, after the final layer norm) or the penultimate one;
    the tokenizer pads to ``max_length`` and T5 sees the attention mask (as PixArt-alpha runs it), so a
    caption's states do not depend on the padding."""

    def __init__(self, name_or_path: str | Path, layer: Layer = "last", max_length: int = DEFAULT_T5_LENGTH, *,
                 trainable: bool = False) -> None:
        super().__init__(trainable=trainable)
        check_layer(layer)
        if max_length < 2:
            raise UserError(f"max_length={max_length} leaves no room for a caption; pass at least 2 (PixArt: 120).")
        self.layer = layer
        self.max_length = max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = T5EncoderModel.from_pretrained(name_or_path, use_safetensors=True)  # never a pickle
        except (OSError, ValueError) as err:
            raise UserError(f"Could not load a T5 encoder from '{name_or_path}' ({first_line(err)}); pass a hub id "
                            "or a local folder holding config.json, the weights and the tokenizer files.") from None
        self.token_dim = self.pooled_dim = self.model.config.d_model
        self._freeze_unless_trainable()

    def _options(self) -> str:
        return f"layer={self.layer}, max_length={self.max_length}"

    def _saved_options(self) -> dict[str, Any]:
        return {"layer": self.layer, "max_length": self.max_length}

    def _encode(self, captions: list[str]) -> Condition:
        batch = self.tokenizer(captions, padding="max_length", max_length=self.max_length, truncation=True,
                               return_tensors="pt").to(self.device)
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         output_hidden_states=self.layer == "penultimate")
        tokens = out.last_hidden_state if self.layer == "last" else out.hidden_states[-2]  # (B, L, D)
        mask = batch.attention_mask.bool()
        return Condition(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each caption's real tokens ``[B, D]`` (a caption with none gives zeros)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
