"""A CLIP text encoder from open_clip: any model name with a pretrained tag or a local checkpoint
(``OpenCLIP("ViT-H-14", "laion2b_s32b_b79k")``, ``OpenCLIP("ViT-B-32", "ckpt.safetensors")``), or a
folder in open_clip's own format (``OpenCLIP("local-dir:path")``: ``open_clip_config.json`` plus
``open_clip_model.safetensors``, the format :mod:`film_diffusion.encoders.pretrain_clip` writes)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers looks a component's base up here
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import save_file

from film_diffusion.conditioning.condition import Condition
from film_diffusion.data.captions import words
from film_diffusion.encoders.base import Layer, TextEncoder, check_layer
from film_diffusion.errors import UserError

LOCAL_DIR = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
WORDS_FILE = "caption_words.json"
"""In a folder of a CLIP trained on a closed vocabulary (the built-in one): every word its training captions held."""


def _model_config(model_name: str) -> dict | None:
    """The architecture behind an open_clip model name: a registered name's config or a folder's; None
    where open_clip does not expose it (``hf-hub:`` names)."""
    if model_name.startswith(LOCAL_DIR):
        return json.loads((Path(model_name.removeprefix(LOCAL_DIR)) / CONFIG_FILE).read_text())["model_cfg"]
    return open_clip.get_model_config(model_name)


def _known_words(model_name: str) -> frozenset[str] | None:
    """The words of a ``local-dir:`` folder's ``caption_words.json``, or None (an open vocabulary)."""
    path = Path(model_name.removeprefix(LOCAL_DIR)) / WORDS_FILE if model_name.startswith(LOCAL_DIR) else None
    if path is None or not path.is_file():
        return None
    return frozenset(json.loads(path.read_text()))


