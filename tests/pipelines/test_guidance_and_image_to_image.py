"""Guidance interval, guidance rescale and image-to-image against plain loops written here, on tiny random models."""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    IPNDMScheduler,
    UniPCMultistepScheduler,
)
from tiny_pipelines import SIZE, builtin_text_pipeline, class_denoiser, noise, tiny_vae

from film_diffusion.conditioning import Condition
from film_diffusion.errors import UserError
from film_diffusion.pipelines import FilmDiffusionPipeline

PROMPTS = ["a large red circle at the top left", "a small blue square"]
STEPS = 4


def guided_loop(pipe, x: torch.Tensor, scale: float, guided_steps: set[int], rescale: float = 0.0) -> torch.Tensor:
    """DDIM by hand: steps in ``guided_steps`` combine both halves (and rescale the guided prediction's standard
    deviation toward the conditional one's by ``rescale``), the others read the conditional half; images in
    [0, 1]."""
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    encoder = pipe.text_encoder
    cond = encoder.encode(PROMPTS)
    uncond = encoder.encode([""])[[0, 0]]
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            if i in guided_steps:  # one batch of both halves (a CPU matmul's rounding depends on the batch)
                both = Condition.cat([uncond, cond])
                out_uncond, out_cond = pipe.denoiser(torch.cat([x, x]), t, condition=both).sample.chunk(2)
                out = out_uncond + scale * (out_cond - out_uncond)
                ratio = out_cond.std(dim=(1, 2, 3), keepdim=True) / out.std(dim=(1, 2, 3), keepdim=True)
                out = rescale * out * ratio + (1 - rescale) * out
            else:
                out = pipe.denoiser(x, t, condition=cond).sample
        x = scheduler.step(out, t, x).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def sample(pipe, x: torch.Tensor, **kwargs) -> torch.Tensor:
    kwargs.setdefault("prompt", PROMPTS)
    return pipe(num_inference_steps=STEPS, latents=x, output_type="pt", **kwargs).images


@pytest.fixture(scope="module")
def pipe():
    return builtin_text_pipeline("dit", DDIMScheduler(), conditioning=["adaln_zero", "cross_attention"])


