"""The output type of every backbone, in the diffusers style (``model(...).sample``)."""

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput


@dataclass
class DenoiserOutput(BaseOutput):
    """sample: the prediction (epsilon, v or flow velocity), the input's shape
    (twice the channels with learned sigma)."""

    sample: torch.Tensor


class NullClassMixin:
    """``null_class_label`` for any backbone whose conditioning lives in ``self.conditioner``."""

    @property
    def null_class_label(self) -> int | None:
        """The class id meaning "no class" for classifier-free guidance, or None without labels."""
        embedder = self.conditioner.label_embedder
        return None if embedder is None else embedder.null_class
