"""Builds the conditioning methods a model's config lists and runs them once per forward pass.

This is the only place that maps config names to classes: ``METHODS`` below. Adding a method is one
new file plus one line here; no backbone changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from film_diffusion.conditioning.adaln_single import AdaLNSingle
from film_diffusion.conditioning.adaln_zero import AdaLNZero
from film_diffusion.conditioning.base import ConditioningMethod, Wiring
from film_diffusion.conditioning.concat import Concat
from film_diffusion.conditioning.condition import Condition
from film_diffusion.conditioning.cross_attention import CrossAttention
from film_diffusion.conditioning.film import FiLM
from film_diffusion.conditioning.joint_attention import JointAttention
from film_diffusion.conditioning.learned_null import LearnedNull
from film_diffusion.conditioning.sites import Signals, Site, SiteState
from film_diffusion.errors import UserError
from film_diffusion.layers import LabelEmbedder

METHODS: dict[str, type[ConditioningMethod]] = {
    "film": FiLM,
    "adaln_zero": AdaLNZero,
    "cross_attention": CrossAttention,
    "concat": Concat,
    "adaln_single": AdaLNSingle,
    "joint_attention": JointAttention,
}

TIMESTEP_ROUTES = ("native", "with_condition")

MethodSpec = str | dict[str, Any]
"""A method in a config: its name, or a mapping ``{"name": ..., **options}``."""


def parse_methods(conditioning: MethodSpec | Sequence[MethodSpec] | None) -> list[tuple[str, dict[str, Any]]]:
    """Normalise ``"film"``, ``["film", {"name": "cross_attention", "num_heads": 8}]`` to (name, options) pairs."""
    if conditioning is None:
        return []
    if isinstance(conditioning, (str, dict)):
        conditioning = [conditioning]
    parsed = []
    for spec in conditioning:
        if isinstance(spec, str):
            name, options = spec, {}
        elif isinstance(spec, dict) and "name" in spec:
            name, options = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        else:
            raise UserError(f"Conditioning entry {spec!r} must be a method name or a mapping with a 'name' key.")
        if name not in METHODS:
            raise UserError(f"Unknown conditioning method {name!r}; choose from {', '.join(sorted(METHODS))}.")
        if name in (n for n, _ in parsed):
            raise UserError(f"Conditioning method {name!r} is listed twice; list each method once.")
        parsed.append((name, options))
    return parsed


def build_method(name: str, wiring: Wiring, options: dict[str, Any]) -> ConditioningMethod:
    cls = METHODS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "wiring")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"Bad option {', '.join(map(repr, unknown))} for conditioning method {name!r}; "
                        f"its options are: {', '.join(accepted)}.")
    return cls(wiring, **options)


class ConditioningStack(nn.Module):
    """All conditioning of one model: the condition embedders and the listed methods.

    ``native_method`` is the backbone's own way of taking the timestep (adaLN-Zero for the DiT,
    FiLM-style scale-shift for the U-Net). With ``timestep_route="native"`` the timestep goes there
    (sharing the method when the condition uses it too, as in the DiT paper); with ``"with_condition"``
    it travels with the condition through every listed method.
    """

    def __init__(self, conditioning: MethodSpec | Sequence[MethodSpec] | None, timestep_route: str,
                 native_method: str, sites: Sequence[Site], embed_dim: int, cond_token_dim: int | None = None,
                 cond_pooled_dim: int | None = None, num_classes: int | None = None,
                 learned_null_tokens: int | None = None):
        super().__init__()
        if timestep_route not in TIMESTEP_ROUTES:
            raise UserError(f"Unknown timestep_route {timestep_route!r}; use 'native' or 'with_condition'.")
        specs = parse_methods(conditioning)
        if timestep_route == "with_condition" and not specs:
            raise UserError("timestep_route='with_condition' needs at least one conditioning method to carry "
                            "the timestep; list one or use timestep_route='native'.")
        shared = dict(sites=tuple(sites), embed_dim=embed_dim, token_dim=cond_token_dim,
                      has_pooled=cond_pooled_dim is not None or num_classes is not None)
        self.methods = nn.ModuleDict()
        names = [name for name, _ in specs]
        carriers = [name for name, _ in specs if name == native_method or METHODS[name].timestep_method]
        if len(carriers) > 1:
            raise UserError(f"Conditioning methods {' and '.join(carriers)} would each modulate every block with the "
                            "timestep; list one of them.")
        if timestep_route == "native" and not carriers:
            self.methods["timestep"] = build_method(
                native_method, Wiring(**shared, use_condition=False, use_timestep=True), {})
        for name, options in specs:
            carries_time = timestep_route == "with_condition" or name in carriers
            self.methods[name] = build_method(name, Wiring(**shared, use_condition=True, use_timestep=carries_time),
                                              options)
        reads_pooled = any(m.reads_pooled for m in self.methods.values())
        if specs and not any(m.reads_pooled or m.reads_tokens for m in self.methods.values()):
            raise UserError(f"No listed conditioning method reads the condition ({', '.join(names)} without a pooled "
                            "condition): set cond_pooled_dim (the text encoder's pooled_dim) or add cross_attention "
                            "or joint_attention, which read the caption's tokens.")
        if num_classes is not None and not reads_pooled:
            raise UserError("num_classes is set but no listed method reads a pooled condition; add film, "
                            "adaln_zero, adaln_single, concat or joint_attention to conditioning.")
        self.pooled_proj = nn.Linear(cond_pooled_dim, embed_dim) if cond_pooled_dim and reads_pooled else None
        self.label_embedder = LabelEmbedder(num_classes, embed_dim) if num_classes is not None else None
        self.learned_null = None
        if learned_null_tokens is not None:
            if cond_token_dim is None and cond_pooled_dim is None:
                raise UserError("learned_null_tokens is set but the model takes no text condition; set "
                                "cond_token_dim / cond_pooled_dim or leave learned_null_tokens unset.")
            if learned_null_tokens < 1:
                raise UserError(f"learned_null_tokens={learned_null_tokens} must be at least 1: the text "
                                "encoder's max_length, so the null batches with encoded captions.")
            # Only what some method reads: a null part nothing reads would get no gradient (DDP refuses that).
            token_dim = cond_token_dim if any(m.reads_tokens for m in self.methods.values()) else None
            pooled_dim = cond_pooled_dim if self.pooled_proj is not None else None
            self.learned_null = LearnedNull(learned_null_tokens, token_dim, pooled_dim)

    def check_inputs(self, condition: Condition | None, class_labels: torch.Tensor | None) -> None:
        """Every embedder the model was built with must be fed: an unfed one gets no gradient, which
        DDP (without ``find_unused_parameters``) refuses, and silently drops part of the condition."""
        if class_labels is not None and self.label_embedder is None:
            raise ValueError("class_labels were passed to a model built without num_classes; "
                             "rebuild it with num_classes set or pass a text condition instead.")
        if class_labels is None and self.label_embedder is not None:
            raise ValueError(f"This model was built with num_classes={self.label_embedder.num_classes} and needs "
                             f"class_labels; pass them (the null class {self.label_embedder.null_class} for "
                             "the unconditional branch).")
        if self.pooled_proj is not None and (condition is None or condition.pooled is None):
            raise ValueError(f"This model was built with cond_pooled_dim={self.pooled_proj.in_features} and needs "
                             "condition.pooled (the text encoder's pooled embedding, or the null condition's).")

    def extra_input_channels(self, site: Site) -> int:
        return sum(m.extra_input_channels(site) for m in self.methods.values())

    def zeroed_gates(self) -> set[str]:
        """Names of the gate sites some method starts at zero (see ``ConditioningMethod.zeroed_gates``)."""
        return {site.name for m in self.methods.values() for site in m.zeroed_gates()}

    def forward(self, t_emb: torch.Tensor, condition: Condition | None = None,
                class_labels: torch.Tensor | None = None, null_mask: torch.Tensor | None = None) -> SiteState:
        """``null_mask [B]``: samples whose condition is replaced by the learned null here, inside the forward
        (caption dropout), where a sharded model (FSDP) holds the null's weights whole."""
        if null_mask is not None:
            if self.learned_null is None or condition is None:
                raise ValueError("null_mask needs a text condition and a model built with learned_null_tokens; "
                                 "apply another null to the condition itself.")
            condition = condition.where(null_mask, self.learned_null(len(null_mask)))
        signals = self.signals(t_emb, condition, class_labels)
        state = SiteState()
        for method in self.methods.values():
            method.register(signals, state)
        return state

    def signals(self, t_emb: torch.Tensor, condition: Condition | None = None,
                class_labels: torch.Tensor | None = None) -> Signals:
        """What the methods read for this batch: the timestep embedding, the embedded pooled condition (text and/or
        class label) and the tokens."""
        self.check_inputs(condition, class_labels)
        pooled = None
        if self.pooled_proj is not None:
            pooled = self.pooled_proj(condition.pooled.to(self.pooled_proj.weight.dtype))
        if self.label_embedder is not None:
            labels = self.label_embedder(class_labels)
            pooled = labels if pooled is None else pooled + labels
        return Signals(
            t_emb=t_emb,
            pooled=pooled,
            tokens=None if condition is None else condition.tokens,
            mask=None if condition is None else condition.mask,
        )
