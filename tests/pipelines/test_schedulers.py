"""Every named scheduler samples; v-prediction and flow models sample with their own schedulers."""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from tiny_pipelines import SIZE, class_denoiser

from film_diffusion.errors import UserError
from film_diffusion.pipelines import SCHEDULERS, FilmDiffusionPipeline


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n != "flow_euler"])
def test_each_named_scheduler_samples_finite_images(name):
    pipe = FilmDiffusionPipeline(class_denoiser(), DDPMScheduler())
    pipe.set_scheduler(name)
    assert type(pipe.scheduler) is SCHEDULERS[name][0]
    images = pipe(class_labels=[1, 2], num_inference_steps=4, guidance_scale=2.0, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, SIZE, SIZE) and torch.isfinite(images).all()


def test_a_scheduler_by_name_keeps_the_saved_schedule_and_prediction_type():
    saved = DDPMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2", num_train_timesteps=500)
    pipe = FilmDiffusionPipeline(class_denoiser(), saved)
    for name in ("dpm++", "EulerAncestralDiscreteScheduler"):
        pipe.set_scheduler(name)
        cfg = pipe.scheduler.config
        assert (cfg.prediction_type, cfg.beta_schedule, cfg.num_train_timesteps) == \
            ("v_prediction", "squaredcos_cap_v2", 500)
        assert type(pipe.scheduler).__name__ == {"dpm++": "DPMSolverMultistepScheduler"}.get(name, name)
        assert name != "dpm++" or cfg.algorithm_type == "dpmsolver++"
    pipe.set_scheduler(EulerDiscreteScheduler.from_config(saved.config))  # an object is used as it is
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)


@pytest.mark.parametrize("scheduler", [DDIMScheduler(prediction_type="v_prediction"),
                                       EulerDiscreteScheduler(prediction_type="v_prediction"),
                                       FlowMatchEulerDiscreteScheduler(shift=3.0)],
                         ids=["v-ddim", "v-euler", "flow-euler"])
def test_v_prediction_and_flow_models_sample_with_their_schedulers(scheduler):
    pipe = FilmDiffusionPipeline(class_denoiser(), scheduler)
    images = pipe(class_labels=[0, 3], num_inference_steps=5, guidance_scale=3.0, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, SIZE, SIZE) and torch.isfinite(images).all()
    assert images.std() > 0.01  # something other than a constant image came out


def test_learned_sigma_latents_give_a_dpm_solver_the_epsilon_half_of_all_four_channels():
    model = class_denoiser(channels=4, learn_sigma=True)
    pipe = FilmDiffusionPipeline(model, DDPMScheduler(variance_type="learned_range"))
    pipe.set_scheduler("dpm++")  # diffusers' DPM-Solver would keep 3 channels of a learned variance
    assert pipe.scheduler.config.variance_type is None
    latents = pipe(class_labels=[1, 2], num_inference_steps=3, guidance_scale=2.0, output_type="latent",
                   generator=torch.Generator().manual_seed(0)).images
    assert latents.shape == (2, 4, SIZE, SIZE) and torch.isfinite(latents).all()
    with pytest.raises(UserError, match="keeps only three channels of the model output; build it with variance_type"):
        pipe.set_scheduler(DPMSolverMultistepScheduler(variance_type="learned_range"))


def test_swapping_schedulers_back_to_ddpm_keeps_the_models_learned_variance(tmp_path):
    """The swap is built for the model, not from whichever scheduler came before: DPM++ takes the epsilon half
    (variance_type None), and a DDPM after it reads the learned variance again, also when the pipeline was saved
    with DPM++ and loaded back (where diffusers' own defaults may change the timestep spacing)."""
    pipe = FilmDiffusionPipeline(class_denoiser(learn_sigma=True), DDPMScheduler(variance_type="learned_range"))

    def sampled(with_pipe):
        return with_pipe(class_labels=[1, 2], num_inference_steps=3, guidance_scale=2.0, output_type="latent",
                         generator=torch.Generator().manual_seed(0)).images

    learned = sampled(pipe)
    pipe.set_scheduler("dpm++")
    assert pipe.scheduler.config.variance_type is None
    pipe.save_pretrained(tmp_path / "saved")
    pipe.set_scheduler("ddpm")
    assert pipe.scheduler.config.variance_type == "learned_range"
    assert torch.equal(sampled(pipe), learned)
    loaded = FilmDiffusionPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_scheduler("ddpm")
    assert loaded.scheduler.config.variance_type == "learned_range"
    with_variance = sampled(loaded)
    loaded.set_scheduler(DDPMScheduler.from_config(loaded.scheduler.config, variance_type=None))
    assert not torch.equal(sampled(loaded), with_variance)  # the variance is read, not dropped


def test_a_model_without_a_learned_variance_gets_no_learned_variance_type():
    pipe = FilmDiffusionPipeline(class_denoiser(), DDPMScheduler(variance_type="fixed_small"))
    pipe.set_scheduler("ddpm")
    assert pipe.scheduler.config.variance_type == "fixed_small"
