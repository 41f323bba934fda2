"""Counterfactual captions change exactly one attribute of one object."""

from __future__ import annotations

import pytest

from film_diffusion.encoders.clip_retrieval import ATTRIBUTES, counterfactual_captions

SCENE = [
    {"color": "red", "shape": "circle", "size": "small", "cell": "top left"},
    {"color": "blue", "shape": "star", "size": "large", "cell": "center"},
    {"color": "red", "shape": "circle", "size": "large", "cell": "bottom"},
]


@pytest.mark.parametrize("attribute", ["color", "shape", "size"])
def test_one_word_changes_for_colour_shape_and_size(attribute):
    true, alternatives = counterfactual_captions(SCENE, attribute, index=1)
    assert len(alternatives) == {"color": 7, "shape": 3, "size": 1}[attribute]
    for alternative in alternatives:
        changed = [(a, b) for a, b in zip(true.split(), alternative.split(), strict=True) if a != b]
        assert len(changed) == 1 and changed[0][0] == SCENE[1][attribute]


def test_position_moves_the_object_to_every_free_cell():
    true, alternatives = counterfactual_captions(SCENE, "position", index=1)
    first, last = "a small red circle at the top left, a large blue star", "and a large red circle at the bottom"
    assert true == f"{first} in the center {last}"
    assert len(alternatives) == 6 and f"{first} on the right {last}" in alternatives


def test_count_changes_only_the_number_of_that_kind():
    true, alternatives = counterfactual_captions(SCENE, "count", index=0)
    assert true == "two red circles and a blue star"
    assert alternatives == [f"{n} and a blue star" for n in ("a red circle", "three red circles", "four red circles")]


def test_every_attribute_has_alternatives_and_none_equals_the_truth():
    for attribute in ATTRIBUTES:
        true, alternatives = counterfactual_captions(SCENE, attribute, index=2)
        assert alternatives and true not in alternatives and len(set(alternatives)) == len(alternatives)
