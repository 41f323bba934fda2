"""The built-in scenes: item format, determinism across processes, the compositional split, and
anti-aliased rendering at the asked resolution."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from film_diffusion.data import collate
from film_diffusion.data.render import EXTENT, OUTLINES, PALETTE
from film_diffusion.data.shapes import ALL_PAIRS, ShapesDataset, scene_split
from film_diffusion.data.vocabulary import CELLS, COLORS, SHAPES, SIZES
from film_diffusion.errors import UserError

HOLDOUT = [("red", "circle"), ("blue", "square"), ("yellow", "star")]


def digest(dataset: ShapesDataset) -> str:
    """A hash of the first 20 items' image bytes, captions and objects."""
    h = hashlib.sha256()
    for i in range(20):
        item = dataset[i]
        h.update(item["image"].numpy().tobytes())
        h.update(item["caption"].encode())
        h.update(repr(item["objects"]).encode())
    return h.hexdigest()


def test_item_format():
    dataset = ShapesDataset(resolution=32, max_objects=3)
    assert len(dataset) == 50_000 and len(ShapesDataset(split="test")) == 1_000
    for i in range(50):
        item = dataset[i]
        assert set(item) == {"image", "caption", "objects"}
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert 1 <= len(item["objects"]) <= 3 and isinstance(item["caption"], str)
        assert len({o["cell"] for o in item["objects"]}) == len(item["objects"])  # one object per cell
        for o in item["objects"]:
            assert set(o) == {"color", "shape", "size", "cell"}
            assert o["color"] in COLORS and o["shape"] in SHAPES and o["size"] in SIZES and o["cell"] in CELLS
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_same_seed_and_index_give_the_same_bytes_in_another_process():
    script = (
        "from tests.data.test_shapes import ShapesDataset, digest\n"
        "print(digest(ShapesDataset(seed=0)), digest(ShapesDataset(seed=1)))"
    )
    there = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True,
                           cwd=Path(__file__).parents[2]).stdout.split()  # fmt: skip
    assert there[0] == digest(ShapesDataset(seed=0))
    assert there[1] != there[0]


def test_cached_items_equal_drawn_ones_and_reading_draws_nothing(monkeypatch):
    """``cache=True`` draws every item when built and gives the bytes, captions and objects of an uncached
    dataset, in any reading order, without drawing again; a caller changing its item leaves the kept copy as
    drawn; an index out of range is still an IndexError."""
    import film_diffusion.data.shapes as shapes

    draws = []
    render = shapes.render
    monkeypatch.setattr(shapes, "render", lambda *args: draws.append(1) or render(*args))
    plain, cached = ShapesDataset(max_objects=3), ShapesDataset(max_objects=3, length=12, cache=True)
    assert len(draws) == 12
    for i in [5, 2, 5, 11, 2, 0]:
        a, b = plain[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"] and a["objects"] == b["objects"]
    assert len(draws) == 12 + 6  # only the plain dataset drew
    cached[5]["objects"][0]["color"] = "nobody's"
    cached[5]["image"].fill_(0)
    assert cached[5]["objects"] == plain[5]["objects"] and torch.equal(cached[5]["image"], plain[5]["image"])
    with pytest.raises(IndexError):
        cached[12]


def test_items_depend_on_seed_split_and_index_only():
    a, b = ShapesDataset(seed=0), ShapesDataset(seed=0)
    assert torch.equal(a[7]["image"], b[7]["image"]) and a[7]["caption"] == b[7]["caption"]
    b[3]  # reading other items first changes nothing: no shared generator
    assert torch.equal(a[8]["image"], b[8]["image"])
    val, other_seed = ShapesDataset(split="val"), ShapesDataset(seed=1)
    differing = sum(not torch.equal(a[i]["image"], x[i]["image"]) for x in (val, other_seed) for i in range(20))
    assert differing == 40


def test_all_sizes_and_counts_occur():
    dataset = ShapesDataset(max_objects=5, length=400)
    scenes = [dataset.scene(i)[0] for i in range(len(dataset))]
    assert {len(s) for s in scenes} == {1, 2, 3, 4, 5}
    seen = {(o["color"], o["shape"], o["size"], o["cell"]) for s in scenes for o in s}
    assert {k[0] for k in seen} == set(COLORS) and {k[1] for k in seen} == set(SHAPES)
    assert {k[2] for k in seen} == set(SIZES) and {k[3] for k in seen} == set(CELLS)


def test_holdout_pairs_never_train_and_make_the_whole_test_split():
    train = ShapesDataset(split="train", holdout=HOLDOUT, length=2000)
    val = ShapesDataset(split="val", holdout=HOLDOUT, length=500)
    test = ShapesDataset(split="test", holdout=HOLDOUT, length=500)
    pairs = lambda ds: {(o["color"], o["shape"]) for i in range(len(ds)) for o in ds.scene(i)[0]}  # noqa: E731
    assert pairs(train) == pairs(val) == set(ALL_PAIRS) - set(HOLDOUT)
    assert pairs(test) == set(HOLDOUT)


def content(dataset: ShapesDataset) -> set[tuple[tuple[str, ...], ...]]:
    """Each scene's objects as a sorted tuple, ignoring jitter."""
    return {tuple(sorted(tuple(o.values()) for o in dataset.scene(i)[0])) for i in range(len(dataset))}


def test_splits_never_share_a_scene():
    train = content(ShapesDataset(split="train", length=2000))
    val = content(ShapesDataset(split="val", length=300))
    test = content(ShapesDataset(split="test", seed=1, length=300))
    assert train & val == train & test == val & test == set()
    assert train & content(ShapesDataset(split="train", seed=1, length=500))  # seeds share a split's pool of scenes
    keys = ("color", "shape", "size", "cell")
    splits = lambda scenes: {scene_split([dict(zip(keys, o, strict=True)) for o in s]) for s in scenes}  # noqa: E731
    assert splits(val) == {"val"} and splits(test) == {"test"}


def test_a_split_with_no_room_is_a_user_error():
    """One pair and one object leave 18 possible scenes; find a pair none of whose scenes is in val's bucket."""
    for pair in ALL_PAIRS:
        scenes = [[{"color": pair[0], "shape": pair[1], "size": z, "cell": c}] for z in SIZES for c in CELLS]
        if all(scene_split(s) != "val" for s in scenes):
            break
    else:
        pytest.fail("every pair has a one-object scene in val's bucket")
    val = ShapesDataset(split="val", max_objects=1, holdout=[p for p in ALL_PAIRS if p != pair])
    with pytest.raises(UserError, match="Split 'val' has too few possible scenes to keep apart"):
        val.scene(0)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match=r"Holdout pair \['red', 'hexagon'\] is not a \(colour, shape\) pair"):
        ShapesDataset(holdout=[("red", "hexagon")])
    with pytest.raises(UserError, match="leaving nothing to train on"):
        ShapesDataset(holdout=ALL_PAIRS)
    with pytest.raises(UserError, match="Resolution 8 is out of range; choose a value from 16 to 256"):
        ShapesDataset(resolution=8)
    with pytest.raises(UserError, match="Unknown split 'dev'"):
        ShapesDataset(split="dev")
    with pytest.raises(UserError, match="max_objects <= 9"):
        ShapesDataset(max_objects=10)
    with pytest.raises(UserError, match="can caption a scene of 1 object"):
        ShapesDataset(templates=["relation"])
    with pytest.raises(UserError, match=r"Unknown caption templates \['fancy'\]"):
        ShapesDataset(templates=["fancy"], length=4, cache=True)  # checked before anything is drawn


