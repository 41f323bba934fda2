"""The output type of every backbone, in the diffusers style (``model(...).sample``)."""

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput


@dataclass
class DenoiserOutput(BaseOutput):
    """sample: the prediction (epsilon, v or flow velocity), the input's shape
    (twice the channels with learned sigma)."""

    sample: torch.Tensor
