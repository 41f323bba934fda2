"""The benchmark suite (``film-diffusion evaluate``): GenEval-style categories of prompts on the built-in scenes,
each scored exactly by the oracle's reading of the generated image.

A prompt is written from a scene (the objects it asks for) by one caption template, and states only what that
template's words say: "a red circle and a blue square" states colours and shapes, not cells or sizes. An image
is right when the objects the oracle reads, described by the stated attributes, are exactly the ones asked for
(nothing missing, nothing extra). Each prompt's scene and text belong to the split it is drawn for (see
:mod:`film_diffusion.data.shapes`), so a val or test prompt is never a training caption. The prompt set of a
category is fixed (seeded by the category alone); the noise each image starts from is seeded separately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from film_diffusion.data.captions import TEMPLATES, caption, relation
from film_diffusion.data.shapes import ALL_PAIRS, SPLITS, caption_split, sample_objects, scene_class, scene_split
from film_diffusion.data.vocabulary import CELLS, SIZES
from film_diffusion.errors import UserError
from film_diffusion.evaluation.metrics import wilson_interval

PROMPT_SEED = 2027  # the prompt sets are the benchmark's, the same for every run and noise seed
MAX_DRAWS = 100_000
Objects = list[dict]


def _single(rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> Objects:
    return sample_objects(rng, 1, 1, pairs)


def _two(rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> Objects:
    return sample_objects(rng, 2, 2, pairs)


def _two_kinds(rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> Objects:
    """Two objects of different (colour, shape), so each can be told from the other by what it is."""
    while True:
        objects = _two(rng, pairs)
        if (objects[0]["color"], objects[0]["shape"]) != (objects[1]["color"], objects[1]["shape"]):
            return objects


def _bound(rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> Objects:
    """Two objects differing in colour and in shape: right only when each colour sits on its own shape."""
    while True:
        objects = _two(rng, pairs)
        if objects[0]["color"] != objects[1]["color"] and objects[0]["shape"] != objects[1]["shape"]:
            return objects


def _counted(rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> Objects:
    """2 to 4 objects of one (colour, shape) in distinct cells, sizes free ("three red circles")."""
    count = int(rng.integers(2, 5))
    color, shape = pairs[int(rng.integers(len(pairs)))]
    cells = rng.permutation(len(CELLS))[:count].tolist()
    return [{"color": color, "shape": shape, "size": SIZES[int(rng.integers(len(SIZES)))], "cell": CELLS[c]}
            for c in cells]  # fmt: skip


@dataclass(frozen=True)
class Category:
    """A family of prompts: how a scene is drawn, how it is worded, and what its score checks beside ``right``."""

    name: str
    description: str
    draw: Callable[[np.random.Generator, Sequence[tuple[str, str]]], Objects]
    template: str
    extra: tuple[str, ...] = ()  # further per-image checks, see ``judge``
    held_out_pairs: bool = False  # compositional: the first object is a pair the run held out


ONE_OBJECT_CHECKS = ("color", "shape", "size", "position", "what")  # every attribute of the one asked object
CATEGORIES: dict[str, Category] = {c.name: c for c in (
    Category("single", "one object: colour, shape, size and cell (\"a small red circle at the top left\")",
             _single, "full", ONE_OBJECT_CHECKS),
    Category("two_objects", "two objects, each with its own size, colour and shape, cells free",
             _two, "attributes", ("count",)),
    Category("counting", "2 to 4 objects of one kind (\"three red circles\")", _counted, "counts", ("count",)),
    Category("binding", "two objects differing in colour and shape (\"a red circle and a blue square\")",
             _bound, "counts", ("colors", "shapes")),
    Category("position_absolute", "two objects, each in its cell", _two, "full", ("what",)),
    Category("position_relative", "\"a small red circle to the left of a large blue square\"", _two_kinds,
             "relation", ("what",)),
    Category("compositional", "two objects in their cells, the first of a (colour, shape) pair the run held out",
             _two, "full", ("what",), held_out_pairs=True),
    Category("held_out_pair", "one object of a (colour, shape) pair the run held out, as \"single\" asks it",
             _single, "full", ONE_OBJECT_CHECKS, held_out_pairs=True),
)}  # fmt: skip
CLASS_LABEL_CATEGORIES = ("single",)
"""A class label is a scene's first (colour, shape) (``scene_class``): only one object's colour and shape can be
asked of a class-label model, so it is judged on those alone."""
SUITES: dict[str, tuple[str, ...]] = {"full": tuple(CATEGORIES), "one_object": ("single", "held_out_pair"),
                                      **{name: (name,) for name in CATEGORIES}}
"""``one_object``: what a model trained on one-object scenes can be asked, seen pairs and held-out ones."""


@dataclass(frozen=True)
class Prompt:
    """One image to make: its text (or class label) and the objects it asks for, of which ``stated`` counts."""

    category: str
    text: str
    objects: Objects
    stated: tuple[str, ...]
    relation: str | None = None
    class_label: int = 0
    extra: tuple[str, ...] = field(default=())


def categories_for(suite: str, split: str, holdout: Sequence[Sequence[str]], takes_text: bool) -> list[str]:
    """The categories ``suite`` runs on ``split`` for a model: compositional needs held-out pairs and the test
    split; a class-label model gets only what its labels can state."""
    if suite not in SUITES:
        raise UserError(f"Unknown suite '{suite}'; choose one of {', '.join(SUITES)}.")
    if split not in SPLITS or split == "train":
        raise UserError(f"Unknown split '{split}' for evaluation; choose val (for tuning) or test (for reporting).")
    names = list(SUITES[suite])
    if not takes_text:
        unstated = [n for n in names if n not in CLASS_LABEL_CATEGORIES]
        if suite != "full" and unstated:
            raise UserError(f"This model is conditioned on class labels, which cannot state the '{suite}' category; "
                            f"choose --suite {' or '.join(CLASS_LABEL_CATEGORIES)} or full.")
        names = [n for n in names if n in CLASS_LABEL_CATEGORIES]
    held_out = [n for n in names if CATEGORIES[n].held_out_pairs]
    if held_out and (not holdout or split != "test"):
        if suite in held_out:
            why = "the run held out no (colour, shape) pairs" if not holdout else "its pairs are in the test split only"
            raise UserError(f"The {suite} category cannot run here: {why}; train with data.holdout and use "
                            "--split test.")
        names = [n for n in names if n not in held_out]
    return names


def draw_prompts(
    category: str, split: str, count: int, holdout: Sequence[Sequence[str]] = (), takes_text: bool = True
) -> list[Prompt]:
    """``count`` prompts of ``category`` on ``split``: scenes drawn from the benchmark's own seed until both the
    scene and its caption are the split's. A run's held-out pairs appear only in the compositional category."""
    spec = CATEGORIES[category]
    held = {tuple(p) for p in holdout}
    seen_pairs = tuple(p for p in ALL_PAIRS if p not in held)
    rng = np.random.default_rng([PROMPT_SEED, list(CATEGORIES).index(category)])
    stated = TEMPLATES[spec.template].states if takes_text else ("color", "shape")
    prompts: list[Prompt] = []
    for _ in range(MAX_DRAWS):
        if len(prompts) == count:
            return prompts
        objects = spec.draw(rng, seen_pairs)
        if spec.held_out_pairs:
            objects[0] |= dict(zip(("color", "shape"), sorted(held)[int(rng.integers(len(held)))], strict=True))
        if scene_split(objects) != split or caption_split(objects, spec.template) != split:
            continue
        label = scene_class(objects)  # what a class-label model (or a model taking both) is given
        text = caption(objects, spec.template) if takes_text else f"class {label}: a {objects[0]['color']} " \
            f"{objects[0]['shape']}"
        kind = relation(objects[0], objects[1]) if spec.template == "relation" else None
        extra = tuple(e for e in spec.extra if takes_text or e in ("color", "shape"))
        prompts.append(Prompt(category, text, objects, stated, kind, label, extra))
    raise UserError(f"Could not draw {count} '{category}' prompts on the {split} split; ask for fewer samples.")


def _described(objects: Sequence[dict], keys: Sequence[str]) -> list[tuple[str, ...]]:
    return sorted(tuple(o[k] for k in keys) for o in objects)


def judge(prompt: Prompt, read: Sequence[dict]) -> dict[str, bool]:
    """Whether ``read`` (the objects the oracle sees) shows what ``prompt`` asks, and the category's further checks:

    right: the read objects, described by the stated attributes, are exactly the asked ones (and stand in the
    asked relation); what: the same by colour and shape alone, wherever they stand (so "what" tells apart from
    "where"); color/shape/size: the asked object is seen in its cell with that attribute (the oracle's per-object
    score); position: the occupied cells are exactly the asked ones; count: as many objects as asked;
    colors/shapes: the asked colours (shapes) are all there, whichever shapes (colours) carry them. Where the
    prompt states no cell (a class label), color/shape/size are judged like colors/shapes.
    """
    asked = prompt.objects
    right = _described(read, prompt.stated) == _described(asked, prompt.stated)
    if right and prompt.relation is not None:
        first, second = (next(o for o in read if (o["color"], o["shape"]) == (a["color"], a["shape"]))
                         for a in asked[:2])  # fmt: skip
        right = relation(first, second) == prompt.relation
    checks = {"right": right}
    by_cell = {o["cell"]: o for o in read}
    for key in prompt.extra:
        if key in ("color", "shape", "size") and "cell" in prompt.stated:
            checks[key] = all(by_cell.get(a["cell"], {}).get(key) == a[key] for a in asked)
        elif key in ("color", "shape", "size"):  # a class label states no cell: the attribute wherever it is
            checks[key] = _described(read, (key,)) == _described(asked, (key,))
        elif key == "position":
            checks[key] = set(by_cell) == {a["cell"] for a in asked}
        elif key == "count":
            checks[key] = len(read) == len(asked)
        elif key == "what":
            checks[key] = _described(read, ("color", "shape")) == _described(asked, ("color", "shape"))
        elif key in ("colors", "shapes"):
            checks[key] = _described(read, (key[:-1],)) == _described(asked, (key[:-1],))
    return checks


def summarize(rows: Sequence[dict], categories: Sequence[str]) -> dict:
    """Per category and check: accuracy, its 95% Wilson interval, right and count; overall: ``right`` pooled over
    every image (the categories hold equally many, so it is also their mean)."""
    summary: dict = {"categories": {}}
    for name in categories:
        mine = [r for r in rows if r["category"] == name]
        checks = {key: [r["checks"][key] for r in mine] for key in mine[0]["checks"]} if mine else {}
        summary["categories"][name] = {
            "prompts": len({r["prompt"] for r in mine}),
            **{key: proportion(values) for key, values in checks.items()},
        }
    summary["overall"] = proportion([r["checks"]["right"] for r in rows])
    return summary


def proportion(values: Sequence[bool]) -> dict[str, float | int]:
    right, count = int(sum(values)), len(values)
    low, high = wilson_interval(right, count)
    return {"accuracy": right / count if count else float("nan"), "low": low, "high": high, "right": right,
            "count": count}  # fmt: skip
