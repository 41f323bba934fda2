"""Counterfactual scenes and captions change exactly one attribute of one object."""

from __future__ import annotations

import math

import numpy as np
import pytest

from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.encoders import builtin_clip
from film_diffusion.encoders.clip_retrieval import counterfactual_captions, evaluate_clip
from film_diffusion.encoders.counterfactuals import variants

SCENE = [
    {"color": "red", "shape": "circle", "size": "small", "cell": "top left"},
    {"color": "blue", "shape": "star", "size": "large", "cell": "center"},
    {"color": "red", "shape": "circle", "size": "large", "cell": "bottom"},
]


@pytest.mark.parametrize("attribute", ["color", "shape", "size"])
def test_one_word_changes_for_colour_shape_and_size(attribute):
    true, alternatives = counterfactual_captions(SCENE, attribute, 1, np.random.default_rng(0), max_objects=9)
    assert len(alternatives) == {"color": 7, "shape": 3, "size": 1}[attribute]
    for alternative in alternatives:
        changed = [(a, b) for a, b in zip(true.split(), alternative.split(), strict=True) if a != b]
        assert len(changed) == 1 and changed[0][0] == SCENE[1][attribute]


def test_position_moves_the_object_to_every_free_cell():
    true, alternatives = counterfactual_captions(SCENE, "position", 1, np.random.default_rng(0), max_objects=9)
    first, last = "a small red circle at the top left, a large blue star", "and a large red circle at the bottom"
    assert true == f"{first} in the center {last}"
    assert len(alternatives) == 6 and f"{first} on the right {last}" in alternatives


def test_count_changes_only_the_number_of_that_kind():
    """Worded by "counted": the number changes and an object's phrase is added or dropped, nothing else."""
    true, alternatives = counterfactual_captions(SCENE, "count", 0, np.random.default_rng(0), max_objects=9)
    assert true.startswith("three shapes: a small red circle at the top left, a large blue star in the center")
    assert [a.split(":")[0] for a in alternatives] == ["two shapes", "four shapes", "five shapes"]
    for alternative in alternatives:  # the first two objects stay; only red circles come or go
        phrases = alternative.split(": ", 1)[1].replace(" and ", ", ").split(", ")
        assert phrases[:2] == ["a small red circle at the top left", "a large blue star in the center"]
        assert all(" red circle " in p for p in phrases[2:])


def test_an_attribute_no_scene_can_vary_is_nan_not_a_crash():
    """One-object scenes with max_objects=1 have no count variant: the figure is NaN over 0 scenes."""
    metrics = evaluate_clip(builtin_clip(), ShapesDataset(48, "test", seed=1, max_objects=1), scenes=12, pairs=10,
                            draws=2)  # fmt: skip
    assert metrics["scenes/count"] == 0 and math.isnan(metrics["retrieval/count"])
    assert metrics["scenes/color"] == 12 and 0 <= metrics["retrieval/color"] <= 1


@pytest.mark.parametrize("attribute", ["color", "shape", "size", "position"])
def test_variants_change_one_attribute_of_one_object(attribute):
    key = "cell" if attribute == "position" else attribute
    for scene in variants(SCENE, attribute, 2, np.random.default_rng(0), max_objects=9):
        changed = [(a, b) for a, b in zip(SCENE, scene, strict=True) if a != b]
        assert len(changed) == 1 and [k for k in changed[0][0] if changed[0][0][k] != changed[0][1][k]] == [key]
        assert len({o["cell"] for o in scene}) == len(scene)


def test_count_variants_add_or_drop_objects_of_that_kind_only():
    counts = []
    for scene in variants(SCENE, "count", 0, np.random.default_rng(0), max_objects=9):
        assert [o for o in scene if o["shape"] != "circle"] == [SCENE[1]]
        assert len({o["cell"] for o in scene}) == len(scene)
        counts.append(sum(o["shape"] == "circle" for o in scene))
    assert counts == [1, 3, 4]


def test_count_variants_stay_within_the_datasets_object_limit():
    assert [len(v) for v in variants(SCENE, "count", 0, np.random.default_rng(0), max_objects=4)] == [2, 4]
    assert variants(SCENE, "count", 1, np.random.default_rng(0), max_objects=3) == []  # a lone star, full scene
