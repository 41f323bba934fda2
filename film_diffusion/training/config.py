"""The experiment config: one dataclass per section, loaded from YAML with ``key.sub=value`` overrides.

The defaults are the first quickstart's values, a DiT in bf16 (``configs/quickstart.yaml`` spells every key out
with its meaning, and sets the U-Net recipe the quickstart sweep chose on val in place of the model and training
values that differ), except ``train.eval_every``, off by default since only the built-in scenes have an oracle.

Every key is documented on its line here and in ``configs/``; :func:`check_config` refuses what the
types cannot (a batch that does not divide, a method the backbone cannot take) before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from film_diffusion.config import ConfigError, load_config
from film_diffusion.encoders.null import NULL_CONDITIONS
from film_diffusion.pipelines.pipeline_film_diffusion import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS


@dataclass
class DiTSize:
    """Used when ``model.backbone`` is ``dit`` and no ``model.preset`` is set."""

    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 6
    patch_size: int = 4
    mlp_ratio: float = 4.0


@dataclass
class UNetSize:
    """Used when ``model.backbone`` is ``unet``."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128])
    layers_per_block: int = 2
    attention_levels: list[int] = field(default_factory=lambda: [1])  # 0 = full resolution; the middle always has one
    num_heads: int = 4
    norm_num_groups: int = 32
    attention_pos_embed: bool = False  # a 2-D sine-cosine position embedding on the attention blocks' tokens
    coord_channels: bool = False  # x and y of each pixel as two more input channels of the first convolution


@dataclass
class ModelConfig:
    backbone: Literal["dit", "unet"] = "dit"
    preset: str | None = None  # a DiT preset ("DiT-S/2", "DiT-XL/2", ...) in place of model.dit
    dit: DiTSize = field(default_factory=DiTSize)
    unet: UNetSize = field(default_factory=UNetSize)
    # method names or {name: ..., options}
    conditioning: list[Any] = field(default_factory=lambda: ["film", "cross_attention"])
    timestep_route: Literal["native", "with_condition"] = "native"
    learn_sigma: bool = False  # DiT only: also predict the variance (hybrid loss, as the DiT paper)
    token_mixer: Literal["attention", "ffnified"] = "attention"  # DiT only: ffnified = FFNet's attention-free mixer
    mixer_kernel_size: int = 7  # DiT with token_mixer=ffnified: the depthwise kernel (odd)
    conv_head: bool = False  # DiT only: a 3x3 convolution over the output image, as U-ViT ends


@dataclass
class ConditionConfig:
    source: Literal["builtin_clip", "transformers", "open_clip", "t5", "class_labels"] = "builtin_clip"
    name: str | None = None  # transformers, t5: hub id or folder; open_clip: model name (or local-dir:FOLDER)
    pretrained: str | None = None  # open_clip: pretrained tag or checkpoint file
    layer: Literal["last", "penultimate"] = "last"
    use_projection: bool = True  # transformers: pooled = the projected text embedding
    max_length: int = 77  # transformers, t5: token context (PixArt-alpha gives T5 120)
    num_classes: int | None = None  # class_labels: how many classes (the null class is one more)
    cache: bool = True  # encode each distinct caption once per run (frozen encoders)
    embeddings: Path | None = None  # captions pre-encoded by encoders.save_embeddings (needs cache: true)
    pooled_from: PooledFromConfig | None = None  # a second encoder for the pooled vector (SD3: CLIP beside T5)


@dataclass
class PooledFromConfig:
    """``condition.pooled_from``: a second encoder whose pooled vector replaces the first's (SD3 pairs T5's tokens
    with CLIP's pooled embedding). Its keys mean what they mean in ``condition``."""

    source: Literal["builtin_clip", "transformers", "open_clip", "t5"] = "builtin_clip"
    name: str | None = None
    pretrained: str | None = None
    layer: Literal["last", "penultimate"] = "last"
    use_projection: bool = True
    max_length: int = 77


