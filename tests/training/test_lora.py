"""``train.trainable: lora``: the adapter is small, the base weights stay bitwise the base's, a fresh pipeline with the
adapter loaded samples the run's images, fusing keeps them and unloading gives the base's back."""

import json

import pytest
import torch
from runs import tiny_config, tiny_run
from safetensors.torch import load_file

from film_diffusion.config import ConfigError
from film_diffusion.errors import UserError
from film_diffusion.pipelines import FilmDiffusionPipeline
from film_diffusion.training.trainer import train

WEIGHTS = "denoiser/diffusion_pytorch_model.safetensors"
PROMPTS = ["a large red circle at the top left", "a small blue star"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A DiT base (wider, so that rank-2 adapters are a small share of it) and a LoRA run from it."""
    root = tmp_path_factory.mktemp("lora")
    size = ["model.dit.hidden_size=64", "model.conditioning=[adaln_zero]"]
    base = tiny_run(root / "base", *size, "train.max_steps=3", "train.lr=0.01")
    lora = tiny_run(root / "lora", *size, f"train.init_from={base}", "train.trainable=lora", "train.lora_rank=2",
                    "train.max_steps=3", "train.lr=0.01")
    return base, lora


def sample(pipe):
    return pipe(prompt=PROMPTS, num_inference_steps=3, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


def test_the_adapter_is_small_and_the_base_weights_are_unchanged(runs):
    base, lora = runs
    adapter = lora / "pipeline" / "pytorch_lora_weights.safetensors"
    assert adapter.stat().st_size < 0.1 * (base / "pipeline" / WEIGHTS).stat().st_size
    assert all(".lora_" in name for name in load_file(adapter))
    before, after = load_file(base / "pipeline" / WEIGHTS), load_file(lora / "pipeline" / WEIGHTS)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    record = json.loads((lora / "pipeline" / "lora.json").read_text())
    assert record["base"] == str(base) and record["rank"] == 2
    assert any(tensor.abs().max() > 0 for name, tensor in load_file(adapter).items() if "lora_B" in name)


def test_a_fresh_pipeline_with_the_adapter_samples_the_runs_images(runs):
    base, lora = runs
    run_images = sample(FilmDiffusionPipeline.from_pretrained(lora / "pipeline"))  # loads its adapter itself
    pipe = FilmDiffusionPipeline.from_pretrained(base / "pipeline")
    base_images = sample(pipe)
    pipe.load_lora_weights(lora / "pipeline")
    assert torch.equal(sample(pipe), run_images)
    assert (run_images - base_images).abs().max() > 1e-3  # the adapter changes what the model draws
    pipe.fuse_lora()
    torch.testing.assert_close(sample(pipe), run_images, atol=1e-5, rtol=0)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    torch.testing.assert_close(sample(pipe), base_images, atol=1e-6, rtol=0)


def test_an_adapter_that_is_missing_or_for_another_model_is_one_sentence(runs, tmp_path):
    base, lora = runs
    pipe = FilmDiffusionPipeline.from_pretrained(base / "pipeline")
    with pytest.raises(UserError, match="No LoRA adapter at"):
        pipe.load_lora_weights(tmp_path)
    narrow = FilmDiffusionPipeline.from_pretrained(base / "pipeline")
    narrow.register_modules(denoiser=type(narrow.denoiser).from_config({**narrow.denoiser.config, "hidden_size": 32}))
    images = sample(narrow)
    with pytest.raises(UserError, match="it must be one trained on this model"):
        narrow.load_lora_weights(lora / "pipeline")
    assert torch.equal(sample(narrow), images)  # nothing of the failed adapter is left in the model
    assert not getattr(narrow.denoiser, "peft_config", {})


@pytest.mark.parametrize("overrides, message", [
    (["train.lora_targets=[no_such_layer]"], "names no module of this model"),
    (["train.lora_rank=0"], "need a rank of at least 1"),
    (["train.init_from=null"], "'lora', which needs train.init_from"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_wrong_lora_config_is_one_sentence_and_writes_nothing(runs, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(tiny_config(tmp_path / "run", "model.dit.hidden_size=64", "model.conditioning=[adaln_zero]",
                          f"train.init_from={runs[0]}", "train.trainable=lora", *overrides))
    assert not (tmp_path / "run").exists()
