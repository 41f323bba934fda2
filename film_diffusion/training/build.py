"""From an experiment config to the objects a run needs: text encoder, VAE, denoiser, dataset.

Each builder reads one config section; the denoiser takes the encoder's widths (never typed by hand).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from film_diffusion.backbones.dit import DIT_PRESETS, DiT
from film_diffusion.backbones.unet import UNet
from film_diffusion.config import ConfigError
from film_diffusion.data.folder import ImageFolderDataset
from film_diffusion.data.shapes import NUM_SCENE_CLASSES, ShapesDataset, scene_class
from film_diffusion.data.sharded import hf_dataset, webdataset_dataset
from film_diffusion.encoders import (
    OpenCLIP,
    PairedEncoder,
    TextEncoder,
    TransformersCLIP,
    TransformersT5,
    builtin_clip,
)
from film_diffusion.errors import UserError
from film_diffusion.training.config import ConditionConfig, DataConfig, ExperimentConfig, PooledFromConfig, VaeConfig


def build_encoder(condition: ConditionConfig) -> TextEncoder | None:
    """The frozen text encoder the config names (paired with ``pooled_from``'s), or None for class labels."""
    if condition.source == "class_labels":
        return None
    encoder = _one_encoder(condition)
    if condition.pooled_from is None:
        return encoder
    return PairedEncoder(encoder, _one_encoder(condition.pooled_from))


def _one_encoder(condition: ConditionConfig | PooledFromConfig) -> TextEncoder:
    """One encoder from the keys ``condition`` and ``condition.pooled_from`` share."""
    if condition.source == "builtin_clip":
        return builtin_clip(condition.layer)
    if condition.source == "t5":
        return TransformersT5(condition.name, layer=condition.layer, max_length=condition.max_length)
    if condition.source == "transformers":
        return TransformersCLIP(condition.name, layer=condition.layer, use_projection=condition.use_projection,
                                max_length=condition.max_length)
    return OpenCLIP(condition.name, condition.pretrained, layer=condition.layer)


def build_vae(vae: VaeConfig) -> AutoencoderKL | None:
    """The frozen ``AutoencoderKL`` of a latent model, or None in pixel space."""
    if vae.name_or_path is None:
        return None
    try:
        model = AutoencoderKL.from_pretrained(vae.name_or_path, subfolder=vae.subfolder, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise UserError(f"Could not load the VAE '{vae.name_or_path}' ({str(err).splitlines()[0]}); set "
                        "vae.name_or_path to an AutoencoderKL hub id or folder.") from None
    return model.requires_grad_(False).eval()


def latent_shape(config: ExperimentConfig, vae: AutoencoderKL | None) -> tuple[int, int]:
    """(channels, side) of what the denoiser sees: pixels, or the VAE's latents."""
    if vae is None:
        return 3, config.data.resolution
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if config.data.resolution % factor:
        raise ConfigError(f"Config key 'data.resolution' is {config.data.resolution}, which the VAE cannot divide by "
                          f"its downsampling factor {factor}; choose a multiple of {factor}.")
    return vae.config.latent_channels, config.data.resolution // factor


def build_denoiser(config: ExperimentConfig, channels: int, size: int, token_dim: int | None,
                   pooled_dim: int | None, max_length: int | None) -> DiT | UNet:
    """The DiT or U-Net the config describes, reading the encoder's widths (and its length, for a learned null)."""
    model, condition = config.model, config.condition
    text = condition.source != "class_labels"
    common = dict(
        sample_size=size, in_channels=channels, conditioning=model.conditioning, timestep_route=model.timestep_route,
        num_classes=None if text else condition.num_classes, cond_token_dim=token_dim if text else None,
        cond_pooled_dim=pooled_dim if text else None,
        learned_null_tokens=max_length if text and config.train.null_condition == "learned" else None,
    )
    try:
        if model.backbone == "dit":
            if model.preset is not None and model.preset not in DIT_PRESETS:
                raise ConfigError(f"Config key 'model.preset' is {model.preset!r}; choose one of "
                                  f"{', '.join(DIT_PRESETS)}.")
            size_args = DIT_PRESETS[model.preset] if model.preset else vars(model.dit)
            return DiT(**size_args, learn_sigma=model.learn_sigma, token_mixer=model.token_mixer,
                       mixer_kernel_size=model.mixer_kernel_size, conv_head=model.conv_head, **common)
        u = model.unet
        return UNet(block_out_channels=tuple(u.block_out_channels), layers_per_block=u.layers_per_block,
                    attention_levels=tuple(u.attention_levels), num_heads=u.num_heads,
                    norm_num_groups=u.norm_num_groups, attention_pos_embed=u.attention_pos_embed,
                    coord_channels=u.coord_channels, **common)
    except ConfigError:
        raise
    except UserError as err:  # the model's own check, said against the config
        raise ConfigError(f"Config section 'model' ({model.backbone}): {err}") from None


def build_dataset(data: DataConfig, condition: ConditionConfig) -> Dataset:
    """Items ``{"image": [3, H, W] in [-1, 1], "caption": str}``, plus ``"label"`` for class labels."""
    labels = condition.source == "class_labels"
    if data.name == "shapes":
        if labels and condition.num_classes != NUM_SCENE_CLASSES:
            raise ConfigError(f"Config key 'condition.num_classes' is {condition.num_classes}, but the built-in scenes "
                              f"have {NUM_SCENE_CLASSES} classes (the first object's colour x shape); set it to "
                              f"{NUM_SCENE_CLASSES}.")
        try:
            scenes = ShapesDataset(data.resolution, "train", data.seed, data.max_objects, data.holdout or None,
                                   data.length, data.min_objects, data.templates, data.cache)
        except UserError as err:  # the dataset's own check, said against the config
            raise ConfigError(f"Config section 'data': {err}") from None
        return LabelledScenes(scenes) if labels else scenes
    transform = dict(resolution=data.resolution, center_crop=data.center_crop, random_flip=data.random_flip)
    classes = condition.num_classes if labels else None
    if data.name == "hf":
        return hf_dataset(data.root, data.image_column, data.caption_column, data.label_column, classes,
                          data.shuffle_window, **transform)
    if data.name == "webdataset":
        return webdataset_dataset(data.root, data.caption_column, data.label_column, classes, data.shuffle_window,
                                  **transform)
    if not Path(data.root).is_dir():
        raise ConfigError(f"Config key 'data.root' is '{data.root}', which is not a folder; point it at the images.")
    if labels:
        return ClassFolder(data, condition.num_classes)
    return ImageFolderDataset(data.root, **transform)


class LabelledScenes(Dataset):
    """Built-in scenes with a class label: the first object's (colour, shape)."""

    def __init__(self, scenes: ShapesDataset):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        item = self.scenes[index]
        return {**item, "label": scene_class(item["objects"])}


class ClassFolder(Dataset):
    """An ImageNet-style folder (one sub-folder per class, sorted names are labels 0..N-1), read by
    torchvision's ``ImageFolder`` and transformed as the captioned folder is."""

    def __init__(self, data: DataConfig, num_classes: int):
        try:
            self.images = ImageFolder(data.root)
        except FileNotFoundError as err:  # no class folder, or no image in them
            raise ConfigError(f"Config key 'data.root' is '{data.root}': {err}; class labels need one sub-folder "
                              "of images per class.") from None
        if len(self.images.classes) != num_classes:
            raise ConfigError(f"Config key 'condition.num_classes' is {num_classes}, but '{data.root}' has "
                              f"{len(self.images.classes)} class folders; make them agree.")
        self.transform = ImageFolderDataset.make_transform(data.resolution, data.center_crop, data.random_flip)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image, label = self.images[index]
        return {"image": self.transform(image.convert("RGB")), "caption": "", "label": label}
