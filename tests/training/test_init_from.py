"""``train.init_from`` and ``train.trainable``: a model that gains a method starts from its base's outputs, and
``trainable: new`` leaves every base weight bitwise as it was."""

import pytest
import torch
from runs import tiny_config, tiny_run
from safetensors.torch import load_file

from film_diffusion.config import ConfigError
from film_diffusion.training.build import build_denoiser, build_encoder
from film_diffusion.training.init_from import init_from
from film_diffusion.training.trainer import train

BASE_METHOD = {"dit": "adaln_zero", "unet": "film"}
WEIGHTS = "pipeline/denoiser/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module", params=["dit", "unet"])
def base(request, tmp_path_factory):
    """A base trained a few steps (so that no zero-initialised weight is still zero), and its backbone."""
    backbone = request.param
    run = tiny_run(tmp_path_factory.mktemp(f"base-{backbone}") / "run", f"model.backbone={backbone}",
                   f"model.conditioning=[{BASE_METHOD[backbone]}]", "train.max_steps=4", "train.lr=0.01")
    return run, backbone


def grown_config(base, tmp_path, *overrides):
    run, backbone = base
    return tiny_config(tmp_path / "grown", f"model.backbone={backbone}",
                       f"model.conditioning=[{BASE_METHOD[backbone]},cross_attention]", f"train.init_from={run}",
                       *overrides)


def built_model(config):
    encoder = build_encoder(config.condition)
    model = build_denoiser(config, 3, config.data.resolution, encoder.token_dim, encoder.pooled_dim,
                           encoder.max_length)
    return model, encoder


def test_a_model_that_gains_cross_attention_starts_from_its_bases_outputs(base, tmp_path):
    config = grown_config(base, tmp_path)
    model, encoder = built_model(config)
    added = init_from(model, config.train.init_from)
    assert added and all(name.startswith("conditioner.methods.cross_attention.") for name in added)
    base_model, _ = built_model(tiny_config(tmp_path / "b", f"model.backbone={base[1]}",
                                            f"model.conditioning=[{BASE_METHOD[base[1]]}]"))
    base_model.load_state_dict(load_file(base[0] / WEIGHTS))
    condition = encoder.encode(["a large red circle at the top left", "a small blue star"])
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)), torch.tensor([50, 700])
    with torch.no_grad():
        expected = base_model.eval()(x, t, condition=condition).sample
        got = model.eval()(x, t, condition=condition).sample
    assert expected.abs().max() > 1e-2  # the base draws something: the equality is not of zeros
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_trainable_new_changes_only_what_the_config_added(base, tmp_path):
    run = train(grown_config(base, tmp_path, "train.trainable=new", "train.max_steps=3", "train.lr=0.01"))
    before, after = load_file(base[0] / WEIGHTS), load_file(run / WEIGHTS)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    added = [name for name in after if name not in before]
    assert added and any(after[name].abs().max() > 0 for name in added if "to_out" in name)


@pytest.mark.parametrize("overrides, message", [
    (["model.conditioning=[{name: cross_attention, zero_init: false}]"], "has weights this config's model lacks"),
    (["model.conditioning=[BASE, {name: cross_attention, zero_init: false}]"], "does not start from the base's"),
    (["model.dit.hidden_size=64", "model.unet.block_out_channels=[32,64]"], "give the model the base's sizes"),
    (["model.conditioning=[BASE]", "train.trainable=new"], "adds no weight to the base"),
    (["train.init_from=null", "train.trainable=new"], "needs train.init_from"),
    (["train.init_from=/nowhere"], "does not exist"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_what_a_base_cannot_fill_is_one_sentence_and_writes_nothing(base, tmp_path, overrides, message):
    overrides = [o.replace("BASE", BASE_METHOD[base[1]]) for o in overrides]
    with pytest.raises(ConfigError, match=message):
        train(grown_config(base, tmp_path, *overrides))
    assert not (tmp_path / "grown").exists()


def test_a_base_of_the_other_backbone_is_refused(base, tmp_path):
    other = "unet" if base[1] == "dit" else "dit"
    config = tiny_config(tmp_path / "grown", f"model.backbone={other}", f"train.init_from={base[0]}")
    with pytest.raises(ConfigError, match="set model.backbone to the base's"):
        train(config)
