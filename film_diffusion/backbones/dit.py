"""DiT: Scalable Diffusion Models with Transformers (Peebles & Xie, 2023, arXiv:2212.09748).

Patchify, a stack of transformer blocks, a final layer, unpatchify. How the condition enters is not
written here: each block exposes named sites and the conditioning stack acts on them. With
``conditioning="adaln_zero"`` and class labels this is exactly the paper's class-conditional DiT.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from film_diffusion.backbones.output import CheckpointedBlocksMixin, DenoiserOutput, NullClassMixin
from film_diffusion.backbones.token_mixers import FFNifiedMixer, make_token_mixer
from film_diffusion.conditioning import Condition, ConditioningStack, Site, SiteState
from film_diffusion.errors import UserError
from film_diffusion.layers import (
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    sincos_pos_embed_2d,
    timesteps_for_batch,
    unpatchify,
    zero_module,
)


class DiTBlock(nn.Module):
    """Pre-norm transformer block: token mixer (self-attention or FFNified), (context site), MLP, each
    branch gated. The sites are the same whichever the token mixer, but for the joint site, which only
    self-attention has. A block takes and returns the token stream a joint method carries (None without one)."""

    def __init__(self, prefix: str, hidden_size: int, num_heads: int, mlp_ratio: float, token_mixer: str = "attention",
                 grid: int = 0, mixer_kernel_size: int = 7, mixer_fused: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = make_token_mixer(token_mixer, hidden_size, num_heads, grid, mixer_kernel_size, mixer_fused)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        # Site order matters to generators: attn_norm, attn_gate, mlp_norm, mlp_gate reads as DiT's
        # (shift, scale, gate)_msa, (shift, scale, gate)_mlp.
        self.sites = [
            Site(f"{prefix}.in", "block_in", hidden_size),
            Site(f"{prefix}.attn_norm", "norm", hidden_size),
            Site(f"{prefix}.attn_gate", "gate", hidden_size),
            *([Site(f"{prefix}.joint", "joint", hidden_size, num_heads=num_heads)] if token_mixer == "attention"
              else []),
            Site(f"{prefix}.context", "context", hidden_size, num_heads=num_heads),
            Site(f"{prefix}.mlp_norm", "norm", hidden_size),
            Site(f"{prefix}.mlp_gate", "gate", hidden_size),
            Site(f"{prefix}.out", "block_out", hidden_size),
        ]
        self.site_in, self.site_attn_norm, self.site_attn_gate, self.site_context, \
            self.site_mlp_norm, self.site_mlp_gate, self.site_out = (s.name for s in self.sites if s.kind != "joint")
        self.site_joint = f"{prefix}.joint"

    def forward(self, x: torch.Tensor, state: SiteState, key_mask: torch.Tensor | None,
                stream: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = state.affine(self.site_in, x)                                   # (B, T, H)
        h = state.affine(self.site_attn_norm, self.norm1(x))
        mixed, stream = state.joint_attention(self.site_joint, self.attn, h, key_mask, stream)
        x = state.gated_add(self.site_attn_gate, x, mixed)
        x = state.residual(self.site_context, x)
        h = state.affine(self.site_mlp_norm, self.norm2(x))
        x = state.gated_add(self.site_mlp_gate, x, self.mlp(h))
        return state.affine(self.site_out, x), stream


class FinalLayer(nn.Module):
    """Norm (a site), then a linear map from each token to its patch's pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.site = Site("final.norm", "norm", hidden_size)

    def forward(self, x: torch.Tensor, state: SiteState) -> torch.Tensor:
        return self.linear(state.affine(self.site.name, self.norm_final(x)))  # (B, T, p*p*C)


