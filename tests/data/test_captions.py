"""Captions agree with the ground truth: every caption is parsed back, by rules written here from the
wording alone, and compared with the scene's objects."""

import re

import pytest

from film_diffusion.data.captions import TEMPLATES, caption
from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES, cell_row_col
from film_diffusion.errors import UserError

WHERE = {
    "at the top left": "top left", "at the top right": "top right", "at the top": "top",
    "on the left": "left", "in the center": "center", "on the right": "right",
    "at the bottom left": "bottom left", "at the bottom right": "bottom right", "at the bottom": "bottom",
}  # fmt: skip
NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
NOUN = rf"an? ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
PLACE = "|".join(sorted(WHERE, key=len, reverse=True))


def split_list(text: str) -> list[str]:
    head, _, last = text.rpartition(" and ")
    return (head.split(", ") if head else []) + [last]


def parse_noun(text: str) -> dict:
    size, color, shape = re.fullmatch(NOUN, text).groups()
    return {"size": size, "color": color, "shape": shape}


def parse_placed(text: str) -> dict:
    noun, place = re.fullmatch(rf"(.+) ({PLACE})", text).groups()
    return {**parse_noun(noun), "cell": WHERE[place]}


def relation_holds(relation: str, a: dict, b: dict) -> bool:
    (ra, ca), (rb, cb) = cell_row_col(a["cell"]), cell_row_col(b["cell"])
    return {"to the left of": ca < cb, "to the right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


def check(text: str, objects: list[dict]) -> str:
    """Parse ``text`` and assert it describes ``objects``; return the template recognised."""
    without_cells = [{k: o[k] for k in ("size", "color", "shape")} for o in objects]
    if m := re.fullmatch(rf"({NOUN}) (to the left of|to the right of|above|below) ({NOUN})(?:, with (.+))?", text):
        first, second = parse_noun(m.group(1)), parse_noun(m.group(6))
        assert [first, second] == without_cells[:2]
        assert relation_holds(m.group(5), objects[0], objects[1])
        assert ([parse_placed(p) for p in split_list(m.group(10))] if m.group(10) else []) == objects[2:]
        return "relation"
    if m := re.fullmatch(r"(\w+) shapes?: (.+)", text):
        assert NUMBER[m.group(1)] == len(objects)
        assert [parse_placed(p) for p in split_list(m.group(2))] == objects
        return "counted"
    if " there is " in text:
        parts = [re.fullmatch(rf"({PLACE}) there is (.+)", p).groups() for p in split_list(text)]
        assert [{**parse_noun(noun), "cell": WHERE[place]} for place, noun in parts] == objects
        return "position_first"
    if re.search(rf"({PLACE})$", text):
        assert [parse_placed(p) for p in split_list(text)] == objects
        return "full"
    if re.fullmatch(rf"{NOUN}((, | and ){NOUN})*", text):
        assert [parse_noun(p) for p in split_list(text)] == without_cells
        return "attributes"
    counted: dict[tuple[str, str], int] = {}
    for part in split_list(text):
        if m := re.fullmatch(rf"an? ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})", part):
            key, n = m.groups(), 1
        else:
            number, color, plural = re.fullmatch(r"(\w+) (\w+) (\w+)s", part).groups()
            key, n = (color, plural), NUMBER[number]
        assert key not in counted
        counted[key] = n
    truth: dict[tuple[str, str], int] = {}
    for o in objects:
        truth[o["color"], o["shape"]] = truth.get((o["color"], o["shape"]), 0) + 1
    assert counted == truth
    return "counts"


def test_captions_parse_back_to_the_ground_truth():
    dataset = ShapesDataset(split="train", seed=3, length=3000)
    seen = [check(text, objects) for objects, text in map(dataset.scene, range(len(dataset)))]
    assert set(seen) == set(TEMPLATES)  # every template was drawn and every one was checked


def test_every_template_agrees_on_crowded_scenes():
    dataset = ShapesDataset(split="val", seed=4, min_objects=4, max_objects=9, length=200)
    for i in range(len(dataset)):
        objects, _ = dataset.scene(i)
        for name in TEMPLATES:
            assert check(caption(objects, name), objects) == name


def test_full_caption_changes_by_one_word_per_attribute():
    objects = [
        {"color": "red", "shape": "circle", "size": "large", "cell": "top left"},
        {"color": "blue", "shape": "star", "size": "small", "cell": "center"},
    ]
    base = caption(objects, "full").split()
    assert " ".join(base) == "a large red circle at the top left and a small blue star in the center"
    for key, value in [("color", "green"), ("shape", "square"), ("size", "large")]:
        changed = caption([objects[0], {**objects[1], key: value}], "full").split()
        assert len(changed) == len(base) and sum(a != b for a, b in zip(base, changed, strict=True)) == 1


def test_articles_follow_the_next_word():
    assert caption([{"color": "orange", "shape": "star", "size": "small", "cell": "top"}], "counts") == "an orange star"


def test_caption_errors():
    one = [{"color": "red", "shape": "circle", "size": "large", "cell": CELLS[0]}]
    with pytest.raises(UserError, match="Unknown caption template 'poem'; choose one of full"):
        caption(one, "poem")
    with pytest.raises(ValueError, match="needs at least 2 objects"):
        caption(one, "relation")
