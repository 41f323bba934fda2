"""Captions for the built-in scenes: several templates with varied wording, each a pure function of
the objects, so that any module can caption a scene it changed (counterfactual captions)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES, cell_row_col
from film_diffusion.errors import UserError

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}  # fmt: skip


ALL_STATED = ("cell", "color", "shape", "size")


@dataclass(frozen=True)
class Template:
    """How to word a scene; ``min_objects`` > 1 for templates that relate two objects. ``states`` names the
    attributes its words give of every object: a wording that leaves one out is shared by every scene that
    differs only there, so the splits key it by what it states (``film_diffusion.data.shapes.caption_split``)."""

    render: Callable[[Sequence[dict]], str]
    min_objects: int = 1
    states: tuple[str, ...] = ALL_STATED


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _noun(obj: dict) -> str:
    return _a(f"{obj['size']} {obj['color']} {obj['shape']}")


def _placed(obj: dict) -> str:
    return f"{_noun(obj)} {POSITION_PHRASES[obj['cell']]}"


def _full(objects: Sequence[dict]) -> str:
    return _join([_placed(o) for o in objects])


def _counted(objects: Sequence[dict]) -> str:
    return f"{NUMBERS[len(objects)]} {'shape' if len(objects) == 1 else 'shapes'}: {_full(objects)}"


def _position_first(objects: Sequence[dict]) -> str:
    return _join([f"{POSITION_PHRASES[o['cell']]} there is {_noun(o)}" for o in objects])


def _attributes(objects: Sequence[dict]) -> str:
    return _join([_noun(o) for o in objects])


def _counts(objects: Sequence[dict]) -> str:
    groups: dict[tuple[str, str], int] = {}
    for o in objects:  # dicts keep first-seen order, so the wording follows the object order
        groups[o["color"], o["shape"]] = groups.get((o["color"], o["shape"]), 0) + 1
    return _join([_a(f"{c} {s}") if n == 1 else f"{NUMBERS[n]} {c} {s}s" for (c, s), n in groups.items()])


def relation(a: dict, b: dict) -> str:
    """Where ``a`` is relative to ``b``: the larger of the column and row offsets decides."""
    (row_a, col_a), (row_b, col_b) = cell_row_col(a["cell"]), cell_row_col(b["cell"])
    if abs(col_a - col_b) >= abs(row_a - row_b):
        return "to the left of" if col_a < col_b else "to the right of"
    return "above" if row_a < row_b else "below"


def _relation(objects: Sequence[dict]) -> str:
    first, second, *rest = objects
    text = f"{_noun(first)} {relation(first, second)} {_noun(second)}"
    return text + (f", with {_full(rest)}" if rest else "")


TEMPLATES: dict[str, Template] = {
    "full": Template(_full),
    "counted": Template(_counted),
    "position_first": Template(_position_first),
    "attributes": Template(_attributes, states=("color", "shape", "size")),
    "counts": Template(_counts, states=("color", "shape")),
    "relation": Template(_relation, min_objects=2, states=("color", "shape", "size")),
}


def caption(objects: Sequence[dict], template: str = "full") -> str:
    """The caption of ``objects`` (dicts with color, shape, size, cell) worded by ``template``.

    "full" names every attribute of every object, in order, so changing one attribute of one object
    changes exactly one word of it.
    """
    if template not in TEMPLATES:
        raise UserError(f"Unknown caption template '{template}'; choose one of {', '.join(TEMPLATES)}.")
    if len(objects) < TEMPLATES[template].min_objects:
        raise ValueError(f"Template '{template}' needs at least {TEMPLATES[template].min_objects} objects.")
    return TEMPLATES[template].render(objects)


def words(text: str) -> list[str]:
    """The lower-case words of a caption, without punctuation."""
    return re.findall(r"[a-z]+", text.lower())


def caption_words(max_objects: int) -> frozenset[str]:
    """Every word a caption of up to ``max_objects`` objects can hold, under every template: what a text encoder
    trained on built-in captions has read. Each object alone covers the attribute words; each shape repeated over
    every ordered choice of cells covers the counts, plurals and relations."""
    singles = [[{"color": c, "shape": s, "size": z, "cell": cell}] for c in COLORS for s in SHAPES for z in SIZES
               for cell in CELLS]
    repeated = [[{"color": COLORS[0], "shape": s, "size": SIZES[0], "cell": cell} for cell in cells]
                for s in SHAPES for n in range(2, max_objects + 1) for cells in itertools.permutations(CELLS, n)]
    found: set[str] = set()
    for objects in singles + repeated:
        for name, template in TEMPLATES.items():
            if len(objects) >= template.min_objects:
                found.update(words(caption(objects, name)))
    return frozenset(found)
