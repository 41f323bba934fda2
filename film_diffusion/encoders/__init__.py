"""Text encoders: captions to :class:`~film_diffusion.conditioning.condition.Condition`.

``TransformersCLIP`` and ``OpenCLIP`` load the CLIP a user already has, ``TransformersT5`` a T5
encoder, ``PairedEncoder`` joins one's tokens to another's pooled vector (SD3); ``builtin_clip()``
returns the small CLIP trained on the built-in scenes; ``EmbeddingCache`` keeps a frozen encoder from
encoding the same caption twice.
"""

from film_diffusion.encoders.base import TextEncoder
from film_diffusion.encoders.builtin import builtin_clip
from film_diffusion.encoders.cache import EmbeddingCache, save_embeddings
from film_diffusion.encoders.clip_openclip import OpenCLIP
from film_diffusion.encoders.clip_transformers import TransformersCLIP
from film_diffusion.encoders.paired import PairedEncoder
from film_diffusion.encoders.t5 import TransformersT5

__all__ = ["EmbeddingCache", "OpenCLIP", "PairedEncoder", "TextEncoder", "TransformersCLIP", "TransformersT5",
           "builtin_clip", "save_embeddings"]
