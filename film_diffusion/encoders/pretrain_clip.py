"""Train the built-in small CLIP (``film-diffusion pretrain-clip CONFIG``): an open_clip model with a
custom architecture (a small ViT, a small text transformer on open_clip's own tokenizer), trained with
open_clip's ``ClipLoss`` on image/caption pairs of the built-in scenes.

The result is a folder in open_clip's own format, ``open_clip_config.json`` plus
``open_clip_model.safetensors``, which ``OpenCLIP("local-dir:FOLDER")`` (or open_clip itself) loads
like any other checkpoint; beside them, the resolved config and the measured figures.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from open_clip.loss import ClipLoss
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from film_diffusion.atomic import written
from film_diffusion.config import config_to_dict, load_config
from film_diffusion.data.captions import TEMPLATES, caption, caption_words
from film_diffusion.data.render import render
from film_diffusion.data.shapes import ShapesDataset, caption_split, scene_split, to_tensor
from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES
from film_diffusion.encoders.clip_openclip import CONFIG_FILE, LOCAL_DIR, WEIGHTS_FILE, WORDS_FILE, OpenCLIP
from film_diffusion.encoders.clip_retrieval import evaluate_clip
from film_diffusion.encoders.counterfactuals import ATTRIBUTES, variants
from film_diffusion.errors import UserError

MAX_VARIANT_DRAWS = 50  # draws per wanted variant before a scene is declared short of variants


def _default_model() -> dict:
    return {
        "embed_dim": 64,
        "init_logit_scale": 3.9,  # ln(50): a low starting temperature, so fine differences count from the start
        "vision_cfg": {"image_size": 48, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32},
        "text_cfg": {"context_length": 49, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
    }


@dataclass
class ClipDataConfig:
    resolution: int = 48  # must equal model.vision_cfg.image_size
    max_objects: int = 4  # the benchmark asks for up to four objects ("four red circles")
    seed: int = 0
    scenes: int = 10_000  # rendered once, each beside its one-attribute variants; captions reworded at every draw
    variants_per_scene: int = 3  # each a different scene changing one attribute of one object: hard negatives
    # How often each attribute is the one a variant changes (the hardest to see come most often).
    variant_weights: dict[str, float] = field(
        default_factory=lambda: {"color": 1.0, "shape": 3.0, "size": 0.5, "position": 2.5, "count": 2.5}
    )


@dataclass
class ClipTrainConfig:
    steps: int = 3000
    batch_size: int = 128  # 32 scenes, each beside its 3 variants
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0


@dataclass
class ClipEvalConfig:
    split: Literal["val", "test"] = "test"  # scenes never trained on
    scenes: int = 500
    pairs: int = 100


@dataclass
class PretrainClipConfig:
    output_dir: Path = Path("runs/clip_builtin")
    model: dict = field(default_factory=_default_model)  # an open_clip model config (embed_dim, vision_cfg, text_cfg)
    save_dtype: Literal["float32", "float16"] = "float16"  # half the size; figures measured after the round trip
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    train: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    eval: ClipEvalConfig = field(default_factory=ClipEvalConfig)


def run_pretrain_clip(config_path: str | Path, overrides: list[str]) -> Path:
    """The CLI entry: load the YAML, train, print the figures."""
    folder = pretrain_clip(load_config(config_path, PretrainClipConfig, overrides))
    print(json.dumps(json.loads((folder / "metrics.json").read_text()), indent=2))
    return folder


def pretrain_clip(config: PretrainClipConfig) -> Path:
    """Train, save and evaluate; returns the output folder."""
    out = Path(config.output_dir)
    _check(config)
    out.mkdir(parents=True, exist_ok=True)
    # Images arrive in [-1, 1]; mean = std = 0.5 makes open_clip's normalisation the identity on them.
    preprocess = {"size": config.data.resolution, "mean": [0.5] * 3, "std": [0.5] * 3}
    (out / CONFIG_FILE).write_text(json.dumps({"model_cfg": config.model, "preprocess_cfg": preprocess}, indent=2))
    (out / "pretrain_clip.yaml").write_text(yaml.safe_dump(config_to_dict(config) | {"output_dir": str(out)}))
    # every word its captions can hold: the encoder warns about others (it has never read them)
    (out / WORDS_FILE).write_text(json.dumps(sorted(caption_words(config.data.max_objects))) + "\n")

    torch.manual_seed(config.train.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = OpenCLIP(f"{LOCAL_DIR}{out}", trainable=True).to(device)
    start = time.perf_counter()
    train(encoder, config)
    seconds = time.perf_counter() - start

    state = {k: v.to(getattr(torch, config.save_dtype)).contiguous() for k, v in encoder.model.state_dict().items()}
    with written(out / WEIGHTS_FILE) as partial:  # never leave a half-written checkpoint
        save_file(state, partial)

    frozen = OpenCLIP(f"{LOCAL_DIR}{out}").to(device)
    held_out = ShapesDataset(config.data.resolution, config.eval.split, config.data.seed, config.data.max_objects)
    metrics = {"train_seconds": round(seconds, 1), "threads": torch.get_num_threads(), "device": device}
    metrics |= evaluate_clip(frozen, held_out, config.eval.scenes, config.eval.pairs, seed=config.data.seed)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def _check(config: PretrainClipConfig) -> None:
    if (Path(config.output_dir) / WEIGHTS_FILE).exists():
        raise UserError(
            f"'{config.output_dir}' already holds a trained CLIP; pass another output_dir=... or delete that folder."
        )
    if config.model.get("vision_cfg", {}).get("image_size") != config.data.resolution:
        raise UserError("model.vision_cfg.image_size must equal data.resolution; set them to the same value.")
    context = config.model.get("text_cfg", {}).get("context_length", 77)
    needed = longest_caption(config.data.max_objects)
    if context < needed:
        raise UserError(
            f"model.text_cfg.context_length is {context} tokens, but a caption of data.max_objects="
            f"{config.data.max_objects} objects takes up to {needed}; raise it to at least {needed}, or the ends of "
            "the longest captions are cut off in training."
        )
    group = config.data.variants_per_scene + 1
    if config.data.variants_per_scene < 1 or config.train.batch_size % group:
        raise UserError(
            f"train.batch_size ({config.train.batch_size}) must be a multiple of data.variants_per_scene + 1 "
            f"({group}), with at least one variant per scene; change one of them."
        )
    weights = config.data.variant_weights
    if set(weights) - set(ATTRIBUTES) or min(weights.values(), default=0) < 0 or sum(weights.values()) <= 0:
        raise UserError(
            f"data.variant_weights {weights} must give non-negative weights, not all zero, to attributes among "
            f"{', '.join(ATTRIBUTES)}; fix that mapping."
        )


def longest_caption(max_objects: int) -> int:
    """The most tokens (open_clip's tokenizer, start and end included) any caption of up to ``max_objects`` objects
    takes: every word is tokenized alone, so the longest is each template's wording of objects that all have the
    attribute values of most tokens, in the cells of most tokens (distinct, as a scene's are)."""
    tokenizer = SimpleTokenizer()
    most = {name: max(values, key=lambda v: len(tokenizer.encode(v))) for name, values in
            (("color", COLORS), ("shape", SHAPES), ("size", SIZES))}  # fmt: skip
    cells = sorted(CELLS, key=lambda c: -len(tokenizer.encode(c)))[:max_objects]
    objects = [dict(most, cell=cell) for cell in cells]
    return max(len(tokenizer.encode(caption(objects[:n], name))) + 2 for name, t in TEMPLATES.items()
               for n in range(t.min_objects, max_objects + 1))  # fmt: skip


def train(encoder: OpenCLIP, config: PretrainClipConfig) -> None:
    """Contrastive training on batches of scene groups: each scene beside variants that change one
    attribute of one object, so every batch holds hard negatives; captions are reworded at every draw."""
    data, opt = config.data, config.train
    dataset = ShapesDataset(data.resolution, "train", data.seed, data.max_objects, length=data.scenes)
    weights = np.array([data.variant_weights.get(a, 0.0) for a in ATTRIBUTES]) / sum(data.variant_weights.values())
    groups = [
        _scene_group(dataset, i, weights, data.variants_per_scene)
        for i in tqdm(range(data.scenes), desc="rendering scenes and variants")
    ]
    images = torch.stack([group_images for _, group_images in groups])  # (N, 1 + variants, 3, H, W)
    rng = np.random.default_rng(opt.seed)

    model = encoder.model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]  # no decay on gains, biases and the logit scale
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=opt.lr
    )
    schedule = get_cosine_schedule_with_warmup(optimizer, opt.warmup_steps, opt.steps)
    loss_fn = ClipLoss()
    progress = tqdm(range(opt.steps), desc="pretrain-clip")
    for _ in progress:
        chosen = rng.choice(len(groups), size=opt.batch_size // images.shape[1], replace=False)
        captions = [text for i in chosen for text in _group_captions(groups[i][0], rng)]
        image_features = encoder.encode_images(images[chosen].flatten(0, 1))  # groups side by side, like captions
        text_features = torch.nn.functional.normalize(encoder.encode(captions).pooled, dim=-1)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as in CLIP
        progress.set_postfix(loss=f"{loss.item():.3f}")


def _scene_group(
    dataset: ShapesDataset, index: int, weights: np.ndarray, count: int
) -> tuple[list[list[dict]], torch.Tensor]:
    """Scene ``index`` and ``count`` different variants of it, each changing one attribute of one object
    (the attribute drawn with ``weights``), with all their images ``(1 + count, 3, H, W)``. A variant is a
    new scene, so only training-split variants are kept: the CLIP never sees a val or test scene."""
    item = dataset[index]
    objects = item["objects"]
    rng = np.random.default_rng([dataset.seed, index])
    scenes = [objects]
    for _ in range(MAX_VARIANT_DRAWS * count):  # position and count may have no variant; all may run out
        attribute = ATTRIBUTES[int(rng.choice(len(ATTRIBUTES), p=weights))]
        options = variants(objects, attribute, int(rng.integers(len(objects))), rng, dataset.max_objects)
        options = [scene for scene in options if scene not in scenes and scene_split(scene) == "train"]
        if options:
            scenes.append(options[int(rng.integers(len(options)))])
        if len(scenes) > count:
            break
    else:
        raise UserError(
            f"Scene {index} has fewer than data.variants_per_scene={count} distinct variants under "
            "data.variant_weights; lower variants_per_scene or give weight to more attributes."
        )
    rendered = [item["image"]] + [to_tensor(render(scene, dataset.resolution, rng)) for scene in scenes[1:]]
    return scenes, torch.stack(rendered)


def _group_captions(scenes: list[list[dict]], rng: np.random.Generator) -> list[str]:
    """All scenes worded by one random template, or by "full" where that template cannot tell them apart. A
    template is usable only where every scene's caption under it is a training caption ("full" always is, for
    training scenes), so no val or test prompt's text is ever trained on."""
    usable = [
        name for name, t in TEMPLATES.items()
        if t.min_objects <= min(len(scene) for scene in scenes)
        and all(caption_split(scene, name) == "train" for scene in scenes)
    ]  # fmt: skip
    template = usable[int(rng.integers(len(usable)))]
    texts = [caption(scene, template) for scene in scenes]
    return texts if len(set(texts)) == len(texts) else [caption(scene, "full") for scene in scenes]
