"""How well a CLIP reads the built-in scenes, measured on held-out scenes with exact ground truth.

Two figures: for each attribute (colour, shape, size, position, count), how often an image's true
caption outscores every caption that differs from it in exactly that attribute; and image-to-caption
top-1 accuracy among random sets of 100 held-out image/caption pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from film_diffusion.data.captions import caption
from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES
from film_diffusion.encoders.clip_openclip import OpenCLIP

ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position", "count")
MAX_COUNT = 4  # count alternatives range over 1..MAX_COUNT objects of the changed kind


def counterfactual_captions(objects: list[dict], attribute: str, index: int) -> tuple[str, list[str]]:
    """The true caption and its alternatives that change ``attribute`` of object ``index`` only.

    Colour, shape, size and position are worded by the "full" template, where such a change alters
    one word or phrase. Count is worded by the "counts" template ("two red circles"): the alternatives
    have more or fewer objects of that object's colour and shape, and differ only in the number.
    """
    target = objects[index]

    def changed(**values: str) -> str:
        return caption([dict(o, **values) if o is target else o for o in objects], "full")

    if attribute == "color":
        return caption(objects, "full"), [changed(color=c) for c in COLORS if c != target["color"]]
    if attribute == "shape":
        return caption(objects, "full"), [changed(shape=s) for s in SHAPES if s != target["shape"]]
    if attribute == "size":
        return caption(objects, "full"), [changed(size=s) for s in SIZES if s != target["size"]]
    if attribute == "position":
        taken = {o["cell"] for o in objects}
        return caption(objects, "full"), [changed(cell=c) for c in CELLS if c not in taken]
    if attribute == "count":
        kind = (target["color"], target["shape"])
        same = [o for o in objects if (o["color"], o["shape"]) == kind]
        others = len(objects) - len(same)

        def with_count(k: int) -> str:  # k objects of the kind, placed where the first one was
            first = objects.index(same[0])
            rest = [o for o in objects if (o["color"], o["shape"]) != kind]
            return caption(rest[:first] + [target] * k + rest[first:], "counts")

        alternatives = [k for k in range(1, MAX_COUNT + 1) if k != len(same) and others + k <= len(CELLS)]
        return caption(objects, "counts"), [with_count(k) for k in alternatives]
    raise ValueError(f"Unknown attribute '{attribute}'; choose one of {', '.join(ATTRIBUTES)}.")


@torch.no_grad()
def evaluate_clip(
    encoder: OpenCLIP, dataset: ShapesDataset, scenes: int = 500, pairs: int = 100, draws: int = 20, seed: int = 0
) -> dict[str, float]:
    """Counterfactual retrieval per attribute (``retrieval/<attribute>``) over ``scenes`` scenes of
    ``dataset`` (a split not trained on), and image-to-caption top-1 (``image_to_caption_top1``)
    among ``pairs`` random pairs, averaged over ``draws`` draws."""
    rng = np.random.default_rng(seed)
    items = [dataset[i] for i in range(scenes)]
    images = torch.cat([encoder.encode_images(torch.stack([it["image"] for it in chunk])) for chunk in _chunks(items)])
    metrics: dict[str, float] = {}
    for attribute in ATTRIBUTES:
        groups = [
            counterfactual_captions(it["objects"], attribute, int(rng.integers(len(it["objects"])))) for it in items
        ]
        texts = _embed_text(encoder, [c for true, alternatives in groups for c in (true, *alternatives)])
        hits, start = [], 0
        for image, (_, alternatives) in zip(images, groups, strict=True):
            scores = texts[start : start + 1 + len(alternatives)] @ image  # the true caption first
            hits.append(bool(scores[0] > scores[1:].max()))
            start += 1 + len(alternatives)
        metrics[f"retrieval/{attribute}"] = float(np.mean(hits))
    captions = [item["caption"] for item in items]
    similarity = images @ _embed_text(encoder, captions).T  # (scenes, scenes)
    top1 = []
    for _ in range(draws):
        chosen = rng.choice(scenes, size=pairs, replace=False)
        best = similarity[chosen][:, chosen].argmax(dim=1).tolist()
        top1 += [captions[chosen[b]] == captions[i] for i, b in zip(chosen, best, strict=True)]
    metrics["image_to_caption_top1"] = float(np.mean(top1))
    return metrics


def _embed_text(encoder: OpenCLIP, captions: list[str]) -> torch.Tensor:
    pooled = torch.cat([encoder.encode(chunk).pooled for chunk in _chunks(captions)])
    return torch.nn.functional.normalize(pooled, dim=-1)


def _chunks(items: list, size: int = 256) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
