"""Scenes that differ from a scene in exactly one attribute of one object.

The built-in CLIP trains on them as hard negatives (a random batch rarely holds two scenes that
differ only in where one shape sits, so without them nothing teaches position) and its evaluation
ranks their captions against the true one.
"""

from __future__ import annotations

import numpy as np

from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES

ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position", "count")
MAX_COUNT = 4  # count variants hold 1..MAX_COUNT objects of the changed object's colour and shape


def variants(
    objects: list[dict], attribute: str, index: int, rng: np.random.Generator, max_objects: int = len(CELLS)
) -> list[list[dict]]:
    """Every scene of at most ``max_objects`` objects that changes ``attribute`` of ``objects[index]``
    and nothing else (possibly none: a lone object of its kind in a full scene has no count variant).

    A count variant adds copies of that object in free cells (``rng`` picks them) or drops the last
    objects of its kind, so the other objects and their order stay as they were.
    """
    target = objects[index]

    def replaced(**values: str) -> list[dict]:
        return [dict(o, **values) if o is target else o for o in objects]

    free = [cell for cell in CELLS if cell not in {o["cell"] for o in objects}]
    if attribute == "color":
        return [replaced(color=c) for c in COLORS if c != target["color"]]
    if attribute == "shape":
        return [replaced(shape=s) for s in SHAPES if s != target["shape"]]
    if attribute == "size":
        return [replaced(size=s) for s in SIZES if s != target["size"]]
    if attribute == "position":
        return [replaced(cell=c) for c in free]
    if attribute == "count":
        same = [o for o in objects if (o["color"], o["shape"]) == (target["color"], target["shape"])]
        cells = [str(c) for c in rng.permutation(free)]
        fewer = [[o for o in objects if not any(o is d for d in same[k:])] for k in range(1, len(same))]
        room = min(len(cells), max_objects - len(objects), MAX_COUNT - len(same))
        return fewer + [objects + [dict(target, cell=c) for c in cells[:k]] for k in range(1, room + 1)]
    raise ValueError(f"Unknown attribute '{attribute}'; choose one of {', '.join(ATTRIBUTES)}.")
