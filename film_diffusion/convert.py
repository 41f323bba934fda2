"""Pretrained DiT weights from facebookresearch/DiT and from diffusers, loaded into our :class:`DiT`.

Both sources are first rewritten into facebookresearch/DiT's ``models.py`` key layout (the paper's own
code); one function then maps that layout onto ours. The only real change is adaLN-Zero: the paper gives
every block its own ``adaLN_modulation`` Linear, ours is one generator emitting every site's parameters in
one matrix product, so those Linears become consecutive rows of it, in site order (per block shift, scale,
gate for attention then for the MLP, then the final layer's shift, scale: the paper's ``chunk`` order).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file

from film_diffusion.backbones.dit import DiT
from film_diffusion.errors import UserError
from film_diffusion.layers import sincos_pos_embed_2d

StateDict = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)

PAPER_NUM_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}
"""Heads of the DiT paper's S, B, L, XL models by hidden size: a state dict does not record them."""

FREQUENCY_SIZE = 256  # sinusoidal timestep features, in both sources and in ours
LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # per block, same names in the paper's code and ours
DIFFUSERS_SETTINGS = {"activation_fn": "gelu-approximate", "norm_elementwise_affine": False, "attention_bias": True}
"""diffusers DiT options whose other values our DiT cannot represent."""


def load_facebookresearch_dit(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                              num_heads: int | None = None, num_classes: int | None = None) -> DiT:
    """A facebookresearch/DiT checkpoint as our class-conditional adaLN-Zero DiT, in float32 and eval mode.

    Takes a state dict or a ``.pt`` / ``.safetensors`` file: a released model (``DiT-XL-2-256.pt``) or a
    training checkpoint, whose EMA weights are used as the paper samples with them. The size is read from
    the tensors; ``num_heads`` is not in them and defaults to the paper's head count for the hidden size.
    ``num_classes`` defaults to a training checkpoint's ``args.num_classes``; without either, the label
    table's last row is taken as the null class (the paper trains with class dropout, which adds it), with
    a warning unless the table is the released models' 1000 classes plus null. A table with no null row
    keeps every class and gains a zero null row, with a warning that guidance then has no trained null.
    """
    raw = _read(path_or_state_dict) if isinstance(path_or_state_dict, (str, os.PathLike)) else path_or_state_dict
    if num_classes is None and isinstance(raw, Mapping):
        num_classes = getattr(raw.get("args"), "num_classes", None)
    state = _unwrap(raw)
    if "x_embedder.proj.weight" not in state:
        diffusers_like = any(k.startswith("transformer_blocks.") for k in state)
        hint = ("it looks like a diffusers DiT: use load_diffusers_dit" if diffusers_like
                else "pass a facebookresearch/DiT state dict such as DiT-XL-2-256.pt")
        raise UserError(f"This is not a facebookresearch/DiT checkpoint (no 'x_embedder.proj.weight'); {hint}.")
    hidden = state["x_embedder.proj.weight"].shape[0]
    if num_heads is None:
        if hidden not in PAPER_NUM_HEADS:
            raise UserError(f"The checkpoint's hidden size {hidden} is not one of the DiT paper's sizes, so its "
                            "head count is unknown; pass num_heads=... to load_facebookresearch_dit.")
        num_heads = PAPER_NUM_HEADS[hidden]
    return _dit_from_paper_layout(dict(state), num_heads, num_classes, timestep_freq_shift=0.0,
                                  source="facebookresearch/DiT")


