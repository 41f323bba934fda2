"""The pipeline equals a plain sampling loop written here, with guidance off and on, on both backbones."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from tiny_pipelines import SIZE, builtin_text_pipeline, class_denoiser, noise, text_denoiser, tiny_vae

from film_diffusion.conditioning import Condition
from film_diffusion.encoders import TransformersCLIP
from film_diffusion.errors import UserError
from film_diffusion.pipelines import FilmDiffusionPipeline
from film_diffusion.training.config import SampleConfig

PROMPTS = ["a large red circle at the top left", "a small blue square"]


def plain_loop(model, scheduler, cond: dict, uncond: dict, x: torch.Tensor, steps: int, scale: float) -> torch.Tensor:
    """The textbook sampler: doubled batch, guidance on every channel, scheduler.step; the final sample."""
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        if scale > 1:
            both = {k: Condition.cat([uncond[k], cond[k]]) if k == "condition" else torch.cat([uncond[k], cond[k]])
                    for k in cond}
            out_uncond, out_cond = model(scheduler.scale_model_input(torch.cat([x, x]), t), t, **both).sample.chunk(2)
            out = out_uncond + scale * (out_cond - out_uncond)
        else:
            out = model(scheduler.scale_model_input(x, t), t, **cond).sample
        x = scheduler.step(out, t, x).prev_sample
    return x


def to_images(x: torch.Tensor) -> torch.Tensor:
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("backbone", ["dit", "unet"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_pipeline_equals_a_plain_loop(backbone, scale, scheduler_cls):
    pipe = builtin_text_pipeline(backbone, scheduler_cls())
    encoder = pipe.text_encoder
    x = noise(4)
    got = pipe(prompt=PROMPTS, num_images_per_prompt=2, num_inference_steps=4, guidance_scale=scale, latents=x,
               output_type="pt").images
    # Each caption encoded once, as the pipeline does (a CPU matmul's rounding depends on the batch size).
    cond = {"condition": encoder.encode(PROMPTS)[[0, 0, 1, 1]]}
    uncond = {"condition": encoder.encode([""])[[0, 0, 0, 0]]}  # the recorded null: the empty caption
    with torch.no_grad():
        expected = to_images(plain_loop(pipe.denoiser, scheduler_cls(), cond, uncond, x, 4, scale))
    assert got.shape == (4, 3, SIZE, SIZE)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got[0] - got[2]).abs().max() > 1e-3  # the two prompts differ, so the condition reached the model


@pytest.mark.parametrize("conditioning", [["adaln_single", "cross_attention"], ["joint_attention"],
                                          [{"name": "cross_attention", "gate": "head"}]], ids=str)
def test_the_newer_methods_sample_through_the_pipeline_as_a_plain_loop(conditioning):
    pipe = builtin_text_pipeline("dit", DDIMScheduler(), conditioning=conditioning)
    x = noise(2)
    got = pipe(prompt=PROMPTS, num_inference_steps=3, guidance_scale=3.0, latents=x, output_type="pt").images
    cond = {"condition": pipe.text_encoder.encode(PROMPTS)}
    uncond = {"condition": pipe.text_encoder.encode([""])[[0, 0]]}
    with torch.no_grad():
        expected = to_images(plain_loop(pipe.denoiser, DDIMScheduler(), cond, uncond, x, 3, 3.0))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_guidance_changes_the_images_and_the_null_is_the_recorded_one():
    pipe = builtin_text_pipeline("dit")
    x = noise(2)
    run = lambda **kw: pipe(prompt=PROMPTS, num_inference_steps=3, latents=x, output_type="pt", **kw).images  # noqa: E731
    unguided, guided = run(guidance_scale=1.0), run(guidance_scale=3.0)
    assert (unguided - guided).abs().max() > 1e-3
    pipe.register_to_config(null_condition="zeros")
    assert (run(guidance_scale=3.0) - guided).abs().max() > 1e-4  # another null, another result
    torch.testing.assert_close(run(guidance_scale=3.0, negative_prompt=""), guided, atol=1e-6, rtol=0)


def test_learned_null_is_the_models_own_and_survives_a_round_trip(tmp_path):
    encoder = builtin_text_pipeline("dit").text_encoder
    model = text_denoiser("unet", encoder, learned_null_tokens=encoder.max_length)
    pipe = FilmDiffusionPipeline(model, DDIMScheduler(), text_encoder=encoder, null_condition="learned")
    null = model.conditioner.learned_null(4)
    assert null.tokens.shape == (4, encoder.max_length, encoder.token_dim) and null.mask.all()
    assert null.pooled.shape == (4, encoder.pooled_dim)
    x = noise(4)
    got = pipe(prompt=PROMPTS, num_images_per_prompt=2, num_inference_steps=3, guidance_scale=3.0, latents=x,
               output_type="pt").images
    with torch.no_grad():
        expected = to_images(plain_loop(model, DDIMScheduler(), {"condition": encoder.encode(PROMPTS)[[0, 0, 1, 1]]},
                                        {"condition": null}, x, 3, 3.0))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = FilmDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.null_condition == "learned"
    assert torch.equal(loaded.denoiser.conditioner.learned_null.tokens, model.conditioner.learned_null.tokens)
    short = text_denoiser("unet", encoder, learned_null_tokens=encoder.max_length - 1)
    with pytest.raises(UserError, match=f"learned null has {encoder.max_length - 1} tokens but the text encoder "
                                        f"gives {encoder.max_length}; build the model with learned_null_tokens="):
        FilmDiffusionPipeline(short, DDIMScheduler(), text_encoder=encoder)


@pytest.mark.parametrize("conditioning", [["cross_attention"], ["film"]])
def test_learned_null_of_a_model_that_reads_only_tokens_or_only_pooled(conditioning):
    encoder = builtin_text_pipeline("dit").text_encoder
    model = text_denoiser("dit", encoder, conditioning=conditioning, learned_null_tokens=encoder.max_length)
    pipe = FilmDiffusionPipeline(model, DDIMScheduler(), text_encoder=encoder, null_condition="learned")
    null = model.conditioner.learned_null(2)  # only what the model reads, so every part gets a gradient
    assert (null.pooled is None) == (conditioning == ["cross_attention"])
    assert (null.tokens is None) == (conditioning == ["film"])
    images = pipe(prompt=PROMPTS, num_inference_steps=2, guidance_scale=3.0, output_type="pt").images
    assert images.shape == (2, 3, SIZE, SIZE) and torch.isfinite(images).all()


def test_class_pipeline_guides_all_four_latent_channels_with_the_models_null_class():
    model = class_denoiser(num_classes=7, channels=4)
    pipe = FilmDiffusionPipeline(model, DDIMScheduler())
    x = noise(3, channels=4)
    got = pipe(class_labels=[0, 6, 3], num_inference_steps=4, guidance_scale=2.5, latents=x,
               output_type="latent").images
    with torch.no_grad():
        expected = plain_loop(model, DDIMScheduler(), {"class_labels": torch.tensor([0, 6, 3])},
                              {"class_labels": torch.tensor([7, 7, 7])}, x, 4, 2.5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_learned_sigma_guides_epsilon_and_gives_the_variance_to_schedulers_that_read_it():
    model = class_denoiser(learn_sigma=True)
    x = noise(2)
    labels = torch.tensor([1, 2])

    def loop(scheduler, with_variance: bool) -> torch.Tensor:
        scheduler.set_timesteps(3)
        z, g = x.clone(), torch.Generator().manual_seed(5)
        for t in scheduler.timesteps:
            out = model(torch.cat([z, z]), t, class_labels=torch.cat([torch.full_like(labels, 10), labels])).sample
            u, c = out.chunk(2)
            eps = u[:, :3] + 2.0 * (c[:, :3] - u[:, :3])
            z = scheduler.step(torch.cat([eps, c[:, 3:]], 1) if with_variance else eps, t, z, generator=g).prev_sample
        return to_images(z)

    for scheduler_cls, options, with_variance in [(DDPMScheduler, {"variance_type": "learned_range"}, True),
                                                  (DDIMScheduler, {}, False)]:
        pipe = FilmDiffusionPipeline(model, scheduler_cls(**options))
        got = pipe(class_labels=labels, num_inference_steps=3, guidance_scale=2.0, latents=x, output_type="pt",
                   generator=torch.Generator().manual_seed(5)).images
        with torch.no_grad():
            expected = loop(scheduler_cls(**options), with_variance)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_flow_model_samples_with_a_plain_euler_integration_of_the_velocity():
    model = class_denoiser()
    pipe = FilmDiffusionPipeline(model, FlowMatchEulerDiscreteScheduler())
    x = noise(2)
    got = pipe(class_labels=[4, 5], num_inference_steps=4, guidance_scale=1.0, latents=x, output_type="pt").images
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(4)
    z = x.clone()
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):  # x_{next} = x + (sigma_next - sigma) * v, t = 1000 sigma
            velocity = model(z, t, class_labels=torch.tensor([4, 5])).sample
            z = z + (scheduler.sigmas[i + 1] - scheduler.sigmas[i]) * velocity
    torch.testing.assert_close(got, to_images(z), atol=1e-5, rtol=0)


def test_latent_model_decodes_with_the_vae_scaling_factor():
    vae = tiny_vae()
    model = class_denoiser(channels=4)
    pipe = FilmDiffusionPipeline(model, DDIMScheduler(), vae=vae)
    x = noise(2, channels=4)
    got = pipe(class_labels=[1, 2], num_inference_steps=2, guidance_scale=1.0, latents=x, output_type="pt").images
    latents = pipe(class_labels=[1, 2], num_inference_steps=2, guidance_scale=1.0, latents=x,
                   output_type="latent").images
    with torch.no_grad():
        expected = (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert got.shape == (2, 3, SIZE, SIZE) and latents.shape == (2, 4, SIZE, SIZE)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_output_types_and_seeded_noise():
    pipe = builtin_text_pipeline("dit")
    kwargs = dict(prompt="a red circle", num_inference_steps=2, num_images_per_prompt=2)
    pil = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    arr = pipe(**kwargs, generator=torch.Generator().manual_seed(1), output_type="np").images
    pt = pipe(**kwargs, generator=torch.Generator().manual_seed(1), output_type="pt").images
    (images,) = pipe(**kwargs, generator=torch.Generator().manual_seed(1), output_type="pt", return_dict=False)
    assert len(pil) == 2 and pil[0].size == (SIZE, SIZE) and arr.shape == (2, SIZE, SIZE, 3)
    assert pt.shape == (2, 3, SIZE, SIZE) and 0 <= pt.min() and pt.max() <= 1
    torch.testing.assert_close(torch.from_numpy(arr).permute(0, 3, 1, 2), pt)
    assert torch.equal(images, pt)
    other = pipe(**kwargs, generator=torch.Generator().manual_seed(2), output_type="pt").images
    assert (other - pt).abs().max() > 1e-3


def test_pipeline_moves_to_a_dtype_and_samples():
    pipe = builtin_text_pipeline("dit").to(torch.bfloat16)
    assert pipe.denoiser.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    images = pipe(prompt="a red circle", num_inference_steps=2, output_type="pt").images
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_wrong_inputs_are_one_sentence_naming_the_fix(tiny_transformers_clip):
    text = builtin_text_pipeline("dit")
    labels = FilmDiffusionPipeline(class_denoiser(), DDIMScheduler())
    cases = [
        (lambda: labels(prompt="a red circle"), "conditioned on class labels, not text; pass class_labels"),
        (lambda: text(class_labels=[1]), "conditioned on text, not class labels; pass prompt"),
        (lambda: text(), "conditioned on text; pass prompt"),
        (lambda: labels(class_labels=[10]), r"Class labels \[10\] are out of range; this model has classes 0 to 9"),
        (lambda: text(prompt="x", output_type="jpg"), "output_type='jpg' is not supported"),
        (lambda: text(prompt=["a", "b"], negative_prompt=["a", "b", "c"]), "negative_prompt has 3 captions"),
        (lambda: text(prompt="x", latents=torch.zeros(1, 3, 4, 4)), r"latents must have shape \(1, 3, 8, 8\)"),
        (lambda: FilmDiffusionPipeline(text.denoiser, DDIMScheduler()), "pass its text_encoder"),
        (lambda: FilmDiffusionPipeline(class_denoiser(), DDIMScheduler(), text_encoder=text.text_encoder),
         "built without text inputs"),
        (lambda: FilmDiffusionPipeline(text.denoiser, DDIMScheduler(), TransformersCLIP(tiny_transformers_clip)),
         "cond_token_dim=64 does not match the text encoder's width 32"),
        (lambda: FilmDiffusionPipeline(text.denoiser, DDIMScheduler(), text.text_encoder, null_condition="none"),
         "Unknown null condition 'none'"),
        (lambda: FilmDiffusionPipeline(text.denoiser, DDIMScheduler(), text.text_encoder, null_condition="learned"),
         "null_condition='learned' needs a model built with learned_null_tokens"),
        (lambda: text.set_scheduler("nope"), "Unknown scheduler 'nope'; choose one of ddpm, ddim, dpm"),
        (lambda: text.set_scheduler("flow_euler"), "does not fit this diffusion"),
        (lambda: text.set_scheduler(FlowMatchEulerDiscreteScheduler()), "does not fit this diffusion"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()


def test_a_pipeline_samples_with_its_saved_steps_and_guidance_unless_told_otherwise(tmp_path):
    """The folder records how its run samples: a call without steps or guidance uses the saved ones, exactly as
    passing them does; a pipeline built without them takes the one default of each, which experiments share."""
    pipe = builtin_text_pipeline("dit")
    assert (pipe.config.num_inference_steps, pipe.config.guidance_scale) == (20, 2.0)
    assert (SampleConfig().steps, SampleConfig().guidance_scale) == (20, 2.0)
    pipe = FilmDiffusionPipeline(pipe.denoiser, pipe.scheduler, text_encoder=pipe.text_encoder,
                                 num_inference_steps=3, guidance_scale=2.0)
    pipe.save_pretrained(tmp_path / "saved")
    loaded = FilmDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert (loaded.config.num_inference_steps, loaded.config.guidance_scale) == (3, 2.0)

    def images(**kwargs):
        return loaded(prompt=PROMPTS, output_type="pt", generator=torch.Generator().manual_seed(0), **kwargs).images

    assert torch.equal(images(), images(num_inference_steps=3, guidance_scale=2.0))
    assert not torch.equal(images(), images(num_inference_steps=4, guidance_scale=2.0))
    assert not torch.equal(images(), images(num_inference_steps=3, guidance_scale=4.0))
    with pytest.raises(UserError, match="num_inference_steps must be an integer of at least 1, got 0"):
        FilmDiffusionPipeline(pipe.denoiser, pipe.scheduler, text_encoder=pipe.text_encoder, num_inference_steps=0)
