"""The built-in synthetic scenes (config name ``shapes``): 2D CLEVR-like boards of coloured shapes on
a 3x3 grid, each with its caption and exact ground truth. Item ``index`` of a split is a pure function
of ``(seed, split, index)``, so every run and every worker process sees the same bytes.

Splits never share a scene or a caption's text: a hash of a key puts each in one of ten buckets; "val"
keeps bucket 0, "test" bucket 1, "train" the rest (:func:`split_of`). A one-object scene is keyed by its
object (cell, colour, shape, size); a scene of two or more by the multiset of its (colour, shape) pairs,
since a wording such as "a red circle and a blue square" names no cell or size and must fall in one split
whichever cells and sizes show it. A caption is keyed by what it states (:func:`caption_split`), and an
item is a scene with a caption whose splits are both the item's. A compositional split in the manner of
CLEVR-CoGenT: ``holdout`` lists (colour, shape) pairs that never appear in "train" or "val"; "test" is
then made only of them (and needs no bucket to stay apart).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from film_diffusion.data.captions import ALL_STATED, TEMPLATES, caption
from film_diffusion.data.render import render
from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES
from film_diffusion.errors import UserError

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTH = {"train": 50_000, "val": 1_000, "test": 1_000}
NUM_SCENE_CLASSES = len(COLORS) * len(SHAPES)
"""Class labels of the built-in scenes (for class-conditional models): see :func:`scene_class`."""
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
_SCENE, _RENDER, _CAPTION = 0, 1, 2  # independent random streams per item
BUCKETS = 10
EVAL_BUCKET = {"val": 0, "test": 1}
_BUCKET_SPLIT = {bucket: split for split, bucket in EVAL_BUCKET.items()}
MAX_DRAWS = 10_000  # a split whose scenes almost never land in its bucket is an error, not a hang


def item_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    """The generator for one item's scene, rendering or caption; seeded only by its arguments."""
    return np.random.default_rng([seed, SPLITS[split], index, stream])