def test_the_whole_interval_and_no_rescale_are_plain_guidance(pipe):
    x = noise(2)
    plain = guided_loop(pipe, x, 3.0, guided_steps={0, 1, 2, 3})
    torch.testing.assert_close(sample(pipe, x, guidance_scale=3.0, guidance_interval=(0, 1)), plain,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(sample(pipe, x, guidance_scale=3.0, guidance_rescale=0.0), plain, atol=1e-5, rtol=0)


def test_an_interval_guides_only_its_steps(pipe):
    x = noise(2)
    last_half = sample(pipe, x, guidance_scale=3.0, guidance_interval=(0.5, 1.0))
    torch.testing.assert_close(last_half, guided_loop(pipe, x, 3.0, guided_steps={2, 3}), atol=1e-5, rtol=0)
    first_quarter = sample(pipe, x, guidance_scale=3.0, guidance_interval=(0.0, 0.25))
    torch.testing.assert_close(first_quarter, guided_loop(pipe, x, 3.0, guided_steps={0}), atol=1e-5, rtol=0)
    everywhere = sample(pipe, x, guidance_scale=3.0)
    nowhere = sample(pipe, x, guidance_scale=3.0, guidance_interval=(0.5, 0.5))
    torch.testing.assert_close(nowhere, sample(pipe, x, guidance_scale=1.0), atol=1e-6, rtol=0)
    assert (last_half - everywhere).abs().max() > 1e-3 and (last_half - nowhere).abs().max() > 1e-3


def test_rescale_moves_the_guided_prediction_toward_the_conditional_spread(pipe):
    x = noise(2)
    got = sample(pipe, x, guidance_scale=5.0, guidance_rescale=0.7)
    torch.testing.assert_close(got, guided_loop(pipe, x, 5.0, guided_steps={0, 1, 2, 3}, rescale=0.7),
                               atol=1e-5, rtol=0)
    assert (got - sample(pipe, x, guidance_scale=5.0)).abs().max() > 1e-3


def input_image(seed: int = 3) -> torch.Tensor:
    """A smooth image in [0, 1], [1, 3, SIZE, SIZE]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 2, 2, generator=g)
    return torch.nn.functional.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)


IMAGE_SCHEDULERS = [DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler,
                    UniPCMultistepScheduler]


@pytest.mark.parametrize("scheduler_cls", IMAGE_SCHEDULERS, ids=lambda c: c.__name__)
def test_strength_one_is_text_to_image_from_the_same_noise(scheduler_cls):
    pipe = builtin_text_pipeline("unet", scheduler_cls())
    x, image = noise(2), input_image()

    def run(**kwargs):  # stochastic schedulers draw their step noise from the generator: a fresh one per call
        return pipe(prompt=PROMPTS, num_inference_steps=STEPS, guidance_scale=2.0, latents=x, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **kwargs).images

    assert torch.equal(run(image=image, strength=1.0), run())


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler],
                         ids=lambda c: c.__name__)
def test_the_image_is_noised_only_to_the_strengths_point(scheduler_cls):
    """A model as built predicts zero, so what separates its sample from the input is the noise the start
    added: little at a small strength, much at a large one."""
    pipe = builtin_text_pipeline("unet", scheduler_cls(), perturb=0.0)
    x, image = noise(2), input_image()
    distance = {}
    for strength in (0.1, 0.3, 0.9):
        got = pipe(prompt=PROMPTS, num_inference_steps=10, guidance_scale=2.0, latents=x, image=image,
                   strength=strength, output_type="pt", generator=torch.Generator().manual_seed(0)).images
        distance[strength] = (got - image).abs().mean().item()
    near, middle, far = distance[0.1], distance[0.3], distance[0.9]
    assert near < 0.15 and near < middle < far and far > 3 * near, distance


def test_image_to_image_on_ddim_is_the_sdedit_loop():
    pipe = builtin_text_pipeline("dit", DDIMScheduler())
    x, image = noise(2), input_image()
    got = pipe(prompt=PROMPTS, num_inference_steps=STEPS, guidance_scale=1.0, latents=x, image=image, strength=0.5,
               output_type="pt").images
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    timesteps = scheduler.timesteps[2:]  # the last half of the schedule
    alpha_bar = scheduler.alphas_cumprod[timesteps[0]]
    z = alpha_bar.sqrt() * (2 * image - 1) + (1 - alpha_bar).sqrt() * x
    cond = pipe.text_encoder.encode(PROMPTS)
    for t in timesteps:
        with torch.no_grad():
            z = scheduler.step(pipe.denoiser(z, t, condition=cond).sample, t, z).prev_sample
    torch.testing.assert_close(got, (z / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)


def test_image_to_image_on_flow_is_euler_from_the_interpolated_start():
    model = class_denoiser()
    pipe = FilmDiffusionPipeline(model, FlowMatchEulerDiscreteScheduler())
    x, image = noise(2), input_image()
    kwargs = dict(class_labels=[4, 5], num_inference_steps=STEPS, guidance_scale=1.0, latents=x, output_type="pt")
    got = pipe(**kwargs, image=image, strength=0.5).images
    assert torch.equal(pipe(**kwargs, image=image, strength=1.0).images, pipe(**kwargs).images)
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(STEPS)
    sigmas = scheduler.sigmas
    z = sigmas[2] * x + (1 - sigmas[2]) * (2 * image - 1)  # x_sigma = sigma * noise + (1 - sigma) * image
    with torch.no_grad():
        for i in (2, 3):
            z = z + (sigmas[i + 1] - sigmas[i]) * model(z, scheduler.timesteps[i],
                                                        class_labels=torch.tensor([4, 5])).sample
    torch.testing.assert_close(got, (z / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)


def test_image_to_image_of_a_latent_model_starts_from_the_vae_latent_mean():
    vae = tiny_vae()
    model = class_denoiser(channels=4)
    pipe = FilmDiffusionPipeline(model, DDIMScheduler(), vae=vae)
    x, image = noise(1, channels=4), input_image()
    got = pipe(class_labels=[1], num_inference_steps=STEPS, guidance_scale=1.0, latents=x, image=image,
               strength=0.5, output_type="latent").images
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        clean = vae.encode(2 * image - 1).latent_dist.mean * vae.config.scaling_factor
        alpha_bar = scheduler.alphas_cumprod[scheduler.timesteps[2]]
        z = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * x
        for t in scheduler.timesteps[2:]:
            z = scheduler.step(model(z, t, class_labels=torch.tensor([1])).sample, t, z).prev_sample
    torch.testing.assert_close(got, z, atol=1e-5, rtol=0)


def test_one_image_per_prompt_goes_to_that_prompts_images():
    pipe = builtin_text_pipeline("dit", DDIMScheduler(), perturb=0.0)
    images = torch.cat([input_image(1), input_image(2)])
    x = noise(4)
    both = pipe(prompt=PROMPTS, num_images_per_prompt=2, num_inference_steps=20, guidance_scale=1.0, latents=x,
                image=images, strength=0.05, output_type="pt").images
    for k, image in enumerate(images):
        assert (both[2 * k:2 * k + 2] - image).abs().mean() < 0.05
        assert (both[2 * k:2 * k + 2] - images[1 - k]).abs().mean() > 0.1


@pytest.mark.parametrize("kwargs, message", [
    (dict(strength=0.5), "strength is image-to-image's"),
    (dict(image="IMAGE", strength=0.0), "strength must be in (0, 1]"),
    (dict(image="IMAGE", strength=1.5), "strength must be in (0, 1]"),
    (dict(image="IMAGE", strength=0.1), "runs no step"),
    (dict(image=[0, 1, 2]), "image must be a PIL image"),
    (dict(image="THREE"), "3 images for 2 prompts"),
    (dict(guidance_interval=(0.8, 0.2)), "guidance_interval must be (start, stop)"),
    (dict(guidance_interval=0.5), "guidance_interval must be (start, stop)"),
    (dict(guidance_rescale=1.5), "guidance_rescale must be between 0"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_wrong_sampling_options_are_one_sentence(pipe, kwargs, message):
    if kwargs.get("image") == "IMAGE":
        kwargs["image"] = input_image()
    elif kwargs.get("image") == "THREE":
        kwargs["image"] = torch.cat([input_image(1), input_image(2), input_image(3)])
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        pipe(prompt=PROMPTS, num_inference_steps=STEPS, **kwargs)


def test_a_scheduler_that_cannot_start_midway_is_refused():
    pipe = builtin_text_pipeline("dit", IPNDMScheduler())
    with pytest.raises(UserError, match="IPNDMScheduler cannot start from a noised image"):
        pipe(prompt=PROMPTS, num_inference_steps=STEPS, image=input_image(), strength=0.5)

