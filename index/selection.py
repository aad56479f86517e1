"""Top-k selection, compiled with numba: one pass over each row of keys.

Each row keeps its k best keys in a small sorted buffer; a key that does not beat
the buffer's last is dropped after one comparison, so a row costs about one
comparison per key. Rows excluded by a filter are skipped by their bit in packed
masks (bit set = excluded, little-endian, as :meth:`MaskCache.excluded_bits` packs
them), so a masked selection reads the mask only for keys that would enter the top k.

Ties are ordered by position: of equal keys, the earlier column wins. -inf and NaN
keys are never selected. The kernels release the GIL.
"""

from __future__ import annotations

import numba
import numpy as np

_NO_ROWS = np.zeros((0, 0), np.int64)
_NO_BITS = np.zeros((0, 0), np.uint8)


def top_k(
    keys: np.ndarray,
    k: int,
    spans: np.ndarray | None = None,
    bits: np.ndarray | None = None,
    group: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``keys`` (n, m), the columns and keys of the k highest, best first.

    ``spans[i] = (start, stop)`` limits row i to columns start..stop-1 (default all).
    ``bits`` (g, bytes) holds packed exclusion masks and ``group[i]`` the one row i
    obeys (-1: none). A mask bit is looked up by column, or with ``rows`` (n, m) by
    ``rows[i, j]``, where -1 marks a missing candidate. Returns (columns int64,
    keys float32), (n, k), padded with -1 / -inf.
    """
    keys = np.ascontiguousarray(keys, np.float32)
    n = len(keys)
    if spans is None:
        spans = np.empty((n, 2), np.int64)
        spans[:, 0], spans[:, 1] = 0, keys.shape[1]
    if bits is None or group is None:
        bits, group = _NO_BITS, np.full(n, -1, np.int64)
    rows = _NO_ROWS if rows is None else rows
    if spans.shape != (n, 2) or group.shape != (n,) or (len(rows) and rows.shape != keys.shape):
        raise ValueError(f"spans {spans.shape}, group {group.shape} and rows {rows.shape} do not fit keys {keys.shape}")
    return _select(keys, int(k), np.ascontiguousarray(spans, np.int64), np.ascontiguousarray(bits, np.uint8),
                   np.ascontiguousarray(group, np.int64), np.ascontiguousarray(rows, np.int64))


@numba.njit(nogil=True, cache=True)
def _select(keys, k, spans, bits, group, rows):  # pragma: no cover - compiled
    n = keys.shape[0]
    by_row = rows.shape[0] > 0
    pos = np.full((n, k), -1, np.int64)
    best = np.full((n, k), -np.inf, np.float32)
    if k == 0:
        return pos, best
    for i in range(n):  # indices are checked here: compiled code does not check them
        g = group[i]
        if spans[i, 0] < 0 or spans[i, 1] > keys.shape[1] or g >= bits.shape[0]:
            raise IndexError("a span reaches outside the keys, or a group has no mask")
        if g >= 0 and not by_row and spans[i, 1] > 8 * bits.shape[1]:
            raise IndexError("a mask is shorter than the rows it filters")
        count = 0
        last = -np.inf
        for j in range(spans[i, 0], spans[i, 1]):
            v = keys[i, j]
            if not v > last:  # also drops -inf and NaN while the buffer fills
                if count == k or not v > -np.inf:
                    continue
            r = rows[i, j] if by_row else j
            if r < 0:
                continue
            if g >= 0:
                if r >> 3 >= bits.shape[1]:
                    raise IndexError("a mask is shorter than the rows it filters")
                if (bits[g, r >> 3] >> (r & 7)) & 1:
                    continue
            t = count if count < k else k - 1
            while t > 0 and best[i, t - 1] < v:
                best[i, t] = best[i, t - 1]
                pos[i, t] = pos[i, t - 1]
                t -= 1
            best[i, t] = v
            pos[i, t] = j
            if count < k:
                count += 1
            if count == k:
                last = best[i, k - 1]
    return pos, best
