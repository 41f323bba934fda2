"""``train.init_from``: start a run from a trained pipeline's denoiser, so that a model can gain a condition
starting from exactly what it drew (as ControlNet, T2I-Adapter and IP-Adapter start their new paths at zero).

Every weight the base has fills the same weight of the new model; what the new config adds (a conditioning
method: ``conditioner.methods.NAME...``) keeps its own initialisation, which for our zero-initialised methods
is the identity. That promise is checked, not assumed: the new model and the base run on one probe batch and
must give the same outputs, or the run stops naming what the config added. ``train.trainable: new`` then trains
only the added weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from film_diffusion.backbones.dit import DiT
from film_diffusion.backbones.unet import UNet
from film_diffusion.conditioning import Condition
from film_diffusion.config import ConfigError
from film_diffusion.errors import UserError, first_line
from film_diffusion.sample import pipeline_folder

PROBE_TOLERANCE = 1e-6
"""The largest difference, on the probe batch, between the new model's outputs and the base's."""


def init_from(model: DiT | UNet, source: str | Path) -> list[str]:
    """Fill ``model`` with the weights of the denoiser in ``source`` (a run folder or a pipeline folder) and
    check that it starts with the base's outputs. Returns the names of the parameters the base did not have."""
    base = load_base_denoiser(source, type(model))
    base_state, state = base.state_dict(), model.state_dict()
    dropped = sorted(set(base_state) - set(state))
    if dropped:
        raise ConfigError(f"Config key 'train.init_from': the base in '{source}' has weights this config's model lacks "
                          f"({_summary(dropped)}); keep the base's conditioning methods and inputs in "
                          "model.conditioning and condition.")
    for name, tensor in base_state.items():
        if tensor.shape != state[name].shape:
            raise ConfigError(f"Config key 'train.init_from': the base's {name} is {tuple(tensor.shape)} but this "
                              f"config's is {tuple(state[name].shape)}; give the model the base's sizes (see its "
                              f"denoiser/config.json) and the same text encoder.")
    model.load_state_dict(base_state, strict=False)
    added = [name for name, _ in model.named_parameters() if name not in base_state]
    difference = _probe_difference(base, model)
    if difference > PROBE_TOLERANCE:
        raise ConfigError(f"Config key 'train.init_from': with what this config adds ({_summary(added) or 'nothing'}) "
                          f"the model does not start from the base's outputs (they differ by {difference:.2e}); "
                          "add methods that start as the identity (zero_init: true) or train without init_from.")
    return added


def freeze_all_but(model: torch.nn.Module, trainable: list[str]) -> None:
    """``train.trainable: new | lora``: gradients only for the parameters named (those the config added, and the
    adapters); a layer an adapter wraps keeps its name's gradient (``x.base_layer.weight`` counts as ``x.weight``)."""
    if not trainable:
        raise ConfigError("Config key 'train.trainable' is 'new', but the config adds no weight to the base in "
                          "train.init_from; add a conditioning method, or use trainable: all.")
    names = set(trainable)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names or name.replace(".base_layer", "") in names)


def load_base_denoiser(source: str | Path, kind: type[DiT | UNet]) -> DiT | UNet:
    """The denoiser of a run's (or a pipeline's) folder, checked to be of the config's backbone."""
    try:
        folder = pipeline_folder(source) / "denoiser"
    except UserError as err:
        raise ConfigError(f"Config key 'train.init_from': {err}") from None
    try:
        saved_class = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"Config key 'train.init_from': '{folder}' has no readable config.json ({first_line(err)}); "
                          "point it at a folder written by film-diffusion.") from None
    if saved_class != kind.__name__:
        raise ConfigError(f"Config key 'train.init_from': the base in '{source}' is a {saved_class}, but this config "
                          f"builds a {kind.__name__}; set model.backbone to the base's.")
    try:
        return kind.from_pretrained(folder, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError) as err:
        raise ConfigError(f"Config key 'train.init_from': could not load '{folder}' ({first_line(err)}).") from None


@torch.no_grad()
def _probe_difference(base: DiT | UNet, model: DiT | UNet) -> float:
    """The largest output difference of the two models on one seeded batch (noise, timesteps, a condition with a
    padded token, class labels), each given the inputs its config reads."""
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    t = torch.tensor([100, 800])
    length = cfg.get("learned_null_tokens") or 6
    tokens = torch.randn(2, length, cfg.cond_token_dim, generator=g) if cfg.cond_token_dim else None
    mask = torch.ones(2, length, dtype=torch.bool) if tokens is not None else None
    if mask is not None:
        mask[1, length // 2:] = False
    pooled = torch.randn(2, cfg.cond_pooled_dim, generator=g) if cfg.cond_pooled_dim else None
    labels = torch.tensor([0, cfg.num_classes - 1]) if cfg.get("num_classes") else None
    outputs = []
    was_training = model.training
    for denoiser in (base, model):
        denoiser.eval()
        inputs = {}
        if denoiser.config.cond_token_dim or denoiser.config.cond_pooled_dim:
            inputs["condition"] = Condition(tokens if denoiser.config.cond_token_dim else None,
                                            mask if denoiser.config.cond_token_dim else None,
                                            pooled if denoiser.config.cond_pooled_dim else None)
        if denoiser.config.get("num_classes"):
            inputs["class_labels"] = labels
        outputs.append(denoiser(x, t, **inputs).sample.float())
    model.train(was_training)
    return (outputs[0] - outputs[1]).abs().max().item()


def _summary(names: list[str]) -> str:
    """Parameter names grouped to their module (``conditioner.methods.cross_attention``), at most three."""
    groups = sorted({".".join(name.split(".")[:3]) if name.startswith("conditioner.") else name.rsplit(".", 1)[0]
                     for name in names})
    return ", ".join(groups[:3]) + (f" and {len(groups) - 3} more" if len(groups) > 3 else "")
