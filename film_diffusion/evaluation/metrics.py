"""Distribution metrics on feature vectors."""

from __future__ import annotations

import numpy as np
import torch


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)`` (FID).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. The trace of the matrix square root is
    taken as the sum of square roots of the eigenvalues of ``S_a^(1/2) S_b S_a^(1/2)``, a symmetric
    matrix with the same spectrum as ``S_a S_b``, so it stays real and stable even when the
    covariances are singular (fewer samples than dimensions).
    """
    a, b = (torch.as_tensor(f).detach().cpu().double().numpy() for f in (features_a, features_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"Need two (N >= 2, D) feature sets of the same D, got {a.shape} and {b.shape}.")
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    eigvals_a, eigvecs_a = np.linalg.eigh(cov_a)
    sqrt_a = (eigvecs_a * np.sqrt(eigvals_a.clip(min=0))) @ eigvecs_a.T
    middle = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(middle.clip(min=0)).sum()
    distance = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(distance, 0.0))
