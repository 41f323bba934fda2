"""U-Net in the ADM / Stable Diffusion style (Dhariwal & Nichol, 2021; Rombach et al., 2022).

ResBlocks with GroupNorm, transformer-style attention blocks at the chosen resolution levels, skip
connections from the encoder to the decoder. As in the DiT file, how the condition enters is not
written here: ResBlocks expose a norm site (where ADM's scale-shift norm sits) and a gate site,
attention blocks a context site (where Stable Diffusion's cross-attention sits), the input an input site.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from film_diffusion.backbones.output import CheckpointedBlocksMixin, DenoiserOutput, NullClassMixin
from film_diffusion.conditioning import Condition, ConditioningStack, Site, SiteState
from film_diffusion.errors import UserError
from film_diffusion.layers import (
    Mlp,
    SelfAttention,
    TimestepEmbedder,
    sincos_pos_embed_2d,
    timesteps_for_batch,
    zero_module,
)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; norm (a site), SiLU, conv; gated residual branch plus a skip."""

    def __init__(self, prefix: str, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.sites = [
            Site(f"{prefix}.in", "block_in", in_channels, layout="image"),
            Site(f"{prefix}.norm", "norm", out_channels, layout="image"),
            Site(f"{prefix}.gate", "gate", out_channels, layout="image"),
            Site(f"{prefix}.out", "block_out", out_channels, layout="image"),
        ]
        self.site_in, self.site_norm, self.site_gate, self.site_out = (s.name for s in self.sites)

    def forward(self, x: torch.Tensor, state: SiteState) -> torch.Tensor:
        x = state.affine(self.site_in, x)                                  # (B, C_in, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(state.affine(self.site_norm, self.norm2(h))))  # (B, C_out, H, W)
        return state.affine(self.site_out, state.gated_add(self.site_gate, self.skip(x), h))


class AttentionBlock(nn.Module):
    """GroupNorm and a projection to tokens (plus, with ``pos_embed``, a fixed 2-D sine-cosine position embedding,
    as DiT adds to its tokens), then self-attention, (context site), MLP, and back."""

    def __init__(self, prefix: str, channels: int, num_heads: int, groups: int, pos_embed: bool = False):
        super().__init__()
        self.pos_embed = pos_embed
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = SelfAttention(channels, num_heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = Mlp(channels, 4 * channels)
        self.proj_out = nn.Linear(channels, channels)
        self.sites = [Site(f"{prefix}.context", "context", channels, num_heads=num_heads)]
        self.site_context = self.sites[0].name

    def forward(self, x: torch.Tensor, state: SiteState) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C): a view for channels_last input
        if self.pos_embed:
            t = t + self.positions(h, w, t)
        t = t + self.attn(self.norm1(t))
        t = state.residual(self.site_context, t)
        t = t + self.mlp(self.norm2(t))
        return x + self.proj_out(t).view(b, h, w, c).permute(0, 3, 1, 2)  # back to (B, C, H, W) without a copy

    def positions(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """The ``(HW, C)`` embedding of an ``h x w`` grid, made once per size, device and dtype."""
        if h != w:
            raise ValueError(f"attention_pos_embed needs square feature maps, got {h}x{w}; use square images or "
                             "build the U-Net with attention_pos_embed=False.")
        key = (h, like.device, like.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_pos_embed_2d(like.shape[-1], h).to(like.device, like.dtype)
        return self._pos_cache[key]


class Level(nn.Module):
    """One resolution level: ResBlocks, each followed by an attention block if the level has them,
    then a resampling layer (none on the last level)."""

    def __init__(self, res: list[ResBlock], attn: list[AttentionBlock], resample: nn.Module | None):
        super().__init__()
        self.res = nn.ModuleList(res)
        self.attn = nn.ModuleList(attn)
        self.resample = resample

    @property
    def sites(self) -> list[Site]:
        sites = []
        for i, block in enumerate(self.res):
            sites += block.sites + (self.attn[i].sites if self.attn else [])
        return sites


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def pixel_coordinates(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, H, W)``: each pixel's x (channel 0) and y (channel 1), from -1 at one edge to 1 at the other."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)])
    return grid.expand(b, 2, h, w)


class UNet(NullClassMixin, CheckpointedBlocksMixin, PeftAdapterMixin, ModelMixin, ConfigMixin):
    """Convolutional denoiser whose conditioning is a list of methods.

    Args:
        sample_size: image (latent) side; must be divisible by ``2 ** (len(block_out_channels) - 1)``.
        in_channels / out_channels: image channels (out defaults to in).
        block_out_channels: channels per resolution level, from full resolution down.
        layers_per_block: ResBlocks per level in the encoder (the decoder has one more).
        attention_levels: indices of the levels with attention blocks (0 = full resolution); the middle
            always has one.
        num_heads: attention heads in every attention block.
        num_classes: take ``class_labels`` through a label embedder (row ``num_classes`` = null class).
        conditioning: method names or ``{"name": ..., **options}`` mappings, e.g. ``["film", "cross_attention"]``.
        timestep_route: ``"native"`` (scale-shift norm in every ResBlock, whatever the condition's method)
            or ``"with_condition"``.
        cond_token_dim / cond_pooled_dim: the text encoder's ``token_dim`` / ``pooled_dim``.
        norm_num_groups: GroupNorm groups; every level's channels must be divisible by it.
        zero_init: as ADM does, zero the last convolution of every ResBlock and the output projection of
            every attention block, so that every block starts as the identity (a ResBlock as its skip
            projection). A ResBlock whose residual branch a method already gates with a zero-initialised
            gate (adaLN-Zero) keeps its convolution: two zero factors would give neither a gradient.
        learned_null_tokens: hold a learned null text condition of this many tokens (the encoder's
            ``max_length``) for caption dropout and guidance, as PixArt does; None: no learned null.
        attention_pos_embed: add a fixed 2-D sine-cosine position embedding to the tokens of every attention
            block, so that attention (a cross-attention's queries) can tell where a token is; convolutions
            see position only through their zero padding. Off by default, as in ADM and Stable Diffusion
            (docs/models.md has the measurement behind it).
        coord_channels: give the first convolution two more input channels holding each pixel's x and y in
            [-1, 1] (CoordConv, Liu et al. 2018), so that a method that reaches every pixel alike (FiLM, adaLN)
            can say where to draw from the first layer on, rather than from the zero padding's edge effects.
    """

    native_timestep_method = "film"

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        block_out_channels: Sequence[int] = (64, 128, 256),
        layers_per_block: int = 2,
        attention_levels: Sequence[int] = (1, 2),
        num_heads: int = 4,
        num_classes: int | None = None,
        conditioning: Any = None,
        timestep_route: str = "native",
        cond_token_dim: int | None = None,
        cond_pooled_dim: int | None = None,
        norm_num_groups: int = 32,
        zero_init: bool = True,
        learned_null_tokens: int | None = None,
        attention_pos_embed: bool = False,
        coord_channels: bool = False,
    ):
        super().__init__()
        channels = list(block_out_channels)
        levels = len(channels)
        if sample_size % 2 ** (levels - 1):
            raise UserError(f"sample_size={sample_size} cannot be halved {levels - 1} times; choose a multiple of "
                            f"{2 ** (levels - 1)} or fewer block_out_channels.")
        bad_levels = [a for a in attention_levels if not 0 <= a < levels]
        if bad_levels:
            raise UserError(f"attention_levels {bad_levels} are out of range; levels are 0..{levels - 1}.")
        bad_channels = [c for c in channels if c % norm_num_groups or c % num_heads]
        if bad_channels:
            raise UserError(f"block_out_channels {bad_channels} are not divisible by norm_num_groups={norm_num_groups} "
                            f"and num_heads={num_heads}; choose multiples of both.")
        self.out_channels = out_channels or in_channels
        embed_dim = 4 * channels[0]
        self.t_embedder = TimestepEmbedder(embed_dim, frequency_size=channels[0])

        def res(prefix: str, cin: int, cout: int) -> ResBlock:
            return ResBlock(prefix, cin, cout, norm_num_groups)

        def attn(prefix: str, ch: int) -> AttentionBlock:
            return AttentionBlock(prefix, ch, num_heads, norm_num_groups, attention_pos_embed)

        skip_channels = [channels[0]]
        ch = channels[0]
        self.down = nn.ModuleList()
        for level, cout in enumerate(channels):
            blocks, attns = [], []
            for j in range(layers_per_block):
                blocks.append(res(f"down.{level}.res.{j}", ch, cout))
                ch = cout
                if level in attention_levels:
                    attns.append(attn(f"down.{level}.attn.{j}", ch))
                skip_channels.append(ch)
            last = level == levels - 1
            self.down.append(Level(blocks, attns, None if last else Downsample(ch)))
            if not last:
                skip_channels.append(ch)

        self.mid = Level([res("mid.res.0", ch, ch), res("mid.res.1", ch, ch)], [attn("mid.attn.0", ch)], None)

        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            cout = channels[level]
            blocks, attns = [], []
            for j in range(layers_per_block + 1):
                blocks.append(res(f"up.{level}.res.{j}", ch + skip_channels.pop(), cout))
                ch = cout
                if level in attention_levels:
                    attns.append(attn(f"up.{level}.attn.{j}", ch))
            self.up.append(Level(blocks, attns, None if level == 0 else Upsample(ch)))

        self.norm_out = nn.GroupNorm(norm_num_groups, ch)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        zero_module(self.conv_out)  # the output starts at 0, as in ADM

        self.input_site = Site("input", "input", in_channels, layout="image")
        sites = [self.input_site]
        sites += [s for level in self.down for s in level.sites]
        sites += [s for s in self.mid.res[0].sites + self.mid.attn[0].sites + self.mid.res[1].sites]
        sites += [s for level in self.up for s in level.sites]
        self.conditioner = ConditioningStack(conditioning, timestep_route, self.native_timestep_method, sites,
                                             embed_dim=embed_dim, cond_token_dim=cond_token_dim,
                                             cond_pooled_dim=cond_pooled_dim, num_classes=num_classes,
                                             learned_null_tokens=learned_null_tokens)
        extra = self.conditioner.extra_input_channels(self.input_site)
        self.conv_in = nn.Conv2d(in_channels + extra + 2 * coord_channels, channels[0], 3, padding=1)
        if zero_init:
            gated = self.conditioner.zeroed_gates()
            for block in self.modules():
                if isinstance(block, ResBlock) and block.site_gate not in gated:
                    zero_module(block.conv2)
                elif isinstance(block, AttentionBlock):
                    zero_module(block.proj_out)

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
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample must be (B, {cfg.in_channels}, H, W), got {tuple(sample.shape)}.")
        t = timesteps_for_batch(timestep, sample.shape[0], sample.device)
        state = self.conditioner(self.t_embedder(t), condition, class_labels, null_mask)
        sample = sample.to(self.conv_in.weight.dtype)
        x = state.extend_channels(self.input_site.name, sample)
        if cfg.coord_channels:
            x = torch.cat([x, pixel_coordinates(x)], dim=1)
        h = self.conv_in(x)  # (B, C0, H, W)
        skips = [h]
        for level in self.down:
            for i, block in enumerate(level.res):
                h = self.run_block(block, h, state)
                if level.attn:
                    h = self.run_block(level.attn[i], h, state)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        for block in (self.mid.res[0], self.mid.attn[0], self.mid.res[1]):
            h = self.run_block(block, h, state)
        for level in self.up:
            for i, block in enumerate(level.res):
                h = self.run_block(block, torch.cat([h, skips.pop()], dim=1), state)
                if level.attn:
                    h = self.run_block(level.attn[i], h, state)
            if level.resample is not None:
                h = level.resample(h)
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)
        return DenoiserOutput(sample=out) if return_dict else (out,)
