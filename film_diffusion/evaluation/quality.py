"""Quality of a sampling pipeline on the built-in scenes: the oracle's accuracy on held-out captions that
name every attribute they are scored on, in-domain FID / KID against real renders, and CLIP score.

The captions use the ``full`` wording (size, colour, shape and position of one object), so every
attribute the oracle scores is stated; the noise is fixed by the seed, so the same model gives the
same figures. A class-label model is scored on what its label states (the object's colour and shape).
"""

from __future__ import annotations

import torch

from film_diffusion.data.shapes import ShapesDataset, scene_class
from film_diffusion.evaluation.clip_score import clip_score
from film_diffusion.evaluation.metrics import frechet_distance, kernel_distance
from film_diffusion.evaluation.oracle_weights import load_oracle


def held_out_scenes(resolution: int, count: int, seed: int, holdout: list[list[str]] | None,
                    split: str = "val") -> ShapesDataset:
    """``count`` one-object scenes of a split never trained on, captioned in the full wording."""
    return ShapesDataset(resolution, split, seed=seed, max_objects=1, min_objects=1, holdout=holdout or None,
                         length=count, templates=["full"])


def scene_inputs(pipe, truth: list[tuple[list[dict], str]]) -> dict[str, list]:
    """The pipeline keywords that ask for these ``(objects, caption)`` scenes: their captions for a text model,
    the class of their first object for a class-label one."""
    if pipe.text_encoder is not None:
        return {"prompt": [caption for _, caption in truth]}
    return {"class_labels": [scene_class(objects) for objects, _ in truth]}


@torch.no_grad()
def evaluate_pipeline(pipe, scenes: ShapesDataset, steps: int, guidance_scale: float, seed: int = 0,
                      batch_size: int = 64) -> dict[str, float]:
    """Sample one image per scene (its caption, or its class label) and score it; keys: the oracle's
    ``color``, ``shape``, ``size``, ``position``, ``count``, ``all`` (text) or ``color``, ``shape``,
    ``color_and_shape`` (labels), then ``fid`` and ``kid``, and for text ``clip_score`` (the built-in CLIP's)."""
    text = pipe.text_encoder is not None
    truth = [scenes.scene(i) for i in range(len(scenes))]
    fakes = []
    for start in range(0, len(truth), batch_size):
        chunk = truth[start:start + batch_size]
        images = pipe(**scene_inputs(pipe, chunk), num_inference_steps=steps, guidance_scale=guidance_scale,
                      output_type="pt", generator=torch.Generator(pipe.device).manual_seed(seed + start)).images
        fakes.append(images.cpu() * 2 - 1)  # the oracle reads [-1, 1]
    fake = torch.cat(fakes)
    oracle = load_oracle(scenes.resolution)
    objects = [objects for objects, _ in truth]
    if text:
        scores = oracle.score(fake, objects)
    else:
        seen = oracle.read_objects(fake)
        hits = [[any(o[k] == want[0][k] for o in got) for k in ("color", "shape")] for got, want in zip(seen, objects,
                                                                                                       strict=True)]
        scores = {"color": _mean(h[0] for h in hits), "shape": _mean(h[1] for h in hits),
                  "color_and_shape": _mean(all(h) for h in hits)}
    real = torch.stack([scenes[i]["image"] for i in range(len(scenes))])
    real_features, fake_features = oracle.features(real), oracle.features(fake)
    scores |= {"fid": frechet_distance(real_features, fake_features),
               "kid": kernel_distance(real_features, fake_features)}
    if text:
        scores["clip_score"] = clip_score(fake, [caption for _, caption in truth])
    return scores


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
