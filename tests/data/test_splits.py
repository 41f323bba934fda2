"""The splits hold for every trained component: each trainer (the diffusion data, the oracle, the built-in
CLIP's pre-training with its variants and rewordings) is replayed for a few thousand items, and none of the
scenes it sees or captions it reads is a val or test scene or prompt. The check does not trust the split
keys: it compares contents and texts with what the val and test splits hold."""

import numpy as np
import pytest

from film_diffusion.data.captions import TEMPLATES, caption
from film_diffusion.data.shapes import ShapesDataset, caption_split, scene_split
from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES
from film_diffusion.encoders.counterfactuals import ATTRIBUTES
from film_diffusion.encoders.pretrain_clip import _group_captions, _scene_group
from film_diffusion.evaluation.oracle_training import OracleScenes

MAX_OBJECTS = 4


def content(objects: list[dict]) -> tuple:
    """A scene's objects, order and jitter ignored."""
    return tuple(sorted((o["cell"], o["color"], o["shape"], o["size"]) for o in objects))


def every_caption(objects: list[dict]) -> set[str]:
    return {caption(objects, name) for name, t in TEMPLATES.items() if t.min_objects <= len(objects)}


@pytest.fixture(scope="module")
def held_out() -> tuple[set[tuple], set[str]]:
    """The scenes of val and test (1 to 4 objects), and every text that could caption one of them there."""
    scenes, texts = set(), set()
    for split in ("val", "test"):
        dataset = ShapesDataset(16, split, seed=3, max_objects=MAX_OBJECTS, templates=None, length=3000)
        for i in range(len(dataset)):
            objects, text = dataset.scene(i)
            scenes.add(content(objects))
            texts.add(text)
            texts |= {caption(objects, t) for t in dataset.captions_for(objects)}
    return scenes, texts


def test_every_one_object_scene_and_its_captions_have_one_split():
    """All 576 one-object scenes, exhaustively: no caption text is reachable from two splits."""
    homes: dict[str, set[str]] = {}
    for c in COLORS:
        for s in SHAPES:
            for z in SIZES:
                for cell in CELLS:
                    objects = [{"color": c, "shape": s, "size": z, "cell": cell}]
                    for name in TEMPLATES:
                        if TEMPLATES[name].min_objects == 1 and caption_split(objects, name) == scene_split(objects):
                            homes.setdefault(caption(objects, name), set()).add(scene_split(objects))
    assert all(len(splits) == 1 for splits in homes.values())
    splits = [next(iter(s)) for s in homes.values()]
    assert {"train", "val", "test"} <= set(splits)


def test_the_diffusion_data_sees_no_val_or_test_scene_or_prompt(held_out):
    scenes, texts = held_out
    train = ShapesDataset(16, "train", seed=0, max_objects=MAX_OBJECTS, templates=None, length=4000)
    items = [train.scene(i) for i in range(len(train))]
    assert {len(objects) for objects, _ in items} == {1, 2, 3, 4}
    assert {content(objects) for objects, _ in items}.isdisjoint(scenes)
    assert {text for _, text in items}.isdisjoint(texts)


def test_the_oracle_trains_on_no_val_or_test_scene(held_out):
    scenes, _ = held_out
    oracle_scenes = OracleScenes(16, seed=0, length=3000)
    seen = set()
    for i in range(len(oracle_scenes)):
        _, table = oracle_scenes[i]
        seen.add(tuple(sorted(
            (CELLS[cell], COLORS[row[1]], SHAPES[row[2]], SIZES[row[3]]) for cell, row in enumerate(table.tolist())
            if row[0] == 1
        )))  # fmt: skip
    assert len(seen) > 2000 and seen.isdisjoint(scenes)  # few small scenes exist, so some repeat


def test_clip_pretraining_sees_no_val_or_test_scene_or_caption(held_out):
    """Replays the CLIP's data: every scene beside its one-attribute variants, reworded as at every step."""
    scenes, texts = held_out
    dataset = ShapesDataset(16, "train", seed=0, max_objects=MAX_OBJECTS, length=1500)
    weights = np.full(len(ATTRIBUTES), 1 / len(ATTRIBUTES))
    rng = np.random.default_rng(0)
    seen_scenes, seen_texts = set(), set()
    for index in range(len(dataset)):
        group, images = _scene_group(dataset, index, weights, 3)
        assert len(images) == 4
        seen_scenes |= {content(scene) for scene in group}
        for _ in range(3):
            seen_texts |= set(_group_captions(group, rng))
    assert len(seen_scenes) > 4000 and len(seen_texts) > 8000
    assert seen_scenes.isdisjoint(scenes)
    assert seen_texts.isdisjoint(texts)
