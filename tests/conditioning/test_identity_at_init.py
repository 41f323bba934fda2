"""Every conditioning path starts as the identity, and padded or appended tokens go nowhere they should not."""

import pytest
import torch
from factories import CASES, case_id, method_lists, methods_id, noisy_batch, randomize_, text_condition, tiny_model

from film_diffusion.backbones.dit import DiTBlock
from film_diffusion.backbones.unet import AttentionBlock, ResBlock


def record_io(model, block_type):
    """(block, input, output) of every call; a DiT block's output is its tokens (not the joint stream)."""
    records = []
    hooks = [m.register_forward_hook(lambda mod, args, out: records.append(
                 (mod, args[0], out[0] if isinstance(out, tuple) else out)))
             for m in model.modules() if isinstance(m, block_type)]
    return records, hooks


@pytest.mark.parametrize("backbone", ["dit", "dit_ffnified"])
@pytest.mark.parametrize("route", ["native", "with_condition"])
def test_every_adaln_zero_dit_block_is_the_identity_at_init(route, backbone):
    model = tiny_model(backbone, ["adaln_zero"], route)
    records, _ = record_io(model, DiTBlock)
    sample, t = noisy_batch()
    model(sample, t, condition=text_condition())
    assert len(records) == model.config.depth
    for _, block_in, block_out in records:
        assert torch.equal(block_in, block_out)


@pytest.mark.parametrize("backbone", ["dit", "dit_ffnified"])
def test_dit_timestep_path_is_the_identity_at_init_for_every_method(backbone):
    for methods in (["film"], ["cross_attention"], ["film", "cross_attention"]):
        model = tiny_model(backbone, methods)  # native route: the timestep's adaLN-Zero is zero-initialised too
        records, _ = record_io(model, DiTBlock)
        sample, t = noisy_batch()
        model(sample, t, condition=text_condition())
        assert all(torch.equal(i, o) for _, i, o in records), methods


def test_adaln_zero_unet_resblocks_start_with_a_zero_residual_branch():
    model = tiny_model("unet", ["adaln_zero"], "with_condition")
    records, _ = record_io(model, ResBlock)
    sample, t = noisy_batch()
    model(sample, t, condition=text_condition())
    assert len(records) == 2 + 2 + 2 * 2  # down (1 per level), mid (2), up (2 per level)
    for block, block_in, block_out in records:
        assert torch.equal(block.skip(block_in), block_out)
        if block_in.shape == block_out.shape:
            assert torch.equal(block_in, block_out)


@pytest.mark.parametrize("methods", method_lists("unet"), ids=methods_id)
def test_every_unet_block_is_the_identity_at_init_under_the_native_route(methods):
    """ADM's zero-init: a ResBlock starts as its skip projection, an attention block as the identity."""
    model = tiny_model("unet", methods)
    res, _ = record_io(model, ResBlock)
    attn, _ = record_io(model, AttentionBlock)
    sample, t = noisy_batch()
    model(sample, t, condition=text_condition())
    assert len(res) == 8 and len(attn) == 1 + 1 + 2  # down level 1, mid, up level 1
    assert all(torch.equal(block.skip(i), o) for block, i, o in res)
    assert all(torch.equal(i, o) for _, i, o in attn)


def test_unet_keeps_the_conv_of_a_branch_that_adaln_zero_gates_with_a_zero_gate():
    def zeroed_convs(model):
        return [m.conv2.weight.abs().sum() == 0 for m in model.modules() if isinstance(m, ResBlock)]
    assert not any(zeroed_convs(tiny_model("unet", ["adaln_zero"])))
    assert all(zeroed_convs(tiny_model("unet", [{"name": "adaln_zero", "zero_init": False}])))