def test_templates_can_be_restricted_without_changing_the_scene():
    everything, full_only = ShapesDataset(length=50), ShapesDataset(length=50, templates=["full"])
    for i in range(50):
        assert everything.scene(i)[0] == full_only.scene(i)[0]
        assert full_only.scene(i)[1].endswith(everything.scene(i)[0][-1]["cell"])


@pytest.mark.parametrize("resolution", [16, 48, 256])
def test_any_resolution_renders_the_same_scene(resolution):
    """The same objects and caption, and the same picture: brought to 16 px, a render at any resolution
    is close to the 16-px render of its own scene and far from the next scene's."""
    small, other = ShapesDataset(resolution=16), ShapesDataset(resolution=resolution)
    assert other[5]["image"].shape == (3, resolution, resolution)
    assert other.scene(5) == small.scene(5)
    for i in range(8):
        at_16 = F.interpolate(other[i]["image"][None], size=16, mode="area")[0]
        same, next_scene = (at_16 - small[i]["image"]).abs().mean(), (at_16 - small[i + 1]["image"]).abs().mean()
        assert same < 0.05 and next_scene > 4 * same, (i, same, next_scene)


def test_renderer_draws_the_whole_vocabulary():
    assert list(PALETTE) == list(COLORS) and list(OUTLINES) == list(SHAPES) and list(EXTENT) == list(SIZES)


def test_edges_are_anti_aliased_at_the_target_size():
    """A 64-px render box-averaged to 32 px is close to the 32-px render of the same scene (drawn at
    each size, not upscaled), and edge pixels take in-between values, not only object or background."""
    small, large = ShapesDataset(resolution=32), ShapesDataset(resolution=64)
    for i in range(10):
        a, b = small[i]["image"], F.avg_pool2d(large[i]["image"][None], 2)[0]
        assert (a - b).abs().mean() < 0.01
    image = ((large[0]["image"] + 1) * 127.5).round()
    assert len(torch.unique(image.reshape(3, -1), dim=1).T) > 100


def test_collate_keeps_ground_truth_lists():
    dataset = ShapesDataset(length=4)
    batch = collate([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["caption"] == [dataset[i]["caption"] for i in range(4)]
    assert batch["objects"] == [dataset[i]["objects"] for i in range(4)]