def load_diffusers_dit(model_or_path: DiTTransformer2DModel | str | os.PathLike) -> DiT:
    """A diffusers ``DiTTransformer2DModel`` as our DiT, in float32 and eval mode.

    Takes a model, or a model or pipeline folder for ``from_pretrained``. diffusers gives every block its own
    copy of the timestep and class embedders; ours shares one, so the copies must be equal (they are in
    checkpoints converted from the paper's). Its timestep features use ``downscale_freq_shift=1``, hence
    ``timestep_freq_shift=1``. Its pre-MLP norm uses ``norm_eps`` (default 1e-5) where the paper and our DiT
    use 1e-6; both values are accepted and the result is then the paper's model, whose outputs differ from
    diffusers' by about 1e-6 relative.
    """
    model = model_or_path
    if isinstance(model, (str, os.PathLike)):
        in_pipeline = Path(model, "model_index.json").is_file()
        model = DiTTransformer2DModel.from_pretrained(model, subfolder="transformer" if in_pipeline else None)
    if not isinstance(model, DiTTransformer2DModel):
        raise UserError(f"load_diffusers_dit needs a diffusers DiTTransformer2DModel, not a {type(model).__name__}; "
                        "load one with DiTTransformer2DModel.from_pretrained or pass its folder.")
    cfg = model.config
    for name, value in DIFFUSERS_SETTINGS.items():
        if cfg[name] != value:
            raise UserError(f"A diffusers DiT with {name}={cfg[name]!r} cannot be represented by film_diffusion's "
                            f"DiT; convert one built with {name}={value!r}, as the DiT paper's models are.")
    if cfg.norm_eps not in (1e-5, 1e-6):
        raise UserError(f"A diffusers DiT with norm_eps={cfg.norm_eps} cannot be represented by film_diffusion's "
                        "DiT, whose norms use 1e-6; convert one with norm_eps 1e-6 or diffusers' default 1e-5.")

    sd = model.state_dict()
    emb = "transformer_blocks.0.norm1.emb."
    shared = {k.removeprefix(emb): v for k, v in sd.items() if k.startswith(emb)}
    for i in range(cfg.num_layers):
        prefix = f"transformer_blocks.{i}.norm1.emb."
        for name, value in shared.items():
            if not torch.equal(sd.pop(prefix + name), value):
                raise UserError(f"Block {i}'s timestep/class embedder ({prefix}{name}) differs from block 0's, "
                                "but film_diffusion's DiT shares one; convert a model whose blocks hold equal "
                                "copies, as every checkpoint converted from facebookresearch/DiT does.")
    renames = {"x_embedder.proj": "pos_embed.proj", "final_layer.adaLN_modulation.1": "proj_out_1",
               "final_layer.linear": "proj_out_2"}
    for i in range(cfg.num_layers):
        src = f"transformer_blocks.{i}."
        renames |= {f"blocks.{i}.attn.proj": f"{src}attn1.to_out.0", f"blocks.{i}.mlp.fc1": f"{src}ff.net.0.proj",
                    f"blocks.{i}.mlp.fc2": f"{src}ff.net.2", f"blocks.{i}.adaLN_modulation.1": f"{src}norm1.linear"}
    state = {"pos_embed": model.pos_embed.pos_embed,  # a buffer diffusers does not save: checked all the same
             "y_embedder.embedding_table.weight": shared["class_embedder.embedding_table.weight"]}
    for part in ("weight", "bias"):
        state[f"t_embedder.mlp.0.{part}"] = shared[f"timestep_embedder.linear_1.{part}"]
        state[f"t_embedder.mlp.2.{part}"] = shared[f"timestep_embedder.linear_2.{part}"]
        state |= {f"{ours}.{part}": sd.pop(f"{theirs}.{part}") for ours, theirs in renames.items()}
        for i in range(cfg.num_layers):  # separate q, k, v -> one fused projection, in that order
            state[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(
                [sd.pop(f"transformer_blocks.{i}.attn1.to_{c}.{part}") for c in "qkv"])
    if sd:
        raise UserError(f"The diffusers DiT has weights film_diffusion's DiT has no place for ({', '.join(sd)}); "
                        "convert one built with the DiT paper's settings.")
    return _dit_from_paper_layout(state, cfg.num_attention_heads, cfg.num_embeds_ada_norm, timestep_freq_shift=1.0,
                                  source="diffusers")


RELEASED_TABLE_ROWS = 1001
"""The released DiT models' label table: ImageNet's 1000 classes and the null class."""


def _label_table_with_null_row(table: torch.Tensor, num_classes: int | None, source: str) -> torch.Tensor:
    """The label table with the null class as its last row, as our ``LabelEmbedder`` has it."""
    rows = table.shape[0]
    if num_classes is None:
        if rows != RELEASED_TABLE_ROWS:
            logger.warning("The %s checkpoint does not say how many classes it has; taking the last of its %d "
                           "label rows as the null class (models trained with class dropout have one). Pass "
                           "num_classes=%d if it has no null row.", source, rows, rows)
        return table
    if rows == num_classes + 1:
        return table
    if rows == num_classes:
        logger.warning("The %s checkpoint's %d classes have no null-class row (it was trained without class "
                       "dropout): every class is kept and a zero null row is added, so classifier-free guidance "
                       "has no trained null class.", source, num_classes)
        return torch.cat([table, table.new_zeros(1, table.shape[1])])
    raise UserError(f"The {source} checkpoint's label table has {rows} rows, which fits neither {num_classes} "
                    f"classes nor {num_classes} plus a null class; pass the num_classes it was trained with.")


def _read(path: str | os.PathLike) -> Any:
    """A ``.safetensors`` file, or a ``.pt`` file through ``torch.load(weights_only=True)``: the upstream format."""
    if not Path(path).is_file():
        raise UserError(f"DiT checkpoint {str(path)!r} does not exist; pass the path of a .pt or .safetensors file.")
    if str(path).endswith(".safetensors"):
        return load_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # training checkpoints hold their args
            return torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as err:  # weights_only refused an object that is not a tensor or a plain value
        raise UserError(f"{str(path)!r} is not a plain state dict ({str(err).splitlines()[-1]}); save the "
                        "model's state_dict() with torch.save or as safetensors.") from None


def _unwrap(checkpoint: Any) -> Mapping[str, torch.Tensor]:
    """A training checkpoint's EMA weights, else its model weights, else the checkpoint itself."""
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"A DiT checkpoint must be a state dict, got a {type(checkpoint).__name__}; save the "
                        "model's state_dict().")
    for key in ("ema", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def _take(state: StateDict, key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise UserError(f"The {source} checkpoint lacks {key!r}; pass a complete DiT checkpoint.")
    return state.pop(key)


def _dit_from_paper_layout(state: StateDict, num_heads: int, num_classes: int | None, timestep_freq_shift: float,
                           source: str) -> DiT:
    """Our DiT from a state dict in facebookresearch/DiT's layout (consumed); sizes come from the tensors."""
    depth = sum(1 for k in state if k.startswith("blocks.") and k.endswith(".attn.qkv.weight"))
    if depth == 0:
        raise UserError(f"The {source} checkpoint has no transformer blocks ('blocks.0.attn.qkv.weight'); pass a "
                        "complete DiT checkpoint.")
    pos_embed = _take(state, "pos_embed", source)
    ours = {"conditioner.label_embedder.embedding_table.weight":
            _label_table_with_null_row(_take(state, "y_embedder.embedding_table.weight", source), num_classes, source)}
    linears = ["x_embedder.proj", "t_embedder.mlp.0", "t_embedder.mlp.2", "final_layer.linear"]
    linears += [f"blocks.{i}.{name}" for i in range(depth) for name in LINEARS]
    modulations = [f"blocks.{i}.adaLN_modulation.1" for i in range(depth)] + ["final_layer.adaLN_modulation.1"]
    for part in ("weight", "bias"):
        ours |= {f"{k}.{part}": _take(state, f"{k}.{part}", source) for k in linears}
        ours[f"conditioner.methods.adaln_zero.generator.out.{part}"] = torch.cat(
            [_take(state, f"{k}.{part}", source) for k in modulations])
    if state:
        raise UserError(f"The {source} checkpoint has weights film_diffusion's DiT has no place for "
                        f"({', '.join(sorted(state))}); it is not a DiT of the paper's architecture.")

    hidden, in_channels, patch, _ = ours["x_embedder.proj.weight"].shape
    pos_embed = pos_embed.reshape(-1, hidden).float()  # (T, H)
    grid = math.isqrt(pos_embed.shape[0])
    # Our DiT computes this embedding; 1e-2 tolerates a half-precision copy, while another layout differs by ~1.
    if grid * grid != pos_embed.shape[0] or not torch.allclose(pos_embed, sincos_pos_embed_2d(hidden, grid), atol=1e-2):
        raise UserError(f"The {source} checkpoint's position embedding is not the DiT paper's fixed 2D sine-cosine "
                        "one on a square grid, which film_diffusion's DiT uses; it cannot be converted.")
    if ours["t_embedder.mlp.0.weight"].shape[1] != FREQUENCY_SIZE:
        raise UserError(f"The {source} checkpoint's timestep embedder does not read {FREQUENCY_SIZE} sinusoidal "
                        "features as film_diffusion's DiT does; it cannot be converted.")
    out_channels = ours["final_layer.linear.weight"].shape[0] // (patch * patch)
    learn_sigma = out_channels == 2 * in_channels
    with init_empty_weights():  # every weight is replaced below: skip initialising hundreds of millions of them
        model = DiT(
            sample_size=grid * patch,
            patch_size=patch,
            in_channels=in_channels,
            out_channels=None if learn_sigma else out_channels,
            hidden_size=hidden,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=ours["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
            learn_sigma=learn_sigma,
            num_classes=ours["conditioner.label_embedder.embedding_table.weight"].shape[0] - 1,  # last: null class
            conditioning="adaln_zero",
            timestep_freq_shift=timestep_freq_shift,
        )
    # Copies, so the model never shares storage with the caller's tensors.
    model.load_state_dict({k: v.to(torch.float32, copy=True) for k, v in ours.items()}, assign=True)
    return model.eval()
