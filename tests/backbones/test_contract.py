"""The backbone/method contract, the errors users see, and the DiT paper's model sizes."""

import re
from pathlib import Path

import pytest
import torch
from factories import noisy_batch, randomize_, text_condition, tiny_model

import film_diffusion
from film_diffusion import METHODS, DiT, UNet, dit_from_preset
from film_diffusion.errors import UserError

BACKBONE_FILES = sorted((Path(film_diffusion.__file__).parent / "backbones").glob("*.py"))


@pytest.mark.parametrize("path", BACKBONE_FILES, ids=lambda p: p.name)
def test_backbones_never_branch_on_a_method(path):
    source = path.read_text()
    names = "|".join(METHODS)
    classes = "|".join(cls.__name__ for cls in METHODS.values())
    assert not re.search(rf"(==|!=|\bin\b)\s*[\[\(\{{]?\s*[\"']({names})[\"']", source)
    assert not re.search(rf"isinstance\([^)]*\b({classes})\b", source)
    assert not re.search(r"film_diffusion\.conditioning\.(film|adaln_zero|cross_attention|concat)\b", source)


def test_unknown_method_names_the_choices():
    with pytest.raises(UserError, match=r"Unknown conditioning method 'flim'; choose from adaln_single, adaln_zero, "):
        tiny_model("dit", ["flim"])


@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_missing_token_dim_names_the_fix(backbone):
    with pytest.raises(UserError, match=r"'cross_attention' needs condition tokens: set cond_token_dim"):
        tiny_model(backbone, ["cross_attention"], cond_token_dim=None, cond_pooled_dim=None)


def test_missing_pooled_dim_names_the_fix():
    with pytest.raises(UserError, match=r"'film' needs a pooled condition: set cond_pooled_dim"):
        tiny_model("dit", ["film"], cond_pooled_dim=None)


@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_cross_attention_heads_that_do_not_divide_the_width_are_refused_at_build_time(backbone):
    with pytest.raises(UserError, match=r"cross_attention num_heads=5 does not divide the width (32|16) of site "
                                        r"'.*context'; choose a num_heads that divides every attention width"):
        tiny_model(backbone, [{"name": "cross_attention", "num_heads": 5}])


def test_sample_size_must_be_divisible_by_patch_size():
    with pytest.raises(UserError, match=r"sample_size=30 is not divisible by patch_size=4; choose a sample_size"):
        DiT(sample_size=30, patch_size=4)


def test_other_config_errors():
    with pytest.raises(UserError, match="Unknown timestep_route 'sideways'"):
        tiny_model("dit", ["film"], "sideways")
    with pytest.raises(UserError, match="listed twice"):
        tiny_model("dit", ["film", "film"])
    with pytest.raises(UserError, match=r"Bad option 'gama' for conditioning method 'film'; its options are: gamma"):
        tiny_model("dit", [{"name": "film", "gama": "raw"}])
    with pytest.raises(UserError, match="placement='inside' is unknown"):
        tiny_model("dit", [{"name": "film", "placement": "inside"}])
    with pytest.raises(UserError, match="needs at least one conditioning method"):
        tiny_model("dit", None, "with_condition")
    with pytest.raises(UserError, match="attention_levels \\[3\\] are out of range"):
        UNet(block_out_channels=(32, 64), attention_levels=(3,))
    with pytest.raises(UserError, match="num_classes is set but no listed method reads a pooled condition"):
        tiny_model("dit", ["cross_attention"], num_classes=3)


def test_missing_condition_at_call_time_names_it():
    model = tiny_model("dit", ["cross_attention"])
    sample, t = noisy_batch()
    with pytest.raises(ValueError, match="needs condition tokens, but the call gave none"):
        model(sample, t)
    with pytest.raises(ValueError, match="class_labels were passed to a model built without num_classes"):
        model(sample, t, condition=text_condition(), class_labels=torch.tensor([0, 1]))


