"""The exact oracle against a naive per-query, per-row reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beamvec.index import exact


def naive(vectors, queries, k, metric, masks):
    """One query at a time, one row at a time: the reference the oracle must equal."""
    if metric == "cosine":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    rows, scores = [], []
    for q, mask in zip(queries, masks):
        cands = []
        for r, v in enumerate(vectors):
            if mask is None or mask[r]:
                s = float(np.sum((q.astype(np.float64) - v) ** 2)) if metric == "squared_l2" else float(np.dot(q.astype(np.float64), v))
                cands.append((s if metric == "squared_l2" else -s, r))
        cands.sort()
        top = cands[:k]
        rows.append([r for _, r in top] + [-1] * (k - len(top)))
        scores.append([(s if metric == "squared_l2" else -s) for s, _ in top] + [np.nan] * (k - len(top)))
    return np.array(rows), np.array(scores)


@pytest.mark.parametrize("metric", exact.METRICS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_search_equals_naive(metric, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    n, d, nq = data.draw(st.integers(1, 60)), data.draw(st.integers(1, 8)), data.draw(st.integers(1, 12))
    k = data.draw(st.integers(1, 15))
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((nq, d)).astype(np.float32)
    shared = rng.random(n) < 0.3
    masks = [None if i % 3 == 0 else shared if i % 3 == 1 else rng.random(n) < 0.5 for i in range(nq)]
    rows, scores = exact.search(vectors, queries, k, metric, masks)
    want_rows, want_scores = naive(vectors, queries, k, metric, masks)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    # Rows may differ only where scores tie; compare the rows' own scores instead.
    assert ((rows == -1) == (want_rows == -1)).all()
    for i, mask in enumerate(masks):
        assert all(mask is None or mask[r] for r in rows[i][rows[i] >= 0])


def test_top_k_orders_best_first_and_pads():
    keys = np.array([[0.1, 0.9, -np.inf, 0.5], [1.0, 2.0, 3.0, 4.0]], np.float32)
    pos, best = exact.top_k(keys, 5)
    assert pos.tolist() == [[1, 3, 0, -1, -1], [3, 2, 1, 0, -1]]
    assert best[0, :3].tolist() == pytest.approx([0.9, 0.5, 0.1])


def test_merge_of_parts_equals_top_k_of_all():
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((20, 30)).astype(np.float32)
    handles = np.broadcast_to(np.arange(30), (20, 30))
    parts = [exact.top_k(keys[:, s:s + 10], 4) for s in (0, 10, 20)]
    parts = [(np.where(p >= 0, p + 10 * j, -1), kk) for j, (p, kk) in enumerate(parts)]
    merged, merged_keys = exact.merge(parts, 4)
    want, want_keys = exact.top_k(keys, 4)
    assert (merged == np.take_along_axis(handles, want, axis=1)).all()
    np.testing.assert_array_equal(merged_keys, want_keys)


def test_recall_counts_overlap_and_ignores_padding():
    truth = np.array([[1, 2, 3, -1], [-1, -1, -1, -1]])
    found = np.array([[3, 9, 1, -1], [5, -1, -1, -1]])
    assert exact.recall(found, truth).tolist() == pytest.approx([2 / 3, 1.0])


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown metric 'l1'"):
        exact.search(np.zeros((2, 2)), np.zeros((1, 2)), 1, "l1")


@pytest.mark.parametrize("shape", [(200, 5_003), (3, 5_003), (1, 800), (50, 900), (40, 300), (2, 40), (500, 20)])
@pytest.mark.parametrize("excluded", [0.0, 0.8, 0.999, 1.0])
def test_top_k_equals_a_full_sort(shape, excluded):
    # Short and long rows, few and many of them, mostly excluded or not: the same as a stable sort of each row.
    rng = np.random.default_rng(1)
    keys = rng.standard_normal(shape).astype(np.float32)
    keys[rng.random(keys.shape) < excluded] = -np.inf
    pos, best = exact.top_k(keys, 10)
    order = np.argsort(-keys, axis=1, kind="stable")[:, :10]
    want = np.take_along_axis(keys, order, axis=1)
    assert np.array_equal(best, want)
    assert np.array_equal(pos, np.where(np.isfinite(want), order, -1))


def test_top_k_breaks_ties_by_position():
    keys = np.round(np.random.default_rng(2).standard_normal((300, 4_000)), 1).astype(np.float32)
    pos, best = exact.top_k(keys, 10)
    order = np.argsort(-keys, axis=1, kind="stable")[:, :10]
    assert np.array_equal(pos, order) and np.array_equal(best, np.take_along_axis(keys, order, axis=1))


def test_recall_equals_set_overlap():
    rng = np.random.default_rng(3)
    for _ in range(300):
        n, k_found, k_truth = rng.integers(0, 6), rng.integers(1, 8), rng.integers(1, 8)
        found = np.array([rng.permutation(np.arange(-1, 15))[:k_found] for _ in range(n)]).reshape(n, k_found)
        truth = np.array([rng.permutation(np.arange(-1, 15))[:k_truth] for _ in range(n)]).reshape(n, k_truth)
        want = [len(set(t) & set(f) - {-1}) / len(set(t) - {-1}) if set(t) - {-1} else 1.0 for f, t in zip(found, truth)]
        assert exact.recall(found, truth).tolist() == pytest.approx(want)


@pytest.mark.parametrize("metric", exact.METRICS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_groups_over_their_gathered_rows_equal_one_search_each(metric, data):
    """search_gathered (one gather, one selection for many groups) gives what search_rows gives per group."""
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    n, d, k = data.draw(st.integers(1, 60)), data.draw(st.integers(1, 8)), data.draw(st.integers(1, 12))
    vectors = exact.prepare(rng.standard_normal((n, d)).astype(np.float32), metric)
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=6))
    rows = [np.flatnonzero(rng.random(n) < data.draw(st.sampled_from([0.05, 0.3, 1.0]))) for _ in sizes]
    rows = [r if len(r) else np.array([int(rng.integers(n))]) for r in rows]
    queries = exact.prepare(rng.standard_normal((sum(sizes), d)).astype(np.float32), metric)
    got_rows, got_keys = exact.search_gathered(vectors, queries, k, metric, rows, sizes)
    at = 0
    for r, size in zip(rows, sizes):
        want_rows, want_keys = exact.search_rows(vectors, queries[at:at + size], k, metric, r)
        assert got_rows[at:at + size].tolist() == want_rows.tolist()
        np.testing.assert_allclose(got_keys[at:at + size], want_keys, rtol=1e-5, atol=1e-5)
        at += size
