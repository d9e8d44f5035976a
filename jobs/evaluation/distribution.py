"""Set-level metrics of generated vs reference audio, from embeddings or class probabilities.

Which embedder produced the inputs is the caller's to name in every report: a Fréchet distance on
VGGish embeddings is "FAD", on PANNs embeddings "FD"; KL and IS need a classifier's probabilities.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from scipy import linalg

from model.errors import InputError


def gaussian(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (N, D) embeddings, in float64."""
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InputError(f"need (N >= 2, D) embeddings, got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) between two Gaussians."""
    with warnings.catch_warnings():  # fewer clips than dimensions gives singular covariances: handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(covmean).all():  # a singular product: regularise as the usual FID/FAD code does
            eps = np.eye(len(cov1)) * 1e-6
            covmean = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = covmean.real  # sqrtm of a product of PSD matrices has eigenvalues >= 0; drop round-off
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean)
    return float(max(distance, 0.0))  # a distance: round-off can take identical sets a hair below zero


def frechet_distance_between(generated: np.ndarray, reference: np.ndarray) -> float:
    return frechet_distance(*gaussian(generated), *gaussian(reference))


def kl_divergence(p_generated: np.ndarray, p_reference: np.ndarray, eps: float = 1e-8) -> float:
    """Mean over paired clips of KL(p_reference || p_generated) between class distributions (N, C).

    As in the V2M papers' KL: each generated clip is compared with the reference clip of the same video.
    """
    p, q = _probabilities(p_reference, eps), _probabilities(p_generated, eps)
    if p.shape != q.shape:
        raise ValueError(f"paired probabilities differ in shape: {p.shape} vs {q.shape}")
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def inception_score(p_generated: np.ndarray, eps: float = 1e-8) -> float:
    """exp(E_x KL(p(y|x) || p(y))): high when each clip is confidently one class and classes vary."""
    p = _probabilities(p_generated, eps)
    marginal = p.mean(0, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))


def _probabilities(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if p.ndim != 2 or (p < 0).any():
        raise ValueError("class probabilities must be a non-negative (N, C) array")
    p = p + eps
    return p / p.sum(1, keepdims=True)


def density_coverage(reference: np.ndarray, generated: np.ndarray, nearest_k: int = 5) -> dict[str, float]:
    """Density and Coverage (Naeem et al. 2020) of generated embeddings against reference ones (prdc)."""
    from prdc import compute_prdc

    if min(len(reference), len(generated)) <= nearest_k:
        raise InputError(f"density/coverage with k={nearest_k} needs more than {nearest_k} clips per set")
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        scores = compute_prdc(np.asarray(reference), np.asarray(generated), nearest_k=nearest_k)
    return {"density": float(scores["density"]), "coverage": float(scores["coverage"])}


def paired_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of paired rows (an ImageBind-style audio-video or CLAP-style audio-text score)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {a.shape} vs {b.shape}")
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
    return float(np.mean(np.sum(a * b, axis=1)))
