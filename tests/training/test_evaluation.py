"""The evaluation: perfect images score 1 with FID ~ 0, noise scores low; a run logs its scores."""

import json

import pytest
import torch
import torch.nn.functional as F
from runs import tiny_run

from film_diffusion.data.shapes import scene_class
from film_diffusion.evaluation.clip_score import clip_score, scoring_clip
from film_diffusion.evaluation.metrics import kernel_distance
from film_diffusion.evaluation.quality import evaluate_pipeline, held_out_scenes


class RenderingPipeline:
    """Stands in for a perfect model: returns the true render of each caption (or label's scene)."""

    def __init__(self, scenes, text: bool):
        self.text_encoder = object() if text else None
        self.device = torch.device("cpu")
        items = [scenes[i] for i in range(len(scenes))]
        self.by_caption = {item["caption"]: item["image"] for item in items}
        self.by_label = {scene_class(item["objects"]): item["image"] for item in items}

    def __call__(self, prompt=None, class_labels=None, **_):
        images = [self.by_caption[p] for p in prompt] if prompt else [self.by_label[k] for k in class_labels]
        return type("Out", (), {"images": (torch.stack(images) + 1) / 2})


def test_perfect_images_score_one_and_noise_scores_low():
    scenes = held_out_scenes(32, 48, seed=3, holdout=None)
    perfect = evaluate_pipeline(RenderingPipeline(scenes, text=True), scenes, steps=1, guidance_scale=1.0,
                                batch_size=16)
    assert all(perfect[k] == 1.0 for k in ("color", "shape", "size", "position", "count", "all")), perfect

    class NoisePipeline(RenderingPipeline):
        def __call__(self, prompt=None, class_labels=None, **_):
            n = len(prompt or class_labels)
            return type("Out", (), {"images": torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))})

    noise = evaluate_pipeline(NoisePipeline(scenes, text=True), scenes, steps=1, guidance_scale=1.0, batch_size=16)
    assert noise["all"] < 0.1, noise
    # The same images on both sides: FID is rounding only (a singular covariance of 48 samples in 576
    # dimensions), and unbiased KID is slightly negative (it leaves out each image's match with itself).
    assert perfect["fid"] < noise["fid"] / 100 and perfect["kid"] < 0 < noise["kid"], (perfect, noise)
    assert perfect["clip_score"] > noise["clip_score"] + 5, (perfect, noise)


def test_clip_score_is_its_formula_and_prefers_the_true_captions():
    scenes = held_out_scenes(32, 24, seed=5, holdout=None)
    images = torch.stack([scenes[i]["image"] for i in range(len(scenes))])
    captions = [scenes.scene(i)[1] for i in range(len(scenes))]
    clip = scoring_clip()
    with torch.no_grad():
        cosine = (clip.encode_images(images) * F.normalize(clip.encode(captions).pooled, dim=-1)).sum(-1)
    assert clip_score(images, captions, batch_size=10) == pytest.approx((100 * cosine).clamp(min=0).mean().item(),
                                                                        abs=1e-3)
    assert clip_score(images, captions) > clip_score(images, captions[1:] + captions[:1]) + 5
    with pytest.raises(ValueError, match="one caption per image"):
        clip_score(images, captions[:3])


def test_class_models_are_scored_on_colour_and_shape():
    scenes = held_out_scenes(32, 16, seed=4, holdout=None)
    scores = evaluate_pipeline(RenderingPipeline(scenes, text=False), scenes, steps=1, guidance_scale=1.0)
    # Two scenes of one class may differ in size or place; the label states only colour and shape.
    assert scores["color"] == scores["shape"] == scores["color_and_shape"] == 1.0


def test_kernel_distance_is_the_unbiased_mmd_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 4, generator=g, dtype=torch.float64), torch.randn(20, 4, generator=g, dtype=torch.float64)

    def k(x, y):
        return (float(x @ y) / 4 + 1) ** 3

    m, n = len(a), len(b)
    brute = (sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
             + sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
             - 2 * sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n))
    assert abs(kernel_distance(a, b) - brute) < 1e-9
    assert kernel_distance(a, b + 1.0) > 10 * abs(kernel_distance(a, b))


def test_a_run_logs_oracle_scores_on_the_held_out_and_compositional_splits(tmp_path):
    run = tiny_run(tmp_path / "run", "train.max_steps=2", "train.eval_every=2", "data.resolution=32",
                   "eval.scenes=8", "data.holdout=[[red, star]]")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scores = [row for row in rows if "eval/all" in row]
    assert len(scores) == 1 and scores[0]["step"] == 2
    for prefix in ("eval", "eval_cogent"):
        assert all(0 <= scores[0][f"{prefix}/{k}"] <= 1 for k in ("color", "shape", "size", "position", "all"))
        assert scores[0][f"{prefix}/fid"] >= 0 and scores[0][f"{prefix}/clip_score"] >= 0