class OpenCLIP(TextEncoder):
    """Tokens come from running the text transformer (``forward_intermediates``), not from
    ``encode_text`` alone: the last block after ``ln_final``, or the penultimate block without it
    (as SDXL takes it). pooled is exactly ``model.encode_text`` (pooled end-of-text state, projected).

    A ``local-dir:`` folder that lists its training captions' words (``caption_words.json``, as the built-in CLIP's
    does) makes the encoder warn once about each word outside them: such a model has never read it (the built-in
    CLIP places "big" nearer "small" than "large").
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | Path | None = None,
        layer: Layer = "last",
        *,
        trainable: bool = False,
    ) -> None:
        super().__init__(trainable=trainable)
        check_layer(layer)
        if pretrained is not None and Path(pretrained).is_dir():
            raise UserError(
                f"pretrained='{pretrained}' is a folder; pass model_name='local-dir:{pretrained}' to load a "
                "folder holding open_clip_config.json and the weights, or the path of the weights file."
            )
        try:
            self.model = open_clip.create_model(model_name, pretrained=None if pretrained is None else str(pretrained))
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except (RuntimeError, FileNotFoundError, ValueError) as err:
            raise UserError(
                f"Could not load open_clip model '{model_name}' with pretrained={pretrained!r} ({err}); "
                "pass an open_clip model name with a known tag or a checkpoint path, or 'local-dir:FOLDER'."
            ) from None
        if not isinstance(self.tokenizer, SimpleTokenizer):
            raise UserError(
                f"open_clip model '{model_name}' uses a {type(self.tokenizer).__name__}, but OpenCLIP "
                "supports models with open_clip's CLIP tokenizer; load this model with TransformersCLIP."
            )
        if layer == "penultimate" and self.model.transformer.layers < 2:
            raise UserError(
                f"open_clip model '{model_name}' has a one-block text transformer, so it has no penultimate "
                "layer; use layer='last'."
            )
        self.layer = layer
        self.model_name = model_name
        self._architecture = _model_config(model_name)  # read now: a local-dir folder may be gone at save time
        self.known_words = _known_words(model_name)
        self._warned: set[str] = set()
        self.max_length = self.model.context_length
        with torch.no_grad():
            probe = self._encode([""])
        self.token_dim = probe.tokens.shape[-1]
        self.pooled_dim = probe.pooled.shape[-1]
        self._freeze_unless_trainable()

    def _options(self) -> str:
        return f"layer={self.layer}, max_length={self.max_length}"

    def _saved_options(self) -> dict[str, Any]:
        return {"layer": self.layer}

    def _save_model(self, folder: Path) -> None:
        # open_clip's own folder format, so that OpenCLIP("local-dir:FOLDER") and open_clip itself read it.
        if self._architecture is None:
            raise UserError(f"open_clip has no config for model '{self.model_name}' to save with its weights; load "
                            "the model by a registered name or from a 'local-dir:' folder to save it.")
        config = {"model_cfg": self._architecture, "preprocess_cfg": dict(self.model.visual.preprocess_cfg)}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, folder / WEIGHTS_FILE)
        if self.known_words is not None:
            (folder / WORDS_FILE).write_text(json.dumps(sorted(self.known_words)) + "\n")

    @classmethod
    def _load_saved(cls, folder: Path, **options: Any) -> OpenCLIP:
        # open_clip would only warn about missing weights (and look for pickles): a saved folder must hold them.
        missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
        if missing:
            raise UserError(f"The text encoder folder '{folder}' has no {' or '.join(missing)}; save the encoder "
                            "(or the pipeline) again.")
        return cls(f"{LOCAL_DIR}{folder}", **options)

    def _token_counts(self, captions: list[str]) -> list[int]:
        return [len(self.tokenizer.encode(caption)) + 2 for caption in captions]  # + start and end of text

    def _encode(self, captions: list[str]) -> Condition:
        if self.known_words is not None:
            self._warn_about_unknown_words(captions)
        ids = self.tokenizer(captions).to(self.device)  # (B, L), zero-padded after end-of-text
        last = self.layer == "last"
        out = self.model.forward_intermediates(
            text=ids, text_indices=1 if last else 2, normalize_intermediates=last, normalize=False
        )
        tokens = out["text_intermediates"][0]  # (B, L, D)
        end = (ids == self.tokenizer.eot_token_id).int().argmax(dim=1)  # (B,)
        mask = torch.arange(ids.shape[1], device=ids.device) <= end[:, None]
        return Condition(tokens=tokens, mask=mask, pooled=out["text_features"])

    def _warn_about_unknown_words(self, captions: list[str]) -> None:
        unknown = sorted({w for caption in captions for w in words(caption)} - self.known_words - self._warned)
        for word in unknown:
            warnings.warn(f"The text encoder never read the word {word!r} in training (its captions use: "
                          f"{', '.join(sorted(self.known_words))}); it may not mean what you expect.", stacklevel=3)
        self._warned.update(unknown)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] (as the datasets yield them) to L2-normalised embeddings
        ``[B, pooled_dim]``, in the space of the normalised pooled text embeddings (for CLIP score)."""
        with self._grad_mode():
            return F.normalize(self.model.encode_image(self._image_input(images)), dim=-1)

    def encode_image_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] to the image tower's last-block patch features ``[B, D, h, w]``
        after its final norm (what representation alignment, REPA, pulls a denoiser's features toward)."""
        with self._grad_mode():
            out = self.model.visual.forward_intermediates(self._image_input(images), indices=1,
                                                          normalize_intermediates=True, intermediates_only=True)
        return out["image_intermediates"][-1]

    def _image_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] as the image tower takes them: open_clip's resize, crop and normalisation."""
        cfg = self.model.visual.preprocess_cfg
        size = (cfg["size"], cfg["size"]) if isinstance(cfg["size"], int) else tuple(cfg["size"])  # (H, W)
        pixels = (images.to(self.device, torch.float32) + 1) / 2
        if tuple(pixels.shape[-2:]) != size:
            # open_clip's own preprocessing: resize the shorter side, crop the centre.
            pixels = TF.resize(pixels, min(size), interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            pixels = TF.center_crop(pixels, list(size)).clamp(0, 1)
        mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(next(self.model.parameters()).dtype)
