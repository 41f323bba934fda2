"""Pretrained DiT weights: converted models reproduce facebookresearch/DiT's and diffusers' outputs."""

import argparse
import logging
import math

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import save_file
from torch import nn

from film_diffusion.convert import load_diffusers_dit, load_facebookresearch_dit
from film_diffusion.errors import UserError

ATOL = 1e-5


# -- facebookresearch/DiT models.py, compactly rewritten with its exact state-dict key names ---------------------
def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def get_2d_sincos_pos_embed(embed_dim, grid_size):
    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)))

    def one_axis(d, pos):  # (M, d): sin then cos
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_axis(embed_dim // 2, grid[0]), one_axis(embed_dim // 2, grid[1])], axis=1)


class PatchEmbed(nn.Module):  # timm's, without its norm (an Identity)
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):  # timm's, on its explicit (non-fused) path
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.num_heads) ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):  # timm's, GELU(tanh) as DiT passes it
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t):
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class LabelEmbedder(nn.Module):  # eval mode: no label dropout
    def __init__(self, num_classes, hidden_size):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels):
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ReferenceDiT(nn.Module):
    def __init__(self, input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio=4.0,
                 num_classes=10, learn_sigma=True):
        super().__init__()
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        grid = input_size // patch_size
        pos_embed = torch.from_numpy(get_2d_sincos_pos_embed(hidden_size, grid)).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(pos_embed, requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D)
        for block in self.blocks:
            x = block(x, c)
        x = self.final_layer(x, c)  # (N, T, p*p*C)
        c, p, h = self.out_channels, self.patch_size, int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, h, p, p, c))
        return x.reshape(x.shape[0], c, h * p, h * p)


# -- helpers ---------------------------------------------------------------------------------------------------
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Replace every trainable weight (several are zero-initialised upstream) by a random one of unit-ish gain."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                std = p[0].numel() ** -0.5 if p.ndim > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def inputs(batch: int, channels: int, size: int, num_classes: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, channels, size, size, generator=g), torch.tensor([0, 999, 500][:batch]),
            torch.tensor([0, num_classes, 3][:batch]))  # num_classes is the null class


def tiny_reference(**kwargs) -> ReferenceDiT:
    args = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)
    return randomize_(ReferenceDiT(**{**args, **kwargs}))


def tiny_diffusers(norm_eps: float = 1e-6) -> DiTTransformer2DModel:
    """A random diffusers DiT whose blocks share one embedder, as in checkpoints converted from the paper's."""
    model = randomize_(DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                             out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                             num_embeds_ada_norm=10, norm_eps=norm_eps))
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    return model


# -- facebookresearch/DiT --------------------------------------------------------------------------------------
def test_facebookresearch_checkpoint_gives_the_same_output(tmp_path):
    reference = tiny_reference()
    torch.save(reference.state_dict(), tmp_path / "DiT-tiny.pt")
    model = load_facebookresearch_dit(tmp_path / "DiT-tiny.pt", num_heads=4)
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])  # none left empty
    x, t, y = inputs(3, 4, 8, 10)
    with torch.no_grad():
        expected, got = reference(x, t, y), model(x, t, class_labels=y).sample
    assert got.shape == (3, 8, 8, 8)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kwargs, num_heads, expected", [
    (dict(input_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=3, mlp_ratio=2.0, num_classes=5,
          learn_sigma=False), 2,
     dict(sample_size=16, patch_size=4, in_channels=3, out_channels=3, hidden_size=32, depth=3, mlp_ratio=2.0,
          num_classes=5, learn_sigma=False)),
    (dict(hidden_size=384, depth=1), None,  # a paper width: the paper's head count is the default
     dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=384, depth=1, num_heads=6, learn_sigma=True,
          num_classes=10)),
])
def test_facebookresearch_size_is_inferred_from_the_tensors(kwargs, num_heads, expected):
    reference = tiny_reference(num_heads=num_heads or 6, **kwargs)
    model = load_facebookresearch_dit(reference.state_dict(), num_heads=num_heads)
    assert {k: model.config[k] for k in expected} == expected
    x, t, y = inputs(2, model.config.in_channels, model.config.sample_size, model.config.num_classes)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, class_labels=y).sample, reference(x, t, y), atol=ATOL, rtol=0)


def test_facebookresearch_training_checkpoint_and_safetensors(tmp_path):
    ema = tiny_reference().state_dict()
    raw = {k: v + 1 for k, v in ema.items()}
    torch.save({"model": raw, "ema": ema, "opt": {"param_groups": [{"lr": 1e-4}]},
                "args": argparse.Namespace(model="DiT-XL/2")}, tmp_path / "0100000.pt")
    save_file(ema, tmp_path / "ema.safetensors")
    for path in (tmp_path / "0100000.pt", tmp_path / "ema.safetensors"):
        table = load_facebookresearch_dit(path, num_heads=4).conditioner.label_embedder.embedding_table.weight
        assert torch.equal(table, ema["y_embedder.embedding_table.weight"])