@dataclass
class DataConfig:
    name: Literal["shapes", "folder", "hf", "webdataset"] = "shapes"
    resolution: int = 32
    # folder: images with metadata.jsonl; hf: a folder of parquet or arrow files, or a hub dataset id;
    # webdataset: a folder of .tar shards or a brace pattern (shards/train-{000000..000099}.tar)
    root: str | None = None  # a string: a pattern or URL keeps its braces and slashes
    center_crop: bool = True  # folder, hf, webdataset
    random_flip: bool = False  # folder, hf, webdataset
    image_column: str = "image"  # hf: the images (an Image feature, bytes or paths)
    caption_column: str = "text"  # hf: the captions; webdataset: the .json field read when a sample has no .txt
    label_column: str = "label"  # hf, webdataset (.json field, when no .cls): class labels (condition.source
    #                              class_labels)
    shuffle_window: int = 1000  # hf, webdataset: samples shuffled together; their chunks (row groups, tar runs)
    #                             come in a fresh random order each epoch
    seed: int = 0  # shapes: which scenes
    min_objects: int = 1  # shapes
    max_objects: int = 1  # shapes
    holdout: list[list[str]] = field(default_factory=list)  # shapes: [colour, shape] pairs kept out of training
    templates: list[str] | None = field(default_factory=lambda: ["full"])  # shapes: wordings; None: all
    length: int | None = None  # shapes: scenes per epoch (default: the split's size)
    cache: bool = False  # shapes: draw the `length` scenes once at the start and keep them in memory
    #                      (3 * resolution**2 bytes each), so that training steps draw nothing
    num_workers: int = 0


@dataclass
class VaeConfig:
    name_or_path: str | None = None  # an AutoencoderKL hub id or folder; None: pixel space
    subfolder: str | None = None  # e.g. "vae" inside a pipeline repository
    precompute: bool = False  # encode the dataset once (posterior mean and std in RUN/latents.safetensors), as
    #                           fast-DiT does; each step then only draws the latent. Needs data without random
    #                           augmentation.


@dataclass
class ObjectiveConfig:
    prediction: Literal["epsilon", "v", "flow"] = "v"  # flow: rectified flow, velocity noise - x0
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"  # epsilon / v
    min_snr_gamma: float | None = None  # epsilon / v: min-SNR loss weighting (5 is the paper's)
    noise_offset: float = 0.0  # add offset * N(0, 1) per image and channel to the noise
    logit_mean: float = 0.0  # flow: timesteps sigma = sigmoid(N(logit_mean, logit_std)), as SD3
    logit_std: float = 1.0


@dataclass
class TrainConfig:
    max_steps: int = 2500  # optimizer steps
    batch_size: int = 32  # images per optimizer step, over all processes and accumulation steps
    gradient_accumulation_steps: int = 1
    lr: float = 1e-3
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: int = 100  # optimizer steps
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no clipping
    skip_nonfinite: bool = False  # a NaN/inf loss or gradient skips that step's update (logged); False: the run stops
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    gradient_checkpointing: bool = False  # recompute block activations in the backward pass: less memory
    compile: bool = False  # torch.compile the denoiser
    repa_weight: float = 0.0  # representation alignment (REPA): weight of the loss pulling repa_block's features
    #                           toward the built-in CLIP image tower's patch features of the clean image; 0: off
    #                           (the paper: 0.5)
    repa_block: str | None = None  # the aligned block, e.g. blocks.1 or down.1.res.0; None: an early one
    #                                (docs/training.md)
    ema_decay: float = 0.999  # the EMA's decay; with ema_warmup, its ceiling
    # True: diffusers' EMAModel warm-up, the n-th update's decay is min(ema_decay, n / (n + 9)) (0.9955 at n = 2,000;
    # 0.999 from n = 8,991); False: ema_decay from the first update (the initial weights then fade as ema_decay^n)
    ema_warmup: bool = True
    caption_dropout: float = 0.1  # share of training examples given the null condition (for guidance)
    null_condition: str = "empty_caption"  # empty_caption | learned | zeros (text); class models: the null class
    log_every: int = 50
    sample_every: int = 500  # 0: never
    eval_every: int = 0  # oracle scores, FID and KID (see the eval section) every N steps and at the end; 0: never
    checkpoint_every: int = 500  # 0: only at the end
    checkpoints_total_limit: int | None = 2  # keep the newest N checkpoints; None: all
    # a run or pipeline folder whose denoiser's weights the model starts from (what the config adds keeps its own
    # initialisation, checked to start from the base's outputs); None: from scratch
    init_from: Path | None = None
    # new: only the weights the config adds to init_from's (the base frozen); lora: those and LoRA adapters
    trainable: Literal["all", "new", "lora"] = "all"
    # none: each process holds the whole model (DDP); fsdp: FSDP2 shards the model, its optimizer state and EMA over
    # the processes (each block a unit), for models that do not fit one device with their optimizer
    sharding: Literal["none", "fsdp"] = "none"
    lora_rank: int = 16  # trainable: lora
    lora_alpha: float | None = None  # the adapter's scale is lora_alpha / lora_rank; None: lora_rank (scale 1)
    # the modules that get adapters, by name or name suffix (PEFT's target_modules): the blocks' attention and MLP
    lora_targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"])


