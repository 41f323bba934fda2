"""A CLIP text encoder from transformers: ``CLIPTokenizer`` plus ``CLIPTextModel`` or
``CLIPTextModelWithProjection``, from a hub id (``openai/clip-vit-large-patch14``) or a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers looks a component's base up here
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from film_diffusion.conditioning.condition import Condition
from film_diffusion.encoders.base import Layer, TransformersEncoder, check_layer
from film_diffusion.errors import UserError


class TransformersCLIP(TransformersEncoder):
    """Tokens from the last layer (after the final layer norm, as ``last_hidden_state``) or from the
    penultimate layer (``hidden_states[-2]``, without the final layer norm, as SDXL uses it).

    pooled is ``text_embeds`` (CLIPTextModelWithProjection) when ``use_projection``, else
    ``pooler_output``: the end-of-text token's final state. Padding goes to ``max_length``, so every
    batch has the same token length, and the model sees no attention mask, as in Stable Diffusion.
    """

    def __init__(
        self,
        name_or_path: str | Path,
        layer: Layer = "last",
        use_projection: bool = True,
        max_length: int = 77,
        *,
        trainable: bool = False,
    ) -> None:
        super().__init__(trainable=trainable)
        check_layer(layer)
        self.layer = layer
        self.use_projection = use_projection
        model_class = CLIPTextModelWithProjection if use_projection else CLIPTextModel
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
            self.model = model_class.from_pretrained(name_or_path, use_safetensors=True)  # never a pickle
        except OSError as err:
            raise UserError(
                f"Could not load a CLIP text model from '{name_or_path}' ({err}); pass a hub id or a local "
                "folder holding config.json, the weights and the tokenizer files."
            ) from None
        config = self.model.config
        if not 2 <= max_length <= config.max_position_embeddings:
            raise UserError(
                f"max_length={max_length} does not fit the model's {config.max_position_embeddings} "
                f"positions; pass a max_length between 2 and {config.max_position_embeddings}."
            )
        self.max_length = max_length
        self.token_dim = config.hidden_size
        self.pooled_dim = config.projection_dim if use_projection else config.hidden_size
        self._freeze_unless_trainable()

    def _options(self) -> str:
        return f"layer={self.layer}, use_projection={self.use_projection}, max_length={self.max_length}"

    def _saved_options(self) -> dict[str, Any]:
        return {"layer": self.layer, "use_projection": self.use_projection, "max_length": self.max_length}

    def _encode(self, captions: list[str]) -> Condition:
        batch = self.tokenizer(
            captions, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(self.device)
        out = self.model(input_ids=batch.input_ids, output_hidden_states=self.layer == "penultimate")
        tokens = out.last_hidden_state if self.layer == "last" else out.hidden_states[-2]  # (B, L, D)
        pooled = out.text_embeds if self.use_projection else out.pooler_output  # (B, Dp)
        return Condition(tokens=tokens, mask=batch.attention_mask.bool(), pooled=pooled)
