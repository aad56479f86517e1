"""Stable hashes of item ids, for deterministic sampling and hash partitioning on any runner."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa


def id_hashes(ids: pa.Array) -> np.ndarray:
    """A stable 64-bit hash of each (non-null) id: the same on every worker and runner."""
    if pa.types.is_integer(ids.type):
        return mix64(ids.to_numpy(zero_copy_only=False).astype(np.uint64))
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
                     for i in ids.to_pylist()], np.uint64)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective, well-mixed 64-bit hash of integers."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def smallest_hashes(ids: pa.Array, size: int) -> np.ndarray:
    """Positions of the (at most) ``size`` ids with the smallest hashes, ordered by (hash, id text):
    the deterministic sample a Beam build takes (:class:`beamvec.transforms.build.SampleRows`)."""
    hashes = id_hashes(ids)
    order = np.lexsort((np.asarray(ids.to_numpy(zero_copy_only=False)).astype(str), hashes))
    return order[:size]
