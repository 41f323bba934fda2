"""The FFNified token mixer: its grid layout, its re-parameterisation for sampling, and its errors.
(The method sweep, identity-at-init, precision and checkpointing tests run it as backbone ``dit_ffnified``.)"""

import pytest
import torch
from factories import method_lists, methods_id, noisy_batch, randomize_, text_condition, tiny_model

from film_diffusion import DiT
from film_diffusion.backbones.token_mixers import FFNifiedMixer, RepDepthwiseConv
from film_diffusion.errors import UserError


@pytest.mark.parametrize("methods", method_lists("dit_ffnified"), ids=methods_id)
def test_fused_model_gives_the_unfused_outputs_with_fewer_parameters(methods, tmp_path):
    model = randomize_(tiny_model("dit_ffnified", methods)).eval()
    sample, t = noisy_batch()
    with torch.no_grad():
        before = model(sample, t, condition=text_condition()).sample
        count = sum(p.numel() for p in model.parameters())
        assert model.fuse() is model
        after = model(sample, t, condition=text_condition()).sample
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert model.config.mixer_fused
    mixers = [m for m in model.modules() if isinstance(m, FFNifiedMixer)]
    assert len(mixers) == model.config.depth
    assert all(m.layer_scale is None and m.key_conv.small is None and m.value_conv.small is None for m in mixers)
    assert sum(p.numel() for p in model.parameters()) < count

    rebuilt = DiT.from_config(model.config)  # what EMAModel(model_cls=DiT, model_config=...) does
    assert rebuilt.config.mixer_fused and rebuilt.state_dict().keys() == model.state_dict().keys()
    model.save_pretrained(tmp_path)  # the fused form loads as itself
    loaded = DiT.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(sample, t, condition=text_condition()).sample, after)


def test_fusing_twice_and_fusing_attention_change_nothing():
    sample, t = noisy_batch()
    for backbone in ("dit_ffnified", "dit"):
        model = randomize_(tiny_model(backbone, ["film"])).eval()
        with torch.no_grad():
            once = model.fuse()(sample, t, condition=text_condition()).sample
            twice = model.fuse()(sample, t, condition=text_condition()).sample
        assert torch.equal(once, twice)
    assert not tiny_model("dit", ["film"]).fuse().config.mixer_fused


def test_fused_model_is_as_close_to_float32_as_the_unfused_one_under_bf16_autocast():
    model = randomize_(tiny_model("dit_ffnified", ["adaln_zero", "cross_attention"])).eval()
    sample, t = noisy_batch()

    def run(autocast: bool) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return model(sample, t, condition=text_condition()).sample.float()

    reference, unfused = run(False), run(True)
    model.fuse()  # outside autocast: autocast caches its casts of the weights until the region ends
    fused = run(True)

    def error(out: torch.Tensor) -> float:
        return ((out - reference).norm() / reference.norm()).item()

    assert error(unfused) < 0.02 and error(fused) < 1.5 * error(unfused)


def test_a_token_reaches_only_the_cells_its_kernels_cover_on_the_row_major_grid():
    mixer = randomize_(FFNifiedMixer(dim=8, grid=8, kernel_size=3)).eval()
    x = torch.randn(1, 64, 8)
    moved = x.clone()
    moved[0, 0 * 8 + 5] += 1.0  # row 0, column 5
    with torch.no_grad():
        changed = (mixer(moved) - mixer(x)).abs().sum(-1).view(8, 8) > 0
    # two 3x3 convolutions: rows 0-2, columns 3-7 (a column-major layout would give rows 3-7, columns 0-2)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:3, 3:8] = True
    assert torch.equal(changed, expected)


def test_in_context_tokens_reach_the_grid_through_their_mean_and_padding_is_ignored():
    mixer = randomize_(FFNifiedMixer(dim=8, grid=2, kernel_size=3)).eval()
    grid, extra = torch.randn(1, 4, 8), torch.randn(1, 3, 8)
    mask = torch.tensor([[True] * 4 + [True, True, False]])
    with torch.no_grad():
        out = mixer(torch.cat([grid, extra], 1), mask)
        swapped = mixer(torch.cat([grid, extra[:, [1, 0, 2]]], 1), mask)  # order of real tokens is irrelevant
        padded = extra.clone()
        padded[0, 2] = 100.0
        with_padding = mixer(torch.cat([grid, padded], 1), mask)
        alone = mixer(grid)
    assert torch.equal(out[:, 4:], torch.zeros(1, 3, 8))  # in-context tokens change only in the channel mixer
    torch.testing.assert_close(swapped, out)
    assert torch.equal(with_padding, out)
    assert not torch.allclose(alone, out[:, :4])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"token_mixer": "convolution"}, "Unknown token_mixer 'convolution'; choose one of attention, ffnified"),
    ({"token_mixer": "ffnified", "mixer_kernel_size": 4}, "mixer_kernel_size=4 must be odd and positive"),
])
def test_bad_mixer_options_are_refused_in_one_sentence(kwargs, message):
    with pytest.raises(UserError, match=message):
        DiT(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=4, num_classes=3,
            conditioning="adaln_zero", **kwargs)


def two_branch(conv: RepDepthwiseConv, x: torch.Tensor) -> torch.Tensor:
    """The plain form: the k x k and the 3x3 convolutions run apart and summed, in autocast's own dtype."""
    return conv.conv(x) + conv.small(x)


@pytest.mark.parametrize("kernel_size", [5, 7])
def test_the_folded_kernel_trains_as_the_two_branches(kernel_size):
    conv = randomize_(RepDepthwiseConv(6, kernel_size))
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    grads = []
    for forward in (conv, lambda x: two_branch(conv, x)):
        out = forward(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), x.grad.clone(), *(p.grad.clone() for p in conv.parameters())))
        x.grad = None
        conv.zero_grad(set_to_none=True)
    for fast, plain in zip(*grads, strict=True):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_depthwise_under_cpu_autocast_is_at_least_as_close_to_float64(dtype):
    conv = randomize_(RepDepthwiseConv(16, 7))
    x = torch.randn(4, 16, 16, 16)
    reference = two_branch(conv.double(), x.double())
    conv.float()
    with torch.autocast("cpu", dtype):
        fast, plain = conv(x), two_branch(conv, x)
        again = conv(x)  # repeated use: the same
    assert fast.dtype == plain.dtype == dtype and torch.equal(fast, again)

    def error(out):
        return ((out.double() - reference).norm() / reference.norm()).item()

    assert error(fast) <= error(plain) * 1.05 + 1e-7, (error(fast), error(plain))
    torch.testing.assert_close(fast.float(), plain.float(), rtol=0.02, atol=0.05)
    with torch.no_grad():  # bf16 weights and inputs without autocast take the same path, and the fused kernel too
        conv_low = RepDepthwiseConv(16, 7)
        conv_low.load_state_dict(conv.state_dict())
        conv_low.to(dtype)
        low = conv_low(x.to(dtype))
        conv_low.fuse()
        assert low.dtype == dtype and torch.equal(conv_low(x.to(dtype)), low)
