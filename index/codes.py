"""Encoded rows that score like a float32 matrix: what a shard with a codec searches.

:class:`CodeMatrix` holds a shard's codes (:mod:`beamvec.index.codec`) and scores queries
(already in the code space, :meth:`Codec.reduce_queries`) against them a block of rows at a
time: each block is decoded to float32 (for SQ8, only converted: the scale moves to the query
side, the offset into one product per query; float16 by a compiled look-up) and multiplied by
BLAS, so float16 and int8 never take numpy's slow paths and the decoded copy stays one block.
:meth:`CodeMatrix.rescore` scores each query's own candidates (ScaNN's, before the final top-k)
with compiled kernels that read the codes directly (PQ by per-query look-up tables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np

if TYPE_CHECKING:
    from beamvec.index.codec import Codec

# Rows decoded at once when scoring.
_BLOCK = 8_192
# Queries whose PQ look-up tables are built at once.
_PQ_QUERIES = 64


class CodeMatrix:
    """A shard's codes with their codec: ``len``, ``shape`` (rows, code dimension), slicing by rows
    (a view: another CodeMatrix), indexing by row positions (decoded float32 rows)."""

    def __init__(self, codes: np.ndarray, codec: "Codec", norms: np.ndarray | None = None):
        self.codes = codes
        self.codec = codec
        self._norms = norms

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.codes), self.codec.code_dimension

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes

    def __getitem__(self, key):
        if isinstance(key, slice):
            return CodeMatrix(self.codes[key], self.codec, None if self._norms is None else self._norms[key])
        return self.codec.decode(self.codes[key])

    def decoded(self) -> np.ndarray:
        """Every row decoded (float32, (rows, code dimension))."""
        return self.codec.decode(self.codes)

    def dots(self, queries: np.ndarray) -> np.ndarray:
        """Inner products of code-space ``queries`` (n, c) with every row: (n, rows) float32."""
        out = np.empty((len(queries), len(self.codes)), np.float32)
        sq8 = self.codec.spec.quantizer == "SQ8"
        if sq8:
            scaled = np.ascontiguousarray(queries * self.codec.arrays["step"], np.float32)
            offset = (queries @ self.codec.arrays["low"]).astype(np.float32)[:, None]
        for lo in range(0, len(self.codes), _BLOCK):
            block = self.codes[lo:lo + _BLOCK]
            if sq8:
                np.matmul(scaled, block.astype(np.float32).T, out=out[:, lo:lo + len(block)])
                out[:, lo:lo + len(block)] += offset
            else:
                np.matmul(queries, self.codec.decode(block).T, out=out[:, lo:lo + len(block)])
        return out

    def norms(self) -> np.ndarray:
        """Squared norms of the decoded rows (computed once)."""
        if self._norms is None:
            self._norms = np.concatenate([np.einsum("ij,ij->i", d, d) for d in
                                          (self.codec.decode(self.codes[lo:lo + _BLOCK])
                                           for lo in range(0, len(self.codes), _BLOCK))] or
                                         [np.zeros(0, np.float32)]).astype(np.float32)
        return self._norms

    def rescore(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Inner products of each query (n, c) with its own candidate rows (n, m; -1 = none, scored -inf),
        by compiled kernels reading the codes directly."""
        rows = np.ascontiguousarray(rows, np.int64)
        quantizer = self.codec.spec.quantizer
        if quantizer == "PQ":  # per query, its inner products with every centroid: a few at a time
            centroids = self.codec.arrays["centroids"]  # (m, 256, width)
            m, _, width = centroids.shape
            out = np.empty(rows.shape, np.float32)
            for lo in range(0, len(queries), _PQ_QUERIES):
                q = queries[lo:lo + _PQ_QUERIES]
                tables = np.einsum("imw,mcw->imc", q.reshape(len(q), m, width), centroids)
                out[lo:lo + len(q)] = _rescore_pq(np.ascontiguousarray(tables, np.float32), self.codes,
                                                  rows[lo:lo + len(q)])
            return out
        queries = np.ascontiguousarray(queries, np.float32)
        if quantizer == "F16":
            return _rescore_lut(queries, self.codes.view(np.uint16), rows, _F16)
        if quantizer == "SQ8":
            scaled = np.ascontiguousarray(queries * self.codec.arrays["step"], np.float32)
            return _rescore(scaled, (queries @ self.codec.arrays["low"]).astype(np.float32), self.codes, rows)
        return _rescore(queries, np.zeros(len(queries), np.float32), self.codes, rows)


# float16 bit patterns -> float32 values: numba has no float16, the kernels look values up.
_F16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
# Sums may be reassociated (vectorised): the same on one machine, as BLAS products are.
_FAST = {"reassoc", "contract"}


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def _rescore(scaled, offset, codes, rows):  # pragma: no cover - compiled
    n, m = rows.shape
    width = codes.shape[1]
    out = np.empty((n, m), np.float32)
    for i in range(n):
        for j in range(m):
            r = rows[i, j]
            if r < 0:
                out[i, j] = -np.inf
                continue
            s = np.float32(0.0)
            for d in range(width):
                s += scaled[i, d] * np.float32(codes[r, d])
            out[i, j] = s + offset[i]
    return out


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def _rescore_lut(queries, codes, rows, lut):  # pragma: no cover - compiled
    n, m = rows.shape
    width = codes.shape[1]
    out = np.empty((n, m), np.float32)
    for i in range(n):
        for j in range(m):
            r = rows[i, j]
            if r < 0:
                out[i, j] = -np.inf
                continue
            s = np.float32(0.0)
            for d in range(width):
                s += queries[i, d] * lut[codes[r, d]]
            out[i, j] = s
    return out


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def _rescore_pq(tables, codes, rows):  # pragma: no cover - compiled
    n, m = rows.shape
    spaces = codes.shape[1]
    out = np.empty((n, m), np.float32)
    for i in range(n):
        for j in range(m):
            r = rows[i, j]
            if r < 0:
                out[i, j] = -np.inf
                continue
            s = np.float32(0.0)
            for t in range(spaces):
                s += tables[i, t, codes[r, t]]
            out[i, j] = s
    return out


@numba.njit(nogil=True, cache=True)
def _lookup(codes, lut):  # pragma: no cover - compiled
    out = np.empty(codes.shape, np.float32)
    for i in range(codes.shape[0]):
        for d in range(codes.shape[1]):
            out[i, d] = lut[codes[i, d]]
    return out


def decode_f16(codes: np.ndarray) -> np.ndarray:
    """float16 codes as float32 (a compiled table look-up: numpy's conversion is slow)."""
    return _lookup(np.ascontiguousarray(codes).view(np.uint16), _F16)
