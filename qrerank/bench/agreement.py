"""How closely two systems' outputs agree on the same requests: scores (largest difference, rank correlation) and
embeddings (smallest cosine). Each function takes one array per request, in the same order for both systems."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two score vectors (ties ranked by position); 1.0 for fewer than 2 items."""
    if len(x) < 2:
        return 1.0
    rx, ry = (np.argsort(np.argsort(v, kind="stable")).astype(np.float64) for v in (x, y))
    rx -= rx.mean()
    ry -= ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx * rx).sum() * (ry * ry).sum()))


def min_spearman(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """The worst request's rank correlation: how far the two systems' rankings of one query's documents drift."""
    return min(spearman(x, y) for x, y in zip(a, b))


def identical_rankings(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> int:
    """Requests whose documents both systems put in exactly the same order."""
    return sum(np.array_equal(np.argsort(-x, kind="stable"), np.argsort(-y, kind="stable")) for x, y in zip(a, b))


def min_cosine(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Smallest cosine between the two systems' embeddings of one text (both L2-normalised)."""
    return min(float((x * y).sum(axis=1).min()) for x, y in zip(a, b))
