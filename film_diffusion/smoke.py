"""A quick end-to-end check of the installation: every conditioning method on the backbones that take it,
a few AdamW steps on random inputs on the CPU, with the loss printed per model.
It needs no data and no text encoder.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from film_diffusion.backbones import DiT, UNet
from film_diffusion.conditioning import Condition

GATED = {"name": "cross_attention", "gate": "layer"}
METHOD_LISTS = (["film"], ["adaln_zero"], ["adaln_single"], ["cross_attention"], [GATED], ["concat"],
                ["joint_attention"], ["adaln_zero", "cross_attention"], ["adaln_single", "cross_attention"],
                ["film", "cross_attention"])
DIT_ONLY = ("adaln_single", "joint_attention")  # one modulation width / self-attention in every block


def label(methods: list) -> str:
    """``film+cross_attention``; a method with options reads ``cross_attention(gate=layer)``."""
    return "+".join(m if isinstance(m, str) else
                    f"{m['name']}({','.join(f'{k}={v}' for k, v in m.items() if k != 'name')})" for m in methods)
TOKEN_DIM, POOLED_DIM = 64, 64


def build(backbone: str, methods: list[str]) -> torch.nn.Module:
    common = dict(conditioning=methods, cond_token_dim=TOKEN_DIM, cond_pooled_dim=POOLED_DIM, in_channels=3)
    if backbone == "DiT":
        return DiT(sample_size=16, patch_size=2, hidden_size=96, depth=4, num_heads=4, **common)
    return UNet(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, attention_levels=(1,), num_heads=4,
                **common)


def run_smoke(steps: int = 2, batch: int = 8, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    images = torch.randn(batch, 3, 16, 16)
    condition = Condition(tokens=torch.randn(batch, 8, TOKEN_DIM), mask=torch.ones(batch, 8, dtype=torch.bool),
                          pooled=torch.randn(batch, POOLED_DIM))
    rows = []
    jobs = [(b, m) for b in ("DiT", "UNet") for m in METHOD_LISTS if b == "DiT" or not set(DIT_ONLY) & set(map(str, m))]
    for backbone, methods in tqdm(jobs, desc="smoke", unit="model"):
        model = build(backbone, methods)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        for _ in range(steps):
            noise = torch.randn_like(images)
            t = torch.randint(0, 1000, (batch,))
            noisy = images + noise * (t.float() / 1000)[:, None, None, None]
            loss = F.mse_loss(model(noisy, t, condition=condition).sample, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rows.append(dict(backbone=backbone, conditioning=label(methods), loss=loss.item(),
                         params=sum(p.numel() for p in model.parameters()),
                         seconds_per_step=(time.perf_counter() - start) / steps))
    print(f"{'backbone':8} {'conditioning':34} {'params':>9} {'loss':>8} {'s/step':>7}")
    for r in rows:
        print(f"{r['backbone']:8} {r['conditioning']:34} {r['params']:9,d} {r['loss']:8.4f} "
              f"{r['seconds_per_step']:7.3f}")
    return rows
