"""The shipped oracles read fresh scenes exactly, refuse to be fooled by noise, and load and save
through safetensors."""

import pytest
import torch
from safetensors import safe_open

from film_diffusion.data.shapes import ShapesDataset
from film_diffusion.data.vocabulary import CELLS
from film_diffusion.errors import UserError
from film_diffusion.evaluation.oracle import ShapesOracle
from film_diffusion.evaluation.oracle_training import train_oracle
from film_diffusion.evaluation.oracle_weights import ASSETS, load_oracle, weights_name

KEYS = {"count", "color", "shape", "size", "position", "all"}


def fresh(resolution: int, n: int, seed: int = 11, **kwargs) -> tuple[torch.Tensor, list[list[dict]]]:
    """Scenes from the test split with a seed the oracle never trained on."""
    dataset = ShapesDataset(resolution, split="test", seed=seed, length=n, **kwargs)
    items = [dataset[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), [it["objects"] for it in items]


@pytest.mark.parametrize("resolution", [32, 64])
def test_shipped_oracle_reads_fresh_scenes(resolution):
    oracle = load_oracle(resolution)
    assert oracle.resolution == resolution
    images, objects = fresh(resolution, 300)
    scores = oracle.score(images, objects)
    assert set(scores) == KEYS
    assert min(scores[k] for k in KEYS - {"all"}) >= 0.99 and scores["all"] >= 0.97
    crowded = fresh(resolution, 100, seed=12, min_objects=6, max_objects=9)
    assert oracle.score(*crowded)["all"] >= 0.97


def test_read_objects_gives_back_the_ground_truth():
    oracle = load_oracle(32)
    images, objects = fresh(32, 100, seed=13)
    by_cell = [sorted(o, key=lambda obj: CELLS.index(obj["cell"])) for o in objects]
    read = oracle.read_objects(images)
    assert sum(r == t for r, t in zip(read, by_cell, strict=True)) >= 97


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_noise_is_not_read_as_the_scene(noise):
    oracle = load_oracle(32)
    images, objects = fresh(32, 300, seed=14)
    generator = torch.Generator().manual_seed(0)
    fake = torch.randn(images.shape, generator=generator).clamp(-1, 1) if noise == "gaussian" else \
        torch.rand(images.shape, generator=generator) * 2 - 1  # fmt: skip
    scores = oracle.score(fake, objects)
    # chance is 1/8 for colour, 1/4 for shape, 1/2 for size; an exact scene almost never
    assert scores["all"] < 0.02 and scores["position"] < 0.05 and scores["count"] < 0.4
    assert scores["color"] < 0.3 and scores["shape"] < 0.45 and scores["size"] < 0.7


def test_features_and_fid():
    oracle = load_oracle(32)
    real_a, _ = fresh(32, 200, seed=15)
    real_b, _ = fresh(32, 200, seed=16)
    noise = torch.rand(real_a.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert oracle.features(real_a).shape == (200, 9 * oracle.hidden)
    assert oracle.fid(real_a, real_a) < 1e-6
    assert oracle.fid(real_a, real_b) * 2 < oracle.fid(real_a, noise)


def test_wrong_inputs_are_user_errors():
    oracle = load_oracle(32)
    with pytest.raises(UserError, match=r"reads \[B, 3, 32, 32\] images .* use load_oracle\(64\)"):
        oracle.score(torch.zeros(2, 3, 64, 64), [[], []])
    with pytest.raises(UserError, match="Got 2 images but 1 object lists"):
        oracle.score(torch.zeros(2, 3, 32, 32), [[]])


def test_shipped_weights_record_what_they_need():
    for resolution in (32, 64):
        with safe_open(str(ASSETS / weights_name(resolution)), framework="pt") as f:
            meta = f.metadata()
        assert meta["resolution"] == str(resolution) and meta["render_version"] == "1"


def test_save_load_round_trip_and_cache_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("FILM_DIFFUSION_CACHE", str(tmp_path))
    oracle = train_oracle(16, steps=2, batch_size=8, workers=0, progress=False)
    oracle.save(tmp_path / weights_name(16))
    loaded = load_oracle(16)  # nothing ships for 16 px, so this comes from the cache
    for key, value in oracle.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    images, _ = fresh(16, 8)
    assert torch.equal(oracle.features(images), loaded.features(images))
    assert isinstance(ShapesOracle.from_file(tmp_path / weights_name(16)), ShapesOracle)
