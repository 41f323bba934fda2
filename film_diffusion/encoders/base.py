"""The interface every text encoder shares: a list of captions in, a :class:`Condition` out.

What must behave the same whichever library runs the model lives here once: freezing, the
truncation warning, and the identity string that keys embedding caches.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.models.modeling_utils import ModelMixin

from film_diffusion.conditioning.condition import Condition
from film_diffusion.errors import UserError

Layer = Literal["last", "penultimate"]
LAYERS: tuple[str, ...] = ("last", "penultimate")
SAVED_OPTIONS_FILE = "text_encoder.json"
"""What a saved encoder folder records beside the weights: the class and the options that change its output."""


class TextEncoder(ModelMixin, ABC):
    """A text encoder that is frozen (no gradients, eval mode) unless built with ``trainable=True``.

    Subclasses set ``token_dim``, ``pooled_dim`` and ``max_length`` (the context, special tokens
    included), implement :meth:`_encode`, :meth:`_token_counts`, :meth:`_options` and the folder
    methods :meth:`_save_model` / :meth:`_load_saved`, and call :meth:`_freeze_unless_trainable`
    once their modules exist. It is a diffusers ``ModelMixin`` only so that a pipeline saves and
    loads it as a component; its folder format is its own (see :meth:`save_pretrained`).
    """

    token_dim: int
    pooled_dim: int
    max_length: int

    def __init__(self, trainable: bool = False) -> None:
        super().__init__()
        self.trainable = trainable
        self._weights_digest: str | None = None

    @abstractmethod
    def _encode(self, captions: list[str]) -> Condition:
        """Tokenize (padded and truncated to ``max_length``) and run the model."""

    @abstractmethod
    def _token_counts(self, captions: list[str]) -> list[int]:
        """Each caption's length in tokens before truncation, special tokens included."""

    @abstractmethod
    def _options(self) -> str:
        """The options that change the output for the same weights (layer, projection, ...)."""

    @abstractmethod
    def _saved_options(self) -> dict[str, Any]:
        """Constructor options that :meth:`_load_saved` needs besides the folder (JSON values)."""

    @abstractmethod
    def _save_model(self, folder: Path) -> None:
        """Write the weights (safetensors), the architecture and the tokenizer into ``folder``."""

    @classmethod
    @abstractmethod
    def _load_saved(cls, folder: Path, **options: Any) -> TextEncoder:
        """Rebuild the encoder that :meth:`_save_model` wrote, from ``folder`` alone."""

    def save_pretrained(self, save_directory: str | Path, **_unused: Any) -> None:
        """Write the whole encoder into ``save_directory``: weights, architecture, tokenizer and options,
        so that the folder (a pipeline's ``text_encoder/``) needs no path or hub outside it to load."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_model(folder)
        saved = {"class": type(self).__name__, **self._saved_options()}
        (folder / SAVED_OPTIONS_FILE).write_text(json.dumps(saved, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                        **_loading_kwargs: Any) -> TextEncoder:
        """Load a folder written by :meth:`save_pretrained` (frozen). diffusers' pipeline loading passes
        its model-loading options too; only ``torch_dtype`` applies to an encoder."""
        folder = Path(folder)
        options_file = folder / SAVED_OPTIONS_FILE
        if not options_file.is_file():
            raise UserError(f"'{folder}' holds no saved text encoder ({SAVED_OPTIONS_FILE} is missing); pass a "
                            "folder written by TextEncoder.save_pretrained, such as a pipeline's text_encoder/.")
        try:
            options = json.loads(options_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"'{options_file}' is not valid JSON ({err}); save the encoder again.") from None
        saved_class = options.pop("class", None)
        if saved_class != cls.__name__:
            raise UserError(f"'{folder}' holds a text encoder of class {saved_class}, not {cls.__name__}; load it "
                            f"with {saved_class}.from_pretrained.")
        encoder = cls._load_saved(folder, **options)
        return encoder if torch_dtype is None else encoder.to(torch_dtype)

    def encode(self, captions: Sequence[str]) -> Condition:
        """Encode a batch of captions; ``""`` is the unconditional prompt and works like any other."""
        if isinstance(captions, str):
            raise UserError("encode() takes a list of captions, got a single string; wrap it in a list.")
        captions = list(captions)
        cut = sum(n > self.max_length for n in self._token_counts(captions))
        if cut:
            warnings.warn(
                f"{cut} of {len(captions)} captions were longer than the encoder's {self.max_length}-token "
                "context and were truncated.",
                stacklevel=2,
            )
        with self._grad_mode():
            return self._encode(captions)

    def _grad_mode(self) -> torch.autograd.grad_mode.set_grad_enabled:
        """Gradients flow only through a trainable encoder, so a frozen one never builds a graph."""
        return torch.set_grad_enabled(self.trainable and torch.is_grad_enabled())

    def _freeze_unless_trainable(self) -> None:
        self.requires_grad_(self.trainable)
        self.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        # A frozen encoder stays in eval mode when the model that holds it is put in training mode.
        return super().train(mode and self.trainable)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def identity(self) -> str:
        """Names the encoder class, its options and a digest of its weights (not its path), so an
        embedding cache built by another encoder, or by other weights at the same path, is refused."""
        if self._weights_digest is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_digest = digest.hexdigest()[:16]
        return f"{type(self).__name__}({self._options()}) weights={self._weights_digest}"


class TransformersEncoder(TextEncoder):
    """An encoder that is one transformers model (``self.model``) and its tokenizer (``self.tokenizer``): the folder
    is what transformers' ``save_pretrained`` writes for both, and the tokenizer counts a caption's tokens."""

    model: Any
    tokenizer: Any

    def _save_model(self, folder: Path) -> None:
        self.model.save_pretrained(folder)  # config.json + model.safetensors
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def _load_saved(cls, folder: Path, **options: Any) -> TransformersEncoder:
        return cls(folder, **options)

    def _token_counts(self, captions: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(captions, verbose=False)["input_ids"]]


def check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise UserError(f"layer={layer!r} is not supported; choose one of {', '.join(map(repr, LAYERS))}.")