def test_unet_zero_init_can_opt_out():
    model = tiny_model("unet", ["film"], zero_init=False)
    assert all(m.conv2.weight.abs().sum() > 0 for m in model.modules() if isinstance(m, ResBlock))
    assert all(m.proj_out.weight.abs().sum() > 0 for m in model.modules() if isinstance(m, AttentionBlock))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_parameter_learns_from_the_default_init(case):
    """Every parameter gets a gradient within a few steps: a zero gate times a zero branch never would."""
    model = tiny_model(*case)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sample, t = noisy_batch()
    reached = set()
    for _ in range(6):  # zero-initialised layers wake in turn, from the output backwards
        optimizer.zero_grad()
        model(sample, t, condition=text_condition()).sample.sub(sample).square().mean().backward()
        reached |= {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        optimizer.step()
    assert {name for name, _ in model.named_parameters()} - reached == set()


@pytest.mark.parametrize("gamma", ["delta", "raw"])
@pytest.mark.parametrize("backbone", ["dit", "unet"])
@pytest.mark.parametrize("placement", ["after_norm", "after_residual", "before_block"])
def test_film_leaves_features_unchanged_at_init(backbone, placement, gamma):
    model = tiny_model(backbone, [{"name": "film", "placement": placement, "gamma": gamma}], "with_condition")
    film = model.conditioner.methods["film"]
    assert len(film.sites) > 0
    sample, t = noisy_batch()
    state = model.conditioner(model.t_embedder(t), text_condition())
    for site in film.sites:
        shape = (2, site.channels, 4, 4) if site.layout == "image" else (2, 5, site.channels)
        x = torch.randn(shape)
        assert torch.equal(state.affine(site.name, x), x), site.name


def test_film_raw_gamma_learns_gamma_itself():
    """Raw gamma is emitted as it is (no 1 + delta): its generator's gamma biases are the 1 of the identity."""
    model = tiny_model("dit", [{"name": "film", "gamma": "raw"}], "with_condition")
    film = model.conditioner.methods["film"]
    assert film.gamma_offset == 0.0
    bias = torch.split(film.generator.out.bias, [2 * s.channels for s in film.sites])
    assert all(torch.equal(b, torch.cat([torch.ones(len(b) // 2), torch.zeros(len(b) // 2)])) for b in bias)
    assert film.generator.out.weight.abs().sum() == 0


@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_cross_attention_is_zero_initialised_and_can_opt_out(backbone):
    default = tiny_model(backbone, ["cross_attention"])
    for proj in default.conditioner.methods["cross_attention"].to_out:
        assert proj.weight.abs().sum() == 0 and proj.bias.abs().sum() == 0
    opted_out = tiny_model(backbone, [{"name": "cross_attention", "zero_init": False}])
    assert all(p.weight.abs().sum() > 0 for p in opted_out.conditioner.methods["cross_attention"].to_out)


def test_adaln_zero_option_off_gives_non_identity_blocks():
    model = tiny_model("dit", [{"name": "adaln_zero", "zero_init": False}])
    records, _ = record_io(model, DiTBlock)
    sample, t = noisy_batch()
    model(sample, t, condition=text_condition())
    assert not any(torch.equal(i, o) for _, i, o in records)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_padded_tokens_change_nothing(case):
    """Whatever the method, a padded token's values reach no output; a real token does, where a method reads
    the tokens (FiLM, adaLN and the U-Net's concat read the pooled vector only)."""
    model = randomize_(tiny_model(*case)).eval()
    sample, t = noisy_batch()
    condition = text_condition()
    assert not condition.mask[0, -1]
    changed = text_condition()
    changed.tokens[0, -2:] = torch.randn(2, changed.tokens.shape[-1]) * 100
    with torch.no_grad():
        a = model(sample, t, condition=condition).sample
        b = model(sample, t, condition=changed).sample
        assert torch.equal(a[0], b[0])
        changed.tokens[0, 0] += 1.0
        c = model(sample, t, condition=changed).sample
    reads_tokens = any(m.reads_tokens for m in model.conditioner.methods.values())
    assert reads_tokens == (not torch.allclose(a[0], c[0]))


@pytest.mark.parametrize("backbone", ["dit", "dit_ffnified"])
@pytest.mark.parametrize("route", ["native", "with_condition"])
def test_concat_tokens_never_reach_the_output_grid(route, backbone):
    model = randomize_(tiny_model(backbone, ["concat"], route))
    seen = []
    model.final_layer.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    block_lengths = []
    model.blocks[0].register_forward_hook(lambda mod, args, out: block_lengths.append(args[0].shape[1]))
    sample, t = noisy_batch()
    out = model(sample, t, condition=text_condition()).sample
    patches = model.grid ** 2
    extra = text_condition().tokens.shape[1] + 1 + (route == "with_condition")  # tokens, pooled, timestep
    assert block_lengths == [patches + extra]
    assert seen == [torch.Size([2, patches, 32])]
    assert out.shape == sample.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_a_condition_with_no_real_token_gets_a_zero_cross_attention_update(backbone, dtype):
    model = randomize_(tiny_model(backbone, ["cross_attention"])).to(dtype).eval()
    condition = text_condition()
    condition.mask[1] = False  # a null condition built with every token masked
    updates = []
    sample, t = noisy_batch()
    state = model.conditioner(model.t_embedder(t), condition)
    for site in model.conditioner.methods["cross_attention"].sites:
        x = torch.randn(2, 5, site.channels, dtype=dtype)
        updates.append(state.residual(site.name, x) - x)
    assert all(torch.equal(u[1], torch.zeros_like(u[1])) for u in updates)
    assert all(u[0].abs().sum() > 0 for u in updates)
    with torch.no_grad():
        assert torch.isfinite(model(sample, t, condition=condition).sample).all()
