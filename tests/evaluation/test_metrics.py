"""The Frechet distance against a direct computation with scipy's matrix square root."""

import numpy as np
import pytest
import scipy.linalg
import torch

from film_diffusion.evaluation.metrics import frechet_distance


def direct_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula, as pytorch-fid writes it."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def correlated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)


def test_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = correlated(rng, 600, 12), correlated(rng, 400, 12)
    assert frechet_distance(a, b) == pytest.approx(direct_frechet(a, b), rel=1e-6)
    assert frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(direct_frechet(a, b), rel=1e-4)


def test_zero_with_itself_and_growing_with_a_shift():
    rng = np.random.default_rng(1)
    a = correlated(rng, 500, 16)
    scale = np.trace(np.cov(a, rowvar=False))
    assert abs(frechet_distance(a, a)) < 1e-9 * scale
    shift = rng.standard_normal(16)
    distances = [frechet_distance(a, a + k * shift) for k in (0.5, 1, 2, 4)]
    # same covariance: the distance is exactly the squared shift of the mean
    assert distances == pytest.approx([k**2 * (shift**2).sum() for k in (0.5, 1, 2, 4)], rel=1e-6)
    assert distances == sorted(distances)


def test_fewer_samples_than_dimensions():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 1
    assert np.isfinite(frechet_distance(a, b)) and frechet_distance(a, b) > frechet_distance(a, a) >= 0
    assert frechet_distance(a, b) == pytest.approx(direct_frechet(a, b), rel=1e-3)


def test_shape_errors():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
