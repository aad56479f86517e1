"""Exact top-k search by brute force: the ground truth for every test and benchmark.

Scores follow the metric: ``dot_product`` and ``cosine`` report the similarity
(higher is better), ``squared_l2`` the squared distance (lower is better).
Internally everything ranks by a *key* where higher is better (the negated
distance for ``squared_l2``), so merging partial results never needs the metric.

Results are ``(rows, scores)``: (n, k) arrays of row positions (int64, -1 where
fewer than k rows exist) and scores (float32, NaN there). Results are a pure
function of the input (no randomness, ties ordered by row position).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from beamvec.index import selection
from beamvec.index.codes import CodeMatrix
from beamvec.index.stats import SearchStats

METRICS = ("dot_product", "cosine", "squared_l2")

# Queries scored per matrix product: bounds the (block, rows) score matrix.
_QUERY_BLOCK = 1024
# Scores held at once by search_masked: bounds its (block, rows) matrix to 64 MB.
_SCORES_PER_BLOCK = 1 << 24


def check_metric(metric: str) -> str:
    """Return ``metric`` or raise ValueError naming the metrics beamvec knows."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return metric


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as contiguous float32, unit-normalised for ``cosine`` (zero vectors stay zero)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if check_metric(metric) == "cosine":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms > 0, norms, 1).astype(np.float32)
    return out


def keys_from_scores(scores: np.ndarray, metric: str) -> np.ndarray:
    """Ranking keys (higher is better) from metric scores."""
    return -scores if metric == "squared_l2" else scores


def scores_from_keys(keys: np.ndarray, metric: str) -> np.ndarray:
    """Metric scores from ranking keys."""
    return -keys if metric == "squared_l2" else keys


def squared_norms(rows) -> np.ndarray:
    """Squared norms of float32 rows or of a :class:`beamvec.index.codes.CodeMatrix`'s decoded rows."""
    return rows.norms() if isinstance(rows, CodeMatrix) else np.einsum("ij,ij->i", rows, rows)


def score_matrix(queries: np.ndarray, rows, metric: str, row_norms: np.ndarray | None = None) -> np.ndarray:
    """Ranking keys of every query against every row, as one matrix product (n_queries, n_rows).

    ``rows`` is a float32 matrix or a :class:`beamvec.index.codes.CodeMatrix` (scored a decoded
    block at a time)."""
    keys = rows.dots(queries) if isinstance(rows, CodeMatrix) else queries @ rows.T
    if metric == "squared_l2":
        norms = row_norms if row_norms is not None else squared_norms(rows)
        # -(|q|^2 - 2 q.r + |r|^2); |q|^2 is kept so keys are true negated distances.
        keys = 2 * keys - norms[None, :] - np.einsum("ij,ij->i", queries, queries)[:, None]
    return keys


def top_k(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``keys``, the positions and keys of the k highest, best first.

    Ties are ordered by position (the earlier wins). Entries of ``keys`` may be -inf
    for excluded rows; they are never returned: -1 / -inf pad the result.
    """
    return selection.top_k(keys, k)


def search_rows(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str, rows: np.ndarray | None = None,
    stats: SearchStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` among ``vectors[rows]`` (all rows when None).

    ``vectors`` (float32, or a :class:`beamvec.index.codes.CodeMatrix`) and ``queries`` must
    already be prepared (see :func:`prepare`; code-space queries for codes).
    All queries are scored against the same rows with one matrix product per
    block of queries. Returns (row positions into ``vectors``, keys); ``stats`` gets the
    time of scoring and of selection.
    """
    stats = stats or SearchStats()
    with stats.timed("scoring"):
        subset = vectors if rows is None else vectors[rows]
        norms = squared_norms(subset) if metric == "squared_l2" else None
    out_pos = np.empty((len(queries), k), np.int64)
    out_keys = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), _QUERY_BLOCK):
        block = queries[start:start + _QUERY_BLOCK]
        with stats.timed("scoring"):
            scores = score_matrix(block, subset, metric, norms)
        with stats.timed("selection"):
            pos, keys = top_k(scores, k)
        if rows is not None and len(rows):
            pos = np.where(pos >= 0, rows[np.maximum(pos, 0)], -1)
        out_pos[start:start + len(block)] = pos
        out_keys[start:start + len(block)] = keys
    return out_pos, out_keys


