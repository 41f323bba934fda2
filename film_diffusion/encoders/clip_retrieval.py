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
from film_diffusion.encoders.clip_openclip import OpenCLIP
from film_diffusion.encoders.counterfactuals import ATTRIBUTES, variants


def counterfactual_captions(
    objects: list[dict], attribute: str, index: int, rng: np.random.Generator, max_objects: int
) -> tuple[str, list[str]]:
    """The true caption and the captions of every variant that changes ``attribute`` of object ``index``.

    Colour, shape, size and position are worded by the "full" template, where such a change alters one
    word or phrase; count by the "counted" template ("two shapes: ..."), where it alters the number and adds
    or drops an object's phrase. (Not "counts": its one-object wording, "a red circle", states no cell, so
    it can be a training caption even for a test scene.)
    """
    template = "counted" if attribute == "count" else "full"
    scenes = variants(objects, attribute, index, rng, max_objects)
    return caption(objects, template), [caption(scene, template) for scene in scenes]


@torch.no_grad()
def evaluate_clip(
    encoder: OpenCLIP, dataset: ShapesDataset, scenes: int = 500, pairs: int = 100, draws: int = 20, seed: int = 0
) -> dict[str, float]:
    """Counterfactual retrieval per attribute (``retrieval/<attribute>``) over the first ``scenes``
    scenes of ``dataset`` (a split not trained on), and image-to-caption top-1
    (``image_to_caption_top1``) among ``pairs`` random pairs, averaged over ``draws`` draws.

    Alternatives are scenes the dataset could hold (at most ``max_objects`` objects); a scene where no
    object has a count variant is left out of the count figure (``scenes/count`` says how many remain; with none,
    the figure is NaN).
    """
    rng = np.random.default_rng(seed)
    items = [dataset[i] for i in range(scenes)]
    images = torch.cat([encoder.encode_images(torch.stack([it["image"] for it in chunk])) for chunk in _chunks(items)])
    metrics: dict[str, float] = {}
    for attribute in ATTRIBUTES:
        tests = []  # (image, true caption, alternatives)
        for image, item in zip(images, items, strict=True):
            for index in rng.permutation(len(item["objects"])):
                true, alternatives = counterfactual_captions(
                    item["objects"], attribute, int(index), rng, dataset.max_objects
                )
                if alternatives:
                    tests.append((image, true, alternatives))
                    break
        metrics[f"scenes/{attribute}"] = len(tests)
        if not tests:  # e.g. count, when every scene already holds max_objects objects of one object each
            metrics[f"retrieval/{attribute}"] = float("nan")
            continue
        texts = _embed_text(encoder, [c for _, true, alternatives in tests for c in (true, *alternatives)])
        hits, start = [], 0
        for image, _, alternatives in tests:
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
