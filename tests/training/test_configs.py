"""Every shipped config loads; the built-in ones train 2 steps; the full-size ones build on the meta device."""

import pytest
import torch
from runs import CONFIGS, TINY

from film_diffusion.data.captions import caption_words, words
from film_diffusion.training.build import build_denoiser, latent_shape
from film_diffusion.training.config import load_experiment
from film_diffusion.training.trainer import train

FULL_SIZE = {"dit_xl2_imagenet": 674.8, "pixart_like": 798.6, "sd_unet": 835.7}  # millions of parameters
CLIP_L = {"token_dim": 768, "pooled_dim": 768, "max_length": 77}  # what openai/clip-vit-large-patch14 reports
# compare configs, tested in tests/evaluation
STUDIES = ("compare_methods", "dit_paper_blocks", "film_paper_placement", "ffnified_mixer", "unet_text_paths",
           "unet_xattn_position", "conditioning_methods", "conditioning_methods_pilot")
BUILT_IN = sorted(p.stem for p in CONFIGS.glob("*.yaml")
                  if p.stem not in FULL_SIZE and p.stem != "clip_builtin" and p.stem not in STUDIES)


def test_the_built_in_configs_are_the_quickstart_and_one_per_method_and_backbone():
    methods = ["film", "adaln_zero", "cross_attention", "gated_cross_attention", "concat", "adaln_zero_cross_attention",
               "film_cross_attention"]
    dit_only = ["adaln_single", "joint_attention", "adaln_single_cross_attention"]  # the U-Net refuses them
    assert BUILT_IN == sorted(["quickstart", "quickstart_dit", "multi_object"]
                              + [f"{b}_{m}" for b in ("dit", "unet") for m in methods] + [f"dit_{m}" for m in dit_only])


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_config_trains_two_steps_and_leaves_a_pipeline(name, tmp_path):
    # fp32 but for the quickstart: bf16 convolutions are some 50 times slower on a CPU without bf16 support (a
    # U-Net's two steps took 20 s), and bf16 training has its own test (test_variants.py)
    precision = [] if name == "quickstart" else ["train.mixed_precision=no"]
    config = load_experiment(CONFIGS / f"{name}.yaml", [f"output_dir={tmp_path / 'run'}", "train.max_steps=2",
                                                        "train.batch_size=4", "train.sample_every=0",
                                                        "train.eval_every=0", *precision])
    run = train(config)
    assert (run / "pipeline" / "model_index.json").is_file() and (run / "checkpoints" / "checkpoint-2").is_dir()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # logged at the last step


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_recipe_loads_and_builds_on_the_meta_device(name):
    config = load_experiment(CONFIGS / f"{name}.yaml")
    text = config.condition.source != "class_labels"
    channels, size = 4, config.data.resolution // 8  # SD-VAE latents
    with torch.device("meta"):
        model = build_denoiser(config, channels, size, **(CLIP_L if text else dict.fromkeys(CLIP_L)))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == FULL_SIZE[name]
    assert next(model.parameters()).device.type == "meta"


def test_the_multi_object_config_mixes_scene_sizes_and_wordings():
    from film_diffusion.training.build import build_dataset

    config = load_experiment(CONFIGS / "multi_object.yaml", ["data.length=600"])
    scenes = build_dataset(config.data, config.condition)
    items = [scenes.scene(i) for i in range(len(scenes))]
    assert {len(objects) for objects, _ in items} == {1, 2, 3, 4}
    counts_wording = sum(" and " in text and "at" not in text.split() for objects, text in items if len(objects) > 1)
    assert any(" to the left of " in t or " above " in t or " below " in t or " to the right of " in t
               for _, t in items) and counts_wording > 50


def test_latent_shape_follows_the_vae(tiny_vae_folder):
    config = load_experiment({}, [*TINY, f"vae.name_or_path={tiny_vae_folder}", "data.resolution=16"])
    from film_diffusion.training.build import build_vae

    assert latent_shape(config, build_vae(config.vae)) == (4, 8)


@pytest.mark.parametrize("name", [None, *BUILT_IN], ids=["defaults", *BUILT_IN])
def test_sample_captions_use_only_the_words_of_the_built_in_captions(name):
    """The grids' captions are words the built-in data (and so the built-in CLIP) has: "large", not "big";
    "center", not "centre"."""
    config = load_experiment(CONFIGS / f"{name}.yaml" if name else {})
    assert config.condition.source == "builtin_clip"
    unknown = {w for caption in config.sample.captions for w in words(caption)} - caption_words(3)
    assert not unknown, f"words the built-in captions never hold: {sorted(unknown)}"