@dataclass
class SampleConfig:
    scheduler: str | None = None  # the pipeline's scheduler by name; None: ddim, or flow_euler for flow
    steps: int = DEFAULT_STEPS  # 20: scored as well as 50 on the quickstart (benchmarks/quickstart_sweep.py)
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE  # 2: classifier-free guidance (1: none)
    captions: list[str] = field(default_factory=lambda: [  # text models: the grid's rows
        "a large red circle at the top left", "a small blue square in the center",
        "a large green star at the bottom right", "a small yellow triangle at the top right"])
    class_labels: list[int] = field(default_factory=lambda: [0, 1, 2, 3])  # class models: the grid's rows
    per_caption: int = 4  # images per row


@dataclass
class EvalConfig:
    """At ``train.eval_every`` (and at the last step): sample held-out one-object captions that name every
    attribute, score them with the oracle, and FID / KID against the real renders (built-in scenes only)."""

    scenes: int = 256  # held-out scenes sampled and scored, the same ones and the same noise every time
    seed: int = 1  # which held-out scenes
    batch_size: int = 64  # images per sampling call


@dataclass
class ExperimentConfig:
    seed: int = 0
    output_dir: Path = Path("runs/experiment")
    model: ModelConfig = field(default_factory=ModelConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_experiment(source: str | Path | dict | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    config = load_config(source, ExperimentConfig, overrides)
    check_config(config)
    return config


def check_config(config: ExperimentConfig, num_processes: int | None = None) -> None:
    """What the types cannot say, one sentence per mistake, naming the key; what depends on the process count
    once it is known (the trainer's ``num_processes``)."""
    model, train, objective, condition = config.model, config.train, config.objective, config.condition
    data = config.data
    positive = {"train.max_steps": train.max_steps, "train.batch_size": train.batch_size,
                "train.gradient_accumulation_steps": train.gradient_accumulation_steps,
                "objective.num_train_timesteps": objective.num_train_timesteps, "sample.steps": config.sample.steps,
                "sample.per_caption": config.sample.per_caption, "train.log_every": train.log_every}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"Config key '{key}' is {value}; it must be at least 1.")
    for key in ("sample_every", "eval_every", "checkpoint_every", "warmup_steps"):
        if getattr(train, key) < 0:
            raise ConfigError(f"Config key 'train.{key}' is {getattr(train, key)}; use 0 or more.")
    if not 0 <= train.caption_dropout < 1:
        raise ConfigError(f"Config key 'train.caption_dropout' is {train.caption_dropout}; choose a value in [0, 1).")
    if not 0 <= train.ema_decay < 1:
        raise ConfigError(f"Config key 'train.ema_decay' is {train.ema_decay}; choose a value in [0, 1).")
    if train.lr <= 0:
        raise ConfigError(f"Config key 'train.lr' is {train.lr}; it must be positive.")
    for key in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(train, key) < 1:
            raise ConfigError(f"Config key 'train.{key}' is {getattr(train, key)}; choose a value in [0, 1).")
    if train.weight_decay < 0:
        raise ConfigError(f"Config key 'train.weight_decay' is {train.weight_decay}; use 0 or more.")
    if train.max_grad_norm is not None and train.max_grad_norm <= 0:
        raise ConfigError(f"Config key 'train.max_grad_norm' is {train.max_grad_norm}; use a positive value, or null "
                          "for no clipping.")
    if train.checkpoints_total_limit is not None and train.checkpoints_total_limit < 1:
        raise ConfigError(f"Config key 'train.checkpoints_total_limit' is {train.checkpoints_total_limit}; keep at "
                          "least 1 checkpoint, or null for all.")
    if objective.logit_std <= 0:
        raise ConfigError(f"Config key 'objective.logit_std' is {objective.logit_std}; it must be positive.")
    sample = config.sample
    if not sample.captions or not sample.class_labels:
        raise ConfigError("Config keys 'sample.captions' and 'sample.class_labels' need at least one entry each.")
    if condition.source == "class_labels" and condition.num_classes is not None and not all(
            0 <= k < condition.num_classes for k in sample.class_labels):
        raise ConfigError(f"Config key 'sample.class_labels' is {sample.class_labels}; use class ids from 0 to "
                          f"{condition.num_classes - 1}.")
    shards = (num_processes or 1) * train.gradient_accumulation_steps
    if train.batch_size % shards:
        raise ConfigError(f"Config key 'train.batch_size' is {train.batch_size}, which does not split into "
                          f"{num_processes or 1} process(es) x {train.gradient_accumulation_steps} accumulation "
                          f"step(s); "
                          f"choose a multiple of {shards}.")
    if train.null_condition not in NULL_CONDITIONS:
        raise ConfigError(f"Config key 'train.null_condition' is {train.null_condition!r}; choose one of "
                          f"{', '.join(map(repr, NULL_CONDITIONS))}.")
    if model.learn_sigma and model.backbone != "dit":
        raise ConfigError("Config key 'model.learn_sigma' is true, but only the DiT learns sigma; set it to false "
                          "or use model.backbone=dit.")
    if model.learn_sigma and objective.prediction != "epsilon":
        raise ConfigError(f"Config key 'model.learn_sigma' needs objective.prediction=epsilon (the hybrid loss of "
                          f"improved DDPM), not {objective.prediction!r}.")
    if objective.min_snr_gamma is not None and objective.prediction == "flow":
        raise ConfigError("Config key 'objective.min_snr_gamma' applies to epsilon and v prediction, not flow; "
                          "remove it.")
    if model.token_mixer != "attention" and model.backbone != "dit":
        raise ConfigError(f"Config key 'model.token_mixer' is {model.token_mixer!r}, but only the DiT has a token "
                          "mixer to choose; remove it for model.backbone=unet.")
    if model.conv_head and model.backbone != "dit":
        raise ConfigError("Config key 'model.conv_head' adds a convolution after the DiT's patch head; the U-Net "
                          "ends in a convolution already: remove it for model.backbone=unet.")
    if model.mixer_kernel_size < 1 or model.mixer_kernel_size % 2 == 0:
        raise ConfigError(f"Config key 'model.mixer_kernel_size' is {model.mixer_kernel_size}; choose an odd "
                          "positive size (7, as FFNet).")
    if model.preset is not None and model.backbone != "dit":
        raise ConfigError("Config key 'model.preset' names a DiT preset; remove it for model.backbone=unet.")
    if condition.source == "class_labels":
        if condition.num_classes is None or condition.num_classes < 1:
            raise ConfigError("Config key 'condition.num_classes' is required (at least 1) with "
                              "condition.source=class_labels.")
        if train.null_condition == "learned":
            raise ConfigError("Config key 'train.null_condition' is 'learned', but a class-label model's null is its "
                              "null class; remove the key.")
    elif condition.source in ("transformers", "open_clip", "t5") and not condition.name:
        raise ConfigError(f"Config key 'condition.name' is required with condition.source={condition.source} "
                          "(a hub id, a folder or an open_clip model name).")
    if condition.pooled_from is not None:
        if condition.source == "class_labels":
            raise ConfigError("Config key 'condition.pooled_from' pairs two text encoders; remove it for "
                              "condition.source=class_labels.")
        if condition.pooled_from.source in ("transformers", "open_clip", "t5") and not condition.pooled_from.name:
            raise ConfigError(f"Config key 'condition.pooled_from.name' is required with "
                              f"condition.pooled_from.source={condition.pooled_from.source}.")
    if condition.embeddings is not None and not (condition.cache and condition.embeddings.is_file()):
        raise ConfigError(f"Config key 'condition.embeddings' is '{condition.embeddings}'; it needs condition.cache: "
                          "true and a file written by film_diffusion.encoders.save_embeddings.")
    if data.name != "shapes" and data.root is None:
        what = {"folder": "the image folder with metadata.jsonl", "hf": "a folder of parquet or arrow files, or a "
                "hub dataset id", "webdataset": "a folder of .tar shards or a brace pattern"}[data.name]
        raise ConfigError(f"Config key 'data.root' is required with data.name={data.name} ({what}).")
    if data.cache and data.name != "shapes":
        raise ConfigError(f"Config key 'data.cache' keeps drawn built-in scenes; data.name={data.name} reads its "
                          "images from files: set data.cache: false.")
    if data.shuffle_window < 1:
        raise ConfigError(f"Config key 'data.shuffle_window' is {data.shuffle_window}; it must be at least 1.")
    if train.eval_every and data.name != "shapes":
        raise ConfigError("Config key 'train.eval_every' needs data.name=shapes (the oracle reads the built-in "
                          "scenes); set it to 0 for other data.")
    if config.eval.scenes < 2 or config.eval.batch_size < 1:
        raise ConfigError(f"Config keys 'eval.scenes' ({config.eval.scenes}) and 'eval.batch_size' "
                          f"({config.eval.batch_size}) must be at least 2 and 1.")
    if config.vae.precompute and (config.vae.name_or_path is None or data.random_flip or not data.center_crop):
        raise ConfigError("Config key 'vae.precompute' needs vae.name_or_path and data without random augmentation "
                          "(data.random_flip: false, data.center_crop: true): stored latents are of fixed images.")
    if train.trainable != "all" and train.init_from is None:
        raise ConfigError(f"Config key 'train.trainable' is {train.trainable!r}, which needs train.init_from (the base "
                          "whose weights stay frozen); set it, or use trainable: all.")
    if train.trainable == "lora" and (train.lora_rank < 1 or not train.lora_targets):
        raise ConfigError(f"Config keys 'train.lora_rank' ({train.lora_rank}) and 'train.lora_targets' "
                          f"({train.lora_targets}) need a rank of at least 1 and at least one module name.")
    if train.sharding == "fsdp":
        if num_processes is not None and num_processes < 2:
            raise ConfigError("Config key 'train.sharding' is 'fsdp', which shards the model over processes, but this "
                              "run has one; launch 2 or more (torchrun --nproc_per_node N or accelerate launch), or "
                              "set it to none.")
        unsupported = {"train.compile": train.compile, "train.gradient_checkpointing": train.gradient_checkpointing,
                       "train.trainable": train.trainable != "all"}
        if key := next((k for k, on in unsupported.items() if on), None):
            raise ConfigError(f"Config key '{key}' is not supported with train.sharding=fsdp yet; turn it off (or "
                              "use all), or set train.sharding to none.")
    if data.num_workers < 0:
        raise ConfigError(f"Config key 'data.num_workers' is {data.num_workers}; use 0 or more.")
    if train.repa_weight < 0:
        raise ConfigError(f"Config key 'train.repa_weight' is {train.repa_weight}; use 0 (off) or a positive weight.")
    if train.repa_weight:
        unsupported = {"train.sharding": train.sharding == "fsdp", "train.compile": train.compile,
                       "train.gradient_checkpointing": train.gradient_checkpointing,
                       "vae.precompute": config.vae.precompute}
        if key := next((k for k, on in unsupported.items() if on), None):
            raise ConfigError(f"Config key '{key}' is not supported with train.repa_weight (REPA reads one block's "
                              "output and the clean pixels) yet; turn it off, or set train.repa_weight to 0.")