class DiT(NullClassMixin, CheckpointedBlocksMixin, PeftAdapterMixin, ModelMixin, ConfigMixin):
    """Diffusion transformer whose conditioning is a list of methods.

    Args:
        sample_size: image (latent) side length; must be divisible by ``patch_size``.
        patch_size: side of a square patch.
        in_channels / out_channels: image channels (out defaults to in; doubled with ``learn_sigma``).
        hidden_size, depth, num_heads, mlp_ratio: transformer size.
        learn_sigma: also predict the variance (the DiT paper's models do).
        num_classes: take ``class_labels`` through a label embedder (row ``num_classes`` = null class).
        conditioning: method names or ``{"name": ..., **options}`` mappings, e.g. ``["adaln_zero", "cross_attention"]``.
        timestep_route: ``"native"`` (adaLN-Zero, whatever the condition's method) or ``"with_condition"``.
        cond_token_dim / cond_pooled_dim: the text encoder's ``token_dim`` / ``pooled_dim``.
        timestep_freq_shift: 0 as in the DiT paper; 1 reproduces diffusers' ``DiTTransformer2DModel``.
        learned_null_tokens: hold a learned null text condition of this many tokens (the encoder's
            ``max_length``) for caption dropout and guidance, as PixArt does; None: no learned null.
        token_mixer: ``"attention"`` (the DiT) or ``"ffnified"`` (FFNet's attention-free mixer, linear in
            the token count; see ``backbones/token_mixers.py``).
        mixer_kernel_size: the FFNified mixer's depthwise kernel (odd; 7 as in FFNet).
        mixer_fused: the FFNified mixer's sampling form, as :meth:`fuse` leaves it (set by ``fuse``, so
            that a saved fused model loads as one).
        conv_head: a 3x3 convolution over the unpatchified output, as U-ViT ends: each pixel's prediction
            sees its neighbours across patch borders, which the per-token linear head cannot.
    """

    native_timestep_method = "adaln_zero"

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        out_channels: int | None = None,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        learn_sigma: bool = False,
        num_classes: int | None = None,
        conditioning: Any = None,
        timestep_route: str = "native",
        cond_token_dim: int | None = None,
        cond_pooled_dim: int | None = None,
        timestep_freq_shift: float = 0.0,
        learned_null_tokens: int | None = None,
        token_mixer: str = "attention",
        mixer_kernel_size: int = 7,
        mixer_fused: bool = False,
        conv_head: bool = False,
    ):
        super().__init__()
        if sample_size % patch_size:
            raise UserError(f"sample_size={sample_size} is not divisible by patch_size={patch_size}; "
                            "choose a sample_size that is a multiple of patch_size.")
        if hidden_size % num_heads:
            raise UserError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; choose a divisor.")
        self.out_channels = (out_channels or in_channels) * (2 if learn_sigma else 1)
        self.grid = sample_size // patch_size

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, self.grid)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=timestep_freq_shift)
        self.blocks = nn.ModuleList(DiTBlock(f"blocks.{i}", hidden_size, num_heads, mlp_ratio, token_mixer, self.grid,
                                             mixer_kernel_size, mixer_fused) for i in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.conv_out = nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1) if conv_head else None
        self.sequence_site = Site("tokens", "sequence", hidden_size)
        sites = [self.sequence_site] + [s for block in self.blocks for s in block.sites] + [self.final_layer.site]
        self.conditioner = ConditioningStack(conditioning, timestep_route, self.native_timestep_method, sites,
                                              embed_dim=hidden_size, cond_token_dim=cond_token_dim,
                                              cond_pooled_dim=cond_pooled_dim, num_classes=num_classes,
                                              learned_null_tokens=learned_null_tokens)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The DiT paper's initialisation of the backbone; each method zero-initialises its own parts."""
        for module in [self.blocks, self.final_layer]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for m in self.t_embedder.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        if self.conditioner.label_embedder is not None:
            nn.init.normal_(self.conditioner.label_embedder.embedding_table.weight, std=0.02)
        zero_module(self.final_layer.linear)  # the output starts at 0, as in the paper
        if self.conv_out is not None:  # default weights (U-ViT's); no bias, so the output still starts at 0
            nn.init.zeros_(self.conv_out.bias)

    def fuse(self) -> DiT:
        """Re-parameterise every FFNified mixer for sampling, in place (the same outputs, fewer operations);
        the config records it, so ``save_pretrained`` / ``from_pretrained`` keep the fused form. A no-op
        for attention."""
        mixers = [m for m in self.modules() if isinstance(m, FFNifiedMixer)]
        for mixer in mixers:
            mixer.fuse()
        if mixers:  # off diffusers' list of defaulted keys too, or from_config would rebuild it unfused
            defaulted = [k for k in self.config.get("_use_default_values", []) if k != "mixer_fused"]
            self.register_to_config(mixer_fused=True, _use_default_values=defaulted)
        return self

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        condition: Condition | None = None,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        null_mask: torch.Tensor | None = None,
    ) -> DenoiserOutput | tuple[torch.Tensor]:
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels or sample.shape[-1] != cfg.sample_size \
                or sample.shape[-2] != cfg.sample_size:
            raise ValueError(f"sample must be (B, {cfg.in_channels}, {cfg.sample_size}, {cfg.sample_size}), "
                             f"got {tuple(sample.shape)}.")
        t = timesteps_for_batch(timestep, sample.shape[0], sample.device)
        x = self.x_embedder(sample.to(self.x_embedder.proj.weight.dtype))  # (B, T, H)
        x = x + self.pos_embed.to(x.dtype)  # under autocast the residual stream stays in its dtype, as in diffusers
        state = self.conditioner(self.t_embedder(t), condition, class_labels, null_mask)
        num_patches = x.shape[1]
        x, key_mask = state.extend_sequence(self.sequence_site.name, x)  # (B, T + extra, H)
        stream = state.stream                                              # a joint method's caption tokens, or None
        for block in self.blocks:
            x, stream = self.run_block(block, x, state, key_mask, stream)
        x = self.final_layer(x[:, :num_patches], state)  # in-context tokens and the stream never reach the grid
        out = unpatchify(x, cfg.patch_size, self.out_channels, self.grid)  # (B, C_out, H, W)
        if self.conv_out is not None:
            out = self.conv_out(out)
        return DenoiserOutput(sample=out) if return_dict else (out,)


_DIT_SIZES: dict[str, dict[str, int]] = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}

DIT_PRESETS: dict[str, dict[str, int]] = {
    **{f"DiT-{size}/{p}": dict(dims, patch_size=p) for size, dims in _DIT_SIZES.items() for p in (2, 4, 8)},
    "DiT-Tiny/2": dict(depth=2, hidden_size=64, num_heads=4, patch_size=2),  # for the CPU and the tests
}
"""The DiT paper's model sizes (Table 1), plus a tiny one; combine with the data and conditioning args."""


def dit_from_preset(name: str, **kwargs: Any) -> DiT:
    """``dit_from_preset("DiT-XL/2", num_classes=1000, conditioning="adaln_zero", learn_sigma=True)``."""
    if name not in DIT_PRESETS:
        raise UserError(f"Unknown DiT preset {name!r}; choose from {', '.join(DIT_PRESETS)}.")
    return DiT(**{**DIT_PRESETS[name], **kwargs})
