"""Tiny models and inputs shared by the model tests (tests/ is on pytest's path)."""

import torch

from film_diffusion.backbones.dit import DiT
from film_diffusion.backbones.unet import UNet
from film_diffusion.conditioning import Condition

TOKEN_DIM, POOLED_DIM, NUM_TOKENS = 24, 16, 6

GATED = {"name": "cross_attention", "gate": "layer"}
GATED_PER_HEAD = {"name": "cross_attention", "gate": "head"}
METHOD_LISTS = [
    ["film"],
    ["adaln_zero"],
    ["adaln_single"],
    ["cross_attention"],
    [GATED],
    [GATED_PER_HEAD],
    ["concat"],
    ["joint_attention"],
    ["adaln_zero", "cross_attention"],
    ["adaln_single", "cross_attention"],
    ["adaln_zero", "joint_attention"],
    ["film", "cross_attention"],
    ["film", "concat"],
]
BACKBONES = ("dit", "dit_ffnified", "unet")  # dit_ffnified: the DiT with FFNet's attention-free token mixer
ONLY_ON = {"adaln_single": ("dit", "dit_ffnified"),  # one width for every block's modulation
           "joint_attention": ("dit",)}  # needs blocks with self-attention of one width


def method_name(method) -> str:
    return method if isinstance(method, str) else method["name"]


def methods_id(methods) -> str:
    """``film+cross_attention(gate=head)``."""
    def one(m) -> str:
        if isinstance(m, str):
            return m
        options = ",".join(f"{k}={v}" for k, v in m.items() if k != "name")
        return f"{m['name']}({options})"
    return "+".join(map(one, methods))


def method_lists(backbone: str) -> list:
    """The method lists the backbone supports (the others are refused with a sentence; see test_sites)."""
    return [m for m in METHOD_LISTS if all(backbone in ONLY_ON.get(method_name(x), BACKBONES) for x in m)]


CASES = [(b, m, r) for b in BACKBONES for m in method_lists(b) for r in ("native", "with_condition")]


def case_id(case) -> str:
    backbone, methods, route = case
    return f"{backbone}-{methods_id(methods)}-{route}"


def tiny_model(backbone: str, conditioning=None, timestep_route: str = "native", **kwargs) -> torch.nn.Module:
    """A CPU-sized DiT (``dit``, or ``dit_ffnified`` with the FFNified token mixer) or U-Net taking text
    conditions of the widths below."""
    kwargs = {"cond_token_dim": TOKEN_DIM, "cond_pooled_dim": POOLED_DIM, **kwargs}
    if backbone == "dit_ffnified":
        kwargs = {"token_mixer": "ffnified", "mixer_kernel_size": 5, **kwargs}
    if backbone.startswith("dit"):
        return DiT(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4,
                   conditioning=conditioning, timestep_route=timestep_route, **kwargs)
    return UNet(sample_size=8, in_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                attention_levels=(1,), num_heads=2, norm_num_groups=8,
                conditioning=conditioning, timestep_route=timestep_route, **kwargs)


def text_condition(batch: int = 2, seed: int = 0) -> Condition:
    """Random tokens and pooled vector; the first sample has two padded tokens at the end."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, NUM_TOKENS, dtype=torch.bool)
    mask[0, -2:] = False
    return Condition(tokens=torch.randn(batch, NUM_TOKENS, TOKEN_DIM, generator=g), mask=mask,
                     pooled=torch.randn(batch, POOLED_DIM, generator=g))


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter, so zero-initialised paths carry signal (gradient and masking tests)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def noisy_batch(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, 4, 8, 8) sample and one timestep per sample."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randint(0, 1000, (batch,), generator=g)
