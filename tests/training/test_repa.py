"""Representation alignment (REPA): the block it reads, where its gradient goes, and a run with it that resumes
exactly and leaves the pipeline as a run without it would."""

import pytest
import torch
from factories import noisy_batch, randomize_, text_condition, tiny_model
from runs import metric_rows, tiny_run
from safetensors.torch import load_file
from test_resume import RUN, Killed, assert_equal, kill_after_checkpoint, states

from film_diffusion.config import ConfigError
from film_diffusion.training.repa import Alignment, RepresentationAlignment, aligned_block


def test_the_default_block_is_an_early_one_and_a_wrong_name_lists_the_blocks():
    assert aligned_block(tiny_model("unet", ["film"]), None)[0] == "down.1.res.0"  # first below full resolution
    dit = tiny_model("dit", ["film"])
    assert aligned_block(dit, None)[0] == "blocks.0"  # a third of 2 blocks, rounded down to the first
    with pytest.raises(ConfigError, match=r"'train.repa_block' is 'blocks.9', which names no block of this model; "
                                          r"choose one of blocks.0, blocks.1\."):
        aligned_block(dit, "blocks.9")


@pytest.mark.parametrize("backbone, block", [("unet", "down.1.res.0"), ("dit", "blocks.0")])
def test_the_alignment_loss_reaches_the_block_and_what_feeds_it_only(backbone, block):
    """The tap keeps the named block's output only inside ``active()``; the loss's gradient reaches the projector
    and every weight up to that block, and no block after it."""
    model = randomize_(tiny_model(backbone, ["film"]))
    repa = RepresentationAlignment(model, block, torch.device("cpu"))
    sample, t = noisy_batch()
    model(sample, t, condition=text_condition())
    with pytest.raises(RuntimeError, match="did not run"):
        repa.tap.take()  # nothing kept outside active()
    with repa.tap.active():
        model(sample, t, condition=text_condition())
    loss = repa.loss(sample[:, :3].clamp(-1, 1))
    loss.backward()
    assert 0 < loss.item() < 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in repa.alignment.parameters())
    reached = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(name.startswith(block + ".") for name in reached)
    later = "mid." if backbone == "unet" else "blocks.1."
    assert not any(name.startswith(later) for name in reached)


def test_in_context_tokens_after_the_image_tokens_are_not_aligned():
    site = aligned_block(tiny_model("dit", ["film"]), None)[2]
    alignment = Alignment(site, num_image_tokens=16, target_dim=8, hidden=16)
    features = torch.randn(2, 16 + 5, site.channels)
    features[:, 16:] = float("nan")  # caption tokens appended by concat
    assert torch.isfinite(alignment(features, torch.randn(2, 8, 3, 3)))


@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_a_run_with_repa_resumes_exactly_and_its_pipeline_holds_the_denoiser_only(tmp_path, monkeypatch, backbone):
    repa = [f"model.backbone={backbone}", "train.repa_weight=0.5"]
    whole = tiny_run(tmp_path / "whole", *RUN, *repa)
    kill_after_checkpoint(monkeypatch, 3)
    with pytest.raises(Killed):
        tiny_run(tmp_path / "killed", *RUN, *repa)
    monkeypatch.undo()
    resumed = tiny_run(tmp_path / "killed", *RUN, *repa, resume="latest")
    assert_equal(states(whole), states(resumed))
    checkpoint = resumed / "checkpoints" / "checkpoint-6"
    assert_equal(load_file(checkpoint / "model_1.safetensors"), load_file(whole / "checkpoints" / "checkpoint-6"
                                                                          / "model_1.safetensors"))
    assert all(k.startswith("projector.") for k in load_file(checkpoint / "model_1.safetensors"))
    assert all(0 < row["repa_loss"] < 2 for row in metric_rows(whole))
    plain = tiny_run(tmp_path / "plain", *RUN, f"model.backbone={backbone}")
    pipeline = "pipeline/denoiser/diffusion_pytorch_model.safetensors"
    assert load_file(plain / pipeline).keys() == load_file(whole / pipeline).keys()
    assert not torch.equal(*(load_file(run / pipeline)["conv_in.weight" if backbone == "unet"
                                                       else "x_embedder.proj.weight"] for run in (plain, whole)))
