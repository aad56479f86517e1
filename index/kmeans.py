"""Deterministic k-means (Lloyd's algorithm, numpy), for vector-space partitions."""

from __future__ import annotations

import numpy as np


def _nearest(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    distances = (centroids * centroids).sum(axis=1)[None, :] - 2 * vectors @ centroids.T
    return distances.argmin(axis=1)


def fit(vectors: np.ndarray, clusters: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """``clusters`` centroids of ``vectors`` (squared L2), the same for the same input and seed."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    clusters = max(1, min(clusters, len(vectors)))
    rng = np.random.default_rng(seed)
    centroids = vectors[np.sort(rng.choice(len(vectors), clusters, replace=False))].copy()
    for _ in range(iterations):
        labels = _nearest(vectors, centroids)
        counts = np.bincount(labels, minlength=clusters)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, vectors)
        empty = counts == 0
        centroids[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():  # re-seed an empty cluster on the point farthest from its centroid
            far = np.argsort(-((vectors - centroids[labels]) ** 2).sum(axis=1))[: int(empty.sum())]
            centroids[empty] = vectors[far]
    return centroids


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid of each vector (squared L2)."""
    return _nearest(np.asarray(vectors, np.float32), centroids)


def nearest(queries: np.ndarray, centroids: np.ndarray, probes: int) -> np.ndarray:
    """The ``probes`` nearest centroids of each query, (n, probes)."""
    distances = (centroids * centroids).sum(axis=1)[None, :] - 2 * np.asarray(queries, np.float32) @ centroids.T
    probes = min(probes, len(centroids))
    return np.argsort(distances, axis=1, kind="stable")[:, :probes]