def test_facebookresearch_label_table_without_a_null_row_keeps_every_class(tmp_path, caplog):
    state = tiny_reference().state_dict()  # 10 classes and the null row
    table = state["y_embedder.embedding_table.weight"]
    no_null = {**state, "y_embedder.embedding_table.weight": table[:10]}  # trained without class dropout
    torch.save({"ema": no_null, "args": argparse.Namespace(num_classes=10)}, tmp_path / "0001000.pt")
    with caplog.at_level(logging.WARNING, logger="film_diffusion.convert"):
        model = load_facebookresearch_dit(tmp_path / "0001000.pt", num_heads=4)
    assert "10 classes have no null-class row" in caplog.text
    assert model.config.num_classes == 10  # the last class is not taken for a null class
    ours = model.conditioner.label_embedder.embedding_table.weight
    assert torch.equal(ours[:10], table[:10]) and torch.equal(ours[10], torch.zeros(64))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="film_diffusion.convert"):
        with_null = load_facebookresearch_dit(state, num_heads=4, num_classes=10)  # null row present: silent
        assert with_null.config.num_classes == 10 and not caplog.text
        guessed = load_facebookresearch_dit(state, num_heads=4)  # nothing says how many classes: say so
    assert guessed.config.num_classes == 10
    assert "taking the last of its 11 label rows as the null class" in caplog.text and "num_classes=11" in caplog.text
    with pytest.raises(UserError, match=r"label table has 11 rows, which fits neither 7 classes nor 7 plus a null"):
        load_facebookresearch_dit(state, num_heads=4, num_classes=7)


def test_facebookresearch_bad_inputs_name_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"not a facebookresearch/DiT checkpoint .* such as DiT-XL-2-256.pt"):
        load_facebookresearch_dit(nn.Linear(4, 4).state_dict())
    with pytest.raises(UserError, match=r"looks like a diffusers DiT: use load_diffusers_dit"):
        load_facebookresearch_dit(tiny_diffusers().state_dict())
    state = tiny_reference().state_dict()
    with pytest.raises(UserError, match=r"hidden size 64 is not one of the DiT paper's sizes.*pass num_heads="):
        load_facebookresearch_dit(state)
    with pytest.raises(UserError, match=r"position embedding is not the DiT paper's fixed 2D sine-cosine"):
        load_facebookresearch_dit({**state, "pos_embed": torch.zeros_like(state["pos_embed"])}, num_heads=4)
    del state["blocks.1.mlp.fc1.bias"]
    with pytest.raises(UserError, match=r"lacks 'blocks.1.mlp.fc1.bias'; pass a complete DiT checkpoint"):
        load_facebookresearch_dit(state, num_heads=4)
    torch.save(nn.Linear(4, 4), tmp_path / "module.pt")
    with pytest.raises(UserError, match=r"is not a plain state dict.*save the model's state_dict\(\)"):
        load_facebookresearch_dit(tmp_path / "module.pt")


# -- diffusers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_eps, atol", [
    (1e-6, ATOL),  # the paper's pre-MLP norm epsilon, which our DiT uses: the same computation
    (1e-5, 1e-5),  # diffusers' default for the pre-MLP norm (ours uses the paper's 1e-6): max |diff| ~6e-6
])
def test_diffusers_dit_gives_the_same_output(norm_eps, atol, tmp_path):
    reference = tiny_diffusers(norm_eps)
    reference.save_pretrained(tmp_path / "transformer")  # a pipeline folder, as facebook/DiT-XL-2-256 is
    (tmp_path / "model_index.json").write_text('{"_class_name": "DiTPipeline"}')
    x, t, y = inputs(3, 4, 8, 10)
    for model in (load_diffusers_dit(reference), load_diffusers_dit(tmp_path)):
        assert model.config.learn_sigma and model.config.timestep_freq_shift == 1.0
        with torch.no_grad():
            expected, got = reference(x, t, class_labels=y).sample, model(x, t, class_labels=y).sample
        assert got.shape == expected.shape == (3, 8, 8, 8)
        torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def test_diffusers_blocks_with_different_embedders_are_refused():
    model = tiny_diffusers()
    with torch.no_grad():
        model.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1.0)
    with pytest.raises(UserError, match=r"Block 1's timestep/class embedder .* differs from block 0's"):
        load_diffusers_dit(model)


def test_diffusers_settings_our_dit_cannot_represent_are_refused():
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, num_layers=1, sample_size=4,
                                  num_embeds_ada_norm=3, activation_fn="gelu")
    with pytest.raises(UserError, match=r"activation_fn='gelu' cannot be represented.*'gelu-approximate'"):
        load_diffusers_dit(model)