def search_gathered(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str, rows: Sequence[np.ndarray], sizes: Sequence[int],
    stats: SearchStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of groups of queries, each group among its own rows: the next ``sizes[g]`` of
    ``queries`` among ``vectors[rows[g]]`` (``rows[g]`` ascending, non-empty), as :func:`search_rows`
    finds them one group at a time, but with one gather of every group's rows, a product per group
    and one selection for all: for the many groups of a few rows each that selective predicates make,
    where a call per group costs more than its scores. The score matrix is (queries, most rows of a group)."""
    stats = stats or SearchStats()
    sizes = np.asarray(sizes, np.int64)
    lengths = np.array([len(r) for r in rows], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    keys = np.full((int(sizes.sum()), int(lengths.max(initial=1))), -np.inf, np.float32)
    with stats.timed("scoring"):
        flat = np.concatenate(rows) if len(rows) else np.zeros(0, np.int64)
        subset = vectors[flat]
        norms = squared_norms(subset) if metric == "squared_l2" else None
        at = 0
        for size, a, b in zip(sizes.tolist(), offsets[:-1].tolist(), offsets[1:].tolist()):
            keys[at:at + size, :b - a] = score_matrix(queries[at:at + size], subset[a:b], metric,
                                                      None if norms is None else norms[a:b])
            at += size
    with stats.timed("selection"):
        pos, best = top_k(keys, k)
    first = np.repeat(offsets[:-1], sizes)[:, None]
    return np.where(pos >= 0, flat[np.minimum(first + np.maximum(pos, 0), max(len(flat) - 1, 0))], -1), best


def search_masked(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    spans: np.ndarray | None = None,
    bits: np.ndarray | None = None,
    group: np.ndarray | None = None,
    stats: SearchStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query among the rows its own mask allows.

    ``spans[i] = (start, stop)`` limits query i to rows start..stop-1 (default: all);
    ``bits`` (g, bytes) holds packed exclusion masks (bit set = row excluded, little
    endian) and ``group[i]`` the one query i obeys besides (-1: none). All queries
    are scored against all rows with one matrix product per block of queries, then
    selected within their spans and masks: cheaper than gathering rows per
    predicate when the predicates are many and each matches a large share of the
    rows. Inputs must be prepared; returns (row positions, keys). ``stats`` gets the
    time of scoring and of selection.
    """
    stats = stats or SearchStats()
    n_rows = len(vectors)
    norms = squared_norms(vectors) if metric == "squared_l2" else None
    block = max(1, min(_QUERY_BLOCK, _SCORES_PER_BLOCK // max(1, n_rows)))
    out_pos = np.empty((len(queries), k), np.int64)
    out_keys = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), block):
        stop = min(start + block, len(queries))
        with stats.timed("scoring"):
            keys = score_matrix(queries[start:stop], vectors, metric, norms)
        with stats.timed("selection"):
            out_pos[start:stop], out_keys[start:stop] = selection.top_k(
                keys, k, None if spans is None else spans[start:stop], bits,
                None if group is None else group[start:stop])
    return out_pos, out_keys


def search(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    masks: Sequence[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact filtered top-k: ground truth.

    ``masks[i]`` is query i's boolean row mask (None = every row). Queries whose
    masks are the same object are scored together with one matrix product, so pass
    one mask object per distinct predicate. Returns (rows, scores) as described in
    the module docstring.
    """
    check_metric(metric)
    vectors = prepare(vectors, metric)
    queries = prepare(queries, metric)
    n = len(queries)
    masks = list(masks) if masks is not None else [None] * n
    if len(masks) != n:
        raise ValueError(f"{len(masks)} masks for {n} queries")
    groups: dict[int, list[int]] = {}
    by_id: dict[int, np.ndarray | None] = {}
    for i, mask in enumerate(masks):
        groups.setdefault(id(mask), []).append(i)
        by_id[id(mask)] = mask
    rows = np.full((n, k), -1, np.int64)
    keys = np.full((n, k), -np.inf, np.float32)
    for key, members in groups.items():
        mask = by_id[key]
        subset = None if mask is None else np.flatnonzero(mask)
        members = np.asarray(members)
        rows[members], keys[members] = search_rows(vectors, queries[members], k, metric, subset)
    return rows, finish(keys, metric)


def finish(keys: np.ndarray, metric: str) -> np.ndarray:
    """Scores from keys, NaN where no result exists (key -inf)."""
    scores = scores_from_keys(keys.astype(np.float32), metric)
    scores[~np.isfinite(keys)] = np.nan
    return scores


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge partial top-k lists into the top-k per query.

    ``parts`` holds (handles, keys) pairs of (n, k_p) arrays: any int64 handle (-1 =
    none) and ranking keys. Returns (handles, keys), (n, k), best first, -1 / -inf
    padded.
    """
    handles = np.concatenate([h for h, _ in parts], axis=1)
    keys = np.concatenate([np.where(h >= 0, kk, -np.inf) for h, kk in parts], axis=1)
    pos, best = top_k(keys, k)
    out = np.take_along_axis(handles, np.maximum(pos, 0), axis=1)
    out[pos < 0] = -1
    return out, best


def ids_of_rows(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Item ids at result row positions, -1 where a row is padding (-1)."""
    return np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


def recall(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per query, the fraction of the true result rows found (1.0 where truth is empty).

    ``found`` and ``truth`` are (n, k) handle arrays with -1 padding (None for
    object arrays), distinct within a row; handles must be comparable (e.g. global row
    numbers or ids).
    """
    if truth.dtype == object or found.dtype == object:
        return _recall_of_objects(found, truth)
    n = len(truth)
    valid = truth != -1
    if n == 0 or not valid.any():
        return np.ones(n)
    # Pair each handle with its query so one sorted membership test covers all rows.
    low = min(int(truth[valid].min()), int(found.min()))
    span = max(int(truth.max()), int(found.max())) - low + 1
    query = np.arange(n, dtype=np.int64)[:, None] * span
    hits = np.isin(truth - low + query, np.where(found != -1, found - low + query, -1)) & valid
    total = valid.sum(axis=1)
    return np.where(total > 0, hits.sum(axis=1) / np.maximum(total, 1), 1.0)


def _recall_of_objects(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    out = np.ones(len(truth))
    for i, (f, t) in enumerate(zip(found, truth)):
        t = {x for x in t if x is not None and x != -1}
        if t:
            out[i] = len(t & set(f.tolist())) / len(t)
    return out