def sample_objects(
    rng: np.random.Generator, min_objects: int, max_objects: int, pairs: Sequence[tuple[str, str]] = ALL_PAIRS
) -> list[dict]:
    """Between ``min_objects`` and ``max_objects`` objects in distinct cells, (colour, shape) from ``pairs``."""
    count = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.permutation(len(CELLS))[:count].tolist()
    kinds = rng.integers(len(pairs) * len(SIZES), size=count).tolist()  # (pair, size) in one draw
    objects = []
    for kind, cell in zip(kinds, cells, strict=True):
        (color, shape), size = pairs[kind // len(SIZES)], SIZES[kind % len(SIZES)]
        objects.append({"color": color, "shape": shape, "size": size, "cell": CELLS[cell]})
    return objects


def split_of(key: object) -> str:
    """The split of a key: a stable hash (the same in every process) puts it in one of ``BUCKETS`` buckets."""
    bucket = hashlib.sha256(repr(key).encode()).digest()[0] % BUCKETS
    return _BUCKET_SPLIT.get(bucket, "train")


def _stated(objects: Sequence[dict], states: Sequence[str]) -> object:
    """What a wording of ``objects`` that states ``states`` fixes: one object's stated attributes; of several,
    the multiset of (colour, shape) pairs (every wording of several objects names each one's colour and shape)."""
    if len(objects) == 1:
        if tuple(states) == ALL_STATED:
            return sorted((o["cell"], o["color"], o["shape"], o["size"]) for o in objects)
        return (tuple(states), tuple(objects[0][k] for k in states))
    return ("pairs", sorted((o["color"], o["shape"]) for o in objects))


def scene_split(objects: Sequence[dict]) -> str:
    """The split a scene belongs to (an empty board to "train")."""
    return split_of(_stated(objects, ALL_STATED))


def caption_split(objects: Sequence[dict], template: str) -> str:
    """The split of the caption ``template`` gives ``objects``: keyed by what its words state, so one text
    belongs to one split whichever scene it was written for."""
    return split_of(_stated(objects, TEMPLATES[template].states))


def scene_class(objects: Sequence[dict]) -> int:
    """A scene's class label: its first object's (colour, shape), one of ``NUM_SCENE_CLASSES``."""
    return COLORS.index(objects[0]["color"]) * len(SHAPES) + SHAPES.index(objects[0]["shape"])


def check_resolution(resolution: int) -> None:
    """At 16 px a small shape is about 3 pixels wide; below that its outline is lost."""
    if not 16 <= resolution <= 256:
        raise UserError(f"Resolution {resolution} is out of range; choose a value from 16 to 256.")


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float ``[3, H, W]`` in [-1, 1], the range every model here reads."""
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(127.5).sub_(1)


class ShapesDataset(Dataset):
    """Rendered scenes; an item is ``{"image": [3, H, W] in [-1, 1], "caption": str, "objects": [...]}``.

    Each object is a dict with ``color``, ``shape``, ``size`` and ``cell`` (names from
    :mod:`film_diffusion.data.vocabulary`). ``templates`` restricts the caption wordings (default: all).
    ``cache``: draw every item now and keep its pixels, caption and objects, so that reading an item draws nothing
    (``3 * resolution**2`` bytes an item: 154 MB for 50,000 items at 32 px; about 0.5 ms an item to draw).
    """

    def __init__(
        self,
        resolution: int = 32,
        split: str = "train",
        seed: int = 0,
        max_objects: int = 3,
        holdout: Iterable[Sequence[str]] | None = None,
        length: int | None = None,
        min_objects: int = 1,
        templates: Sequence[str] | None = None,
        cache: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise UserError(f"Unknown split '{split}'; choose one of {', '.join(SPLITS)}.")
        check_resolution(resolution)
        if not 1 <= min_objects <= max_objects <= len(CELLS):
            raise UserError(
                f"Objects per scene must satisfy 1 <= min_objects <= max_objects <= {len(CELLS)}, "
                f"got {min_objects} and {max_objects}; change them."
            )
        self.resolution, self.split, self.seed = resolution, split, seed
        self.min_objects, self.max_objects = min_objects, max_objects
        self.holdout = _check_holdout(holdout)
        self.pairs = _pairs_for(split, self.holdout)
        self.length = DEFAULT_LENGTH[split] if length is None else length
        self.templates = tuple(TEMPLATES) if templates is None else tuple(templates)
        unknown = [t for t in self.templates if t not in TEMPLATES]
        if unknown or not self.templates:
            raise UserError(f"Unknown caption templates {unknown}; choose from {', '.join(TEMPLATES)}.")
        if all(TEMPLATES[t].min_objects > min_objects for t in self.templates):
            raise UserError(f"No chosen template can caption a scene of {min_objects} object(s); add 'full'.")
        self._drawn: list[tuple[np.ndarray, str, list[dict]]] | None = None
        if cache:  # once every argument is checked
            indices = tqdm(range(self.length), desc="drawing scenes", leave=False, disable=self.length < 10_000)
            self._drawn = [self._draw(index) for index in indices]

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> tuple[list[dict], str]:
        """The objects and caption of item ``index`` without rendering it (cheap)."""
        self._check_index(index)
        rng = item_rng(self.seed, self.split, index, _SCENE)
        for _ in range(MAX_DRAWS):  # redraw until the scene, and a caption of it, belong to this split
            objects = sample_objects(rng, self.min_objects, self.max_objects, self.pairs)
            usable = self.captions_for(objects)
            if usable:
                break
        else:
            raise UserError(f"Split '{self.split}' has too few possible scenes to keep apart from the others; "
                            "hold out fewer pairs, allow more objects or more caption templates.")  # fmt: skip
        template = usable[int(item_rng(self.seed, self.split, index, _CAPTION).integers(len(usable)))]
        return objects, caption(objects, template)

    def captions_for(self, objects: Sequence[dict]) -> list[str]:
        """The chosen templates that can caption ``objects`` in this split: none when the scene is another
        split's; else those whose caption's text is this split's too (held-out pairs are apart already)."""
        fits = [t for t in self.templates if TEMPLATES[t].min_objects <= len(objects)]
        if self.split == "test" and self.holdout:
            return fits
        if scene_split(objects) != self.split:
            return []
        return [t for t in fits if caption_split(objects, t) == self.split]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.length:
            raise IndexError(f"Index {index} is out of range for a dataset of {self.length} items.")

    def _draw(self, index: int) -> tuple[np.ndarray, str, list[dict]]:
        objects, text = self.scene(index)
        return render(objects, self.resolution, item_rng(self.seed, self.split, index, _RENDER)), text, objects

    def __getitem__(self, index: int) -> dict:
        if self._drawn is None:
            pixels, text, objects = self._draw(index)
        else:
            self._check_index(index)  # a list would also take a negative index
            pixels, text, objects = self._drawn[index]
            objects = copy.deepcopy(objects)  # the caller may change what it is given; the kept copy stays as drawn
        return {"image": to_tensor(pixels), "caption": text, "objects": objects}


def _check_holdout(holdout: Iterable[Sequence[str]] | None) -> frozenset[tuple[str, str]]:
    pairs = frozenset(tuple(pair) for pair in holdout or ())
    for pair in pairs:
        if pair not in ALL_PAIRS:
            raise UserError(
                f"Holdout pair {list(pair)} is not a (colour, shape) pair; use colours from {', '.join(COLORS)} "
                f"and shapes from {', '.join(SHAPES)}, e.g. [red, circle]."
            )
    if len(pairs) == len(ALL_PAIRS):
        raise UserError("The holdout lists every (colour, shape) pair, leaving nothing to train on; list fewer.")
    return pairs


def _pairs_for(split: str, holdout: frozenset[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Training and validation scenes avoid the held-out pairs; the test split uses only them."""
    if not holdout:
        return ALL_PAIRS
    if split == "test":
        return tuple(p for p in ALL_PAIRS if p in holdout)
    return tuple(p for p in ALL_PAIRS if p not in holdout)