def test_unconditional_model_takes_only_the_timestep():
    model = tiny_model("unet", None, cond_token_dim=None, cond_pooled_dim=None)
    assert list(model.conditioner.methods) == ["timestep"]
    sample, t = noisy_batch()
    assert model(sample, t).sample.shape == sample.shape


@pytest.mark.parametrize(("name", "paper_millions"), [("DiT-S/2", 33.0), ("DiT-B/2", 130.0), ("DiT-L/2", 458.0),
                                                      ("DiT-XL/2", 675.0)])
def test_dit_presets_match_the_paper(name, paper_millions):
    with torch.device("meta"):
        model = dit_from_preset(name, sample_size=32, in_channels=4, num_classes=1000, conditioning="adaln_zero",
                                learn_sigma=True)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - paper_millions) / paper_millions < 0.01, millions


def test_unknown_preset():
    with pytest.raises(UserError, match="Unknown DiT preset 'DiT-M/2'"):
        dit_from_preset("DiT-M/2")


@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_scalar_and_batched_timesteps_agree(backbone):
    model = tiny_model(backbone, ["film"]).eval()
    sample, _ = noisy_batch()
    with torch.no_grad():
        a = model(sample, 250, condition=text_condition()).sample
        b = model(sample, torch.tensor([250, 250]), condition=text_condition()).sample
    assert torch.equal(a, b)


def test_channels_last_unet_gives_the_same_output():
    model = randomize_(tiny_model("unet", ["film", "cross_attention"])).eval()
    sample, t = noisy_batch()
    with torch.no_grad():
        expected = model(sample, t, condition=text_condition()).sample
        model.to(memory_format=torch.channels_last)
        got = model(sample.to(memory_format=torch.channels_last), t, condition=text_condition()).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("methods", [["adaln_zero", "cross_attention"], ["adaln_zero", "joint_attention"]])
def test_dit_residual_stream_keeps_the_autocast_dtype_and_matches_float32(methods):
    """Under bf16 autocast the blocks carry bf16 (as diffusers' DiT does), in contiguous tokens (no strided
    copies in the layer norms), and so does a joint method's caption stream; the result stays close to fp32."""
    model = randomize_(tiny_model("dit", methods))
    sample, t = noisy_batch()
    dtypes: list[torch.dtype] = []
    contiguous: list[bool] = []
    hooks = [block.register_forward_hook(lambda m, i, out: dtypes.extend(x.dtype for x in out if x is not None))
             for block in model.blocks]
    hooks += [block.register_forward_pre_hook(lambda m, args: contiguous.append(args[0].is_contiguous()))
              for block in model.blocks]
    with torch.autocast("cpu", torch.bfloat16):
        low = model(sample, t, condition=text_condition()).sample
    for hook in hooks:
        hook.remove()
    streams = len(model.blocks) - 1 if "joint_attention" in methods else 0  # the last block ends the stream
    assert dtypes == [torch.bfloat16] * (len(model.blocks) + streams)
    assert all(contiguous) and len(contiguous) == len(model.blocks)
    full = model(sample, t, condition=text_condition()).sample
    assert full.dtype == torch.float32
    torch.testing.assert_close(low.float(), full, atol=0.05, rtol=0.05)


