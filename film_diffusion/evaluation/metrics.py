"""Distribution metrics on feature vectors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run small linear algebra on one thread: on a few cores, LAPACK's threads otherwise wait for
    seconds behind torch's OpenMP workers still spinning after the last forward pass."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)`` (FID).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. The trace of the matrix square root is
    taken as the sum of square roots of the eigenvalues of ``S_a^(1/2) S_b S_a^(1/2)``, a symmetric
    matrix with the same spectrum as ``S_a S_b``, so it stays real and stable even when the
    covariances are singular (fewer samples than dimensions).
    """
    a, b = _feature_sets(features_a, features_b)
    with _one_thread():
        cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))
        eigvals_a, eigvecs_a = torch.linalg.eigh(cov_a)
        sqrt_a = (eigvecs_a * eigvals_a.clamp(min=0).sqrt()) @ eigvecs_a.T
        trace_sqrt = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
        mean_term = (a.mean(0) - b.mean(0)).square().sum()
        distance = mean_term + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(distance.item(), 0.0)


def kernel_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """Kernel distance (KID, Binkowski et al. 2018): the unbiased squared MMD between two feature sets with
    the cubic polynomial kernel ``k(x, y) = (x . y / D + 1) ** 3``. Unlike FID it has no bias from the
    sample count, so small evaluations compare fairly; it can come out slightly negative by chance."""
    a, b = _feature_sets(features_a, features_b)
    dim = a.shape[1]
    k_aa, k_bb, k_ab = ((x @ y.T / dim + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    m, n = len(a), len(b)
    within_a = (k_aa.sum() - k_aa.trace()) / (m * (m - 1))
    within_b = (k_bb.sum() - k_bb.trace()) / (n * (n - 1))
    return (within_a + within_b - 2 * k_ab.mean()).item()


def _feature_sets(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float64 CPU tensors, checked to be two (N >= 2, D) sets of the same D."""
    a, b = (torch.as_tensor(f).detach().to("cpu", torch.float64) for f in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"Need two (N >= 2, D) feature sets of the same D, got {tuple(a.shape)} and {tuple(b.shape)}.")
    return a, b


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% at ``z=1.96``): unlike the normal approximation it stays
    inside [0, 1] and is not empty at 0 or ``trials`` successes, which a benchmark near 0 or 1 needs."""
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
