"""Latent training, each objective and class labels train a few steps and sample through the pipeline."""

import contextlib
import json

import pytest
import torch
from runs import tiny_run

from film_diffusion.errors import UserError
from film_diffusion.pipelines import FilmDiffusionPipeline
from film_diffusion.training import sharding, trainer


def sample(run, **inputs) -> torch.Tensor:
    pipe = FilmDiffusionPipeline.from_pretrained(run / "pipeline")
    return pipe(**inputs, num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("objective, scheduler", [("epsilon", "DDIMScheduler"), ("v", "DDIMScheduler"),
                                                  ("flow", "FlowMatchEulerDiscreteScheduler")])
def test_each_objective_trains_and_samples_with_its_scheduler(objective, scheduler, tmp_path):
    run = tiny_run(tmp_path / "run", "train.max_steps=3", f"objective.prediction={objective}")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)
    config = json.loads((run / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == scheduler
    if objective != "flow":
        assert config["prediction_type"] == {"epsilon": "epsilon", "v": "v_prediction"}[objective]
    images = sample(run, prompt=["a large red circle at the top left"])
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_latent_training_with_a_local_vae(tmp_path, tiny_vae_folder):
    run = tiny_run(tmp_path / "run", "train.max_steps=2", f"vae.name_or_path={tiny_vae_folder}")
    pipe = FilmDiffusionPipeline.from_pretrained(run / "pipeline")
    assert pipe.vae is not None and pipe.denoiser.config.in_channels == 4 and pipe.denoiser.config.sample_size == 8
    assert pipe.scheduler.config.clip_sample is False  # latents are not clipped to [-1, 1]
    assert sample(run, prompt="a small blue star").shape == (1, 3, 16, 16)


def test_class_labels_and_learned_sigma_train_and_sample(tmp_path):
    run = tiny_run(tmp_path / "run", "train.max_steps=2", "condition.source=class_labels", "condition.num_classes=32",
                   "model.conditioning=[adaln_zero]", "model.learn_sigma=true")
    pipe = FilmDiffusionPipeline.from_pretrained(run / "pipeline")
    assert pipe.text_encoder is None and pipe.denoiser.null_class_label == 32
    assert sample(run, class_labels=[0, 31]).shape == (2, 3, 16, 16)


def test_unet_with_a_transformers_clip_and_the_zeros_null(tmp_path, tiny_transformers_clip):
    run = tiny_run(tmp_path / "run", "train.max_steps=2", "model.backbone=unet", "condition.source=transformers",
                   f"condition.name={tiny_transformers_clip}", "condition.max_length=16", "train.null_condition=zeros",
                   "model.conditioning=[film, cross_attention]")
    pipe = FilmDiffusionPipeline.from_pretrained(run / "pipeline")
    assert pipe.config.null_condition == "zeros" and pipe.text_encoder.max_length == 16
    assert sample(run, prompt="a green square").shape == (1, 3, 16, 16)


def test_sample_grids_and_evaluation_use_the_ema_and_put_the_training_weights_back(tmp_path, monkeypatch):
    swaps = []
    swap = sharding.ema_weights

    @contextlib.contextmanager
    def spy(ema, model):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with swap(ema, model):
            inside = [p.detach().clone() for p in model.parameters()]
            yield
        after = model.state_dict()
        swaps.append((before, after, inside, [s.clone() for s in ema.shadow_params], model.training))

    monkeypatch.setattr(sharding, "ema_weights", spy)  # grids, evaluation and the final pipeline
    run = tiny_run(tmp_path / "run", "train.max_steps=2", "train.sample_every=2", "train.eval_every=2",
                   "train.ema_decay=0.5", "data.resolution=32", "eval.scenes=4")
    assert (run / "samples" / "step-000002.png").is_file()
    assert len(swaps) == 3  # the sample grid, the evaluation, the final pipeline
    for before, after, inside, shadow, training in swaps[:2]:
        assert all(torch.equal(before[k], after[k]) for k in before)  # the training weights, exactly
        assert all(torch.equal(p, s) for p, s in zip(inside, shadow, strict=True))  # the EMA's inside
        assert any(not torch.equal(p, before[k]) for p, k in zip(inside, before, strict=False))
        assert training


def test_bf16_autocast_trains(tmp_path):
    run = tiny_run(tmp_path / "run", "train.max_steps=2", "train.mixed_precision=bf16")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    real = trainer.diffusion_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(trainer, "diffusion_loss", poisoned)
    with pytest.raises(UserError, match="The loss became nan at step 4; the run stopped"):
        tiny_run(tmp_path / "run", "train.max_steps=6", "train.checkpoint_every=2")
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2"] and not (tmp_path / "run" / "pipeline").exists()


def test_pre_encoded_captions_are_read_from_their_file(tmp_path, monkeypatch):
    from film_diffusion.data.shapes import ShapesDataset
    from film_diffusion.encoders import builtin_clip, save_embeddings

    scenes = ShapesDataset(16, "train", 0, max_objects=1, length=24, templates=["full"])
    file = save_embeddings(builtin_clip(), [scenes.scene(i)[1] for i in range(24)], tmp_path / "captions.safetensors")
    encoded = []
    real_encode = type(builtin_clip())._encode
    monkeypatch.setattr(type(builtin_clip()), "_encode", lambda self, captions: encoded.append(captions) or
                        real_encode(self, captions))
    tiny_run(tmp_path / "run", "train.max_steps=2", f"condition.embeddings={file}", "train.caption_dropout=0")
    # only the null caption was encoded (by the cache in a padded batch, and for the null condition); the rest
    # came from the file
    assert encoded and all(set(batch) == {""} for batch in encoded)


@pytest.mark.parametrize("source", ["text", "labels"])
def test_precomputed_latents_train_as_encoding_each_step_does(source, tmp_path, tiny_vae_folder):
    labels = ["condition.source=class_labels", "condition.num_classes=32", "model.conditioning=[adaln_zero]"]
    common = ["train.max_steps=3", f"vae.name_or_path={tiny_vae_folder}", *(labels if source == "labels" else [])]
    live = tiny_run(tmp_path / "live", *common)
    stored = tiny_run(tmp_path / "stored", *common, "vae.precompute=true")
    assert (stored / "latents.safetensors").is_file() and not (live / "latents.safetensors").exists()

    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    # The same posterior, the same draws: only the VAE's batch size (24 images at once, or 4) differs.
    assert losses(stored) == pytest.approx(losses(live), rel=1e-4)
    with pytest.raises(UserError, match="'vae.precompute' needs vae.name_or_path and data without random"):
        tiny_run(tmp_path / "bad", *common, "vae.precompute=true", "data.random_flip=true")


def test_the_ffnified_dit_trains_and_its_fused_pipeline_samples_the_same(tmp_path):
    run = tiny_run(tmp_path / "run", "train.max_steps=2", "model.token_mixer=ffnified", "model.mixer_kernel_size=5")
    pipe = FilmDiffusionPipeline.from_pretrained(run / "pipeline")
    assert pipe.denoiser.config.token_mixer == "ffnified" and not pipe.denoiser.config.mixer_fused

    def images() -> torch.Tensor:
        return pipe(prompt="a small blue star", num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    before = images()
    pipe.denoiser.fuse()
    torch.testing.assert_close(images(), before, rtol=0, atol=1e-5)