def test_unet_attention_position_embedding_tells_tokens_apart_and_round_trips(tmp_path):
    """With ``attention_pos_embed`` the attention blocks' tokens carry the DiT's sine-cosine embedding: a block
    fed a constant map (every token alike without it) gives tokens that differ by position; the U-Net still starts
    as the identity per block, and a saved model loads with the option on."""
    from film_diffusion.backbones.unet import AttentionBlock, UNet

    plain = randomize_(tiny_model("unet", ["cross_attention"]))
    placed = randomize_(tiny_model("unet", ["cross_attention"], attention_pos_embed=True))
    state = placed.conditioner(placed.t_embedder(torch.tensor([5, 5])), text_condition())
    block = next(m for m in placed.modules() if isinstance(m, AttentionBlock))
    flat = torch.ones(2, block.proj_in.in_features, 4, 4)
    out = block(flat, state)
    assert not torch.allclose(out[..., 0, 0], out[..., 3, 3])
    plain_block = next(m for m in plain.modules() if isinstance(m, AttentionBlock))
    plain_state = plain.conditioner(plain.t_embedder(torch.tensor([5, 5])), text_condition())
    plain_out = plain_block(flat, plain_state)
    torch.testing.assert_close(plain_out[..., 0, 0], plain_out[..., 3, 3])
    with pytest.raises(ValueError, match="attention_pos_embed needs square feature maps, got 4x2"):
        block(torch.ones(2, block.proj_in.in_features, 4, 2), state)
    placed.save_pretrained(tmp_path)
    loaded = UNet.from_pretrained(tmp_path)
    sample, t = noisy_batch()
    with torch.no_grad():
        assert loaded.config.attention_pos_embed
        assert torch.equal(loaded(sample, t, condition=text_condition()).sample,
                           placed(sample, t, condition=text_condition()).sample)


@pytest.mark.parametrize("conditioning", [["film"], ["concat"]])
def test_unet_coord_channels_tell_pixels_apart_and_round_trip(tmp_path, conditioning):
    """With ``coord_channels`` the first convolution reads each pixel's x and y beside the image (and beside
    concat's channels): on a constant image two interior pixels differ, where without the option they are equal;
    a saved model loads with the option on and gives the same output."""
    from film_diffusion.backbones.unet import UNet, pixel_coordinates

    grid = pixel_coordinates(torch.zeros(2, 4, 3, 5))
    assert grid.shape == (2, 2, 3, 5)
    assert grid[0, 0, 1].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0] and grid[1, 1, :, 2].tolist() == [-1.0, 0.0, 1.0]
    plain = randomize_(tiny_model("unet", conditioning))
    placed = randomize_(tiny_model("unet", conditioning, coord_channels=True))
    assert placed.conv_in.in_channels == plain.conv_in.in_channels + 2
    sample, t = noisy_batch()
    flat = torch.ones_like(sample)
    with torch.no_grad():
        seen = {}
        for name, model in (("plain", plain), ("placed", placed)):
            first = {}
            hook = model.conv_in.register_forward_hook(lambda _m, _i, out, first=first: first.update(out=out))
            model(flat, t, condition=text_condition())
            hook.remove()
            seen[name] = first["out"]
        torch.testing.assert_close(seen["plain"][..., 2, 2], seen["plain"][..., 5, 5])
        assert not torch.allclose(seen["placed"][..., 2, 2], seen["placed"][..., 5, 5])
        placed.save_pretrained(tmp_path)
        loaded = UNet.from_pretrained(tmp_path)
        assert loaded.config.coord_channels
        assert torch.equal(loaded(sample, t, condition=text_condition()).sample,
                           placed(sample, t, condition=text_condition()).sample)


def test_dit_conv_head_starts_at_zero_convolves_across_patch_borders_and_round_trips(tmp_path):
    """``conv_head`` keeps the DiT's output at 0 at init; once trained, its output is the plain head's image
    through one 3x3 convolution (so a pixel sees the next patch); a saved model loads with it and gives the same
    output."""
    sample, t = noisy_batch()
    model = tiny_model("dit", ["film"], conv_head=True)
    with torch.no_grad():
        assert torch.count_nonzero(model(sample, t, condition=text_condition()).sample) == 0
    randomize_(model)
    conv, model.conv_out = model.conv_out, None
    with torch.no_grad():
        plain = model(sample, t, condition=text_condition()).sample
        model.conv_out = conv
        out = model(sample, t, condition=text_condition()).sample
        torch.testing.assert_close(out, torch.nn.functional.conv2d(plain, conv.weight, conv.bias, padding=1))
        model.save_pretrained(tmp_path)
        loaded = DiT.from_pretrained(tmp_path)
        assert loaded.config.conv_head and torch.equal(loaded(sample, t, condition=text_condition()).sample, out)
