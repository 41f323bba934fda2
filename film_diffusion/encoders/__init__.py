"""Text encoders: captions to :class:`~film_diffusion.conditioning.condition.Condition`.

``TransformersCLIP`` and ``OpenCLIP`` load the CLIP a user already has; ``builtin_clip()`` returns
the small CLIP trained on the built-in scenes; ``EmbeddingCache`` keeps a frozen encoder from
encoding the same caption twice.
"""

from film_diffusion.encoders.base import TextEncoder
from film_diffusion.encoders.builtin import builtin_clip
from film_diffusion.encoders.cache import EmbeddingCache, save_embeddings
from film_diffusion.encoders.clip_openclip import OpenCLIP
from film_diffusion.encoders.clip_transformers import TransformersCLIP

__all__ = ["EmbeddingCache", "OpenCLIP", "TextEncoder", "TransformersCLIP", "builtin_clip", "save_embeddings"]
