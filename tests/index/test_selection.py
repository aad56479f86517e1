"""The compiled top-k selection, against a stable sort of the allowed keys."""

import numpy as np
import pytest

from beamvec.index import selection


def reference(keys, k, allowed):
    """Per row, the k best allowed columns by a stable sort (earlier column first on ties), -1 / -inf padded."""
    pos = np.full((len(keys), k), -1, np.int64)
    best = np.full((len(keys), k), -np.inf, np.float32)
    for i, row in enumerate(keys):
        columns = np.flatnonzero(allowed[i] & (row > -np.inf))
        chosen = columns[np.argsort(-row[columns], kind="stable")][:k]
        pos[i, :len(chosen)], best[i, :len(chosen)] = chosen, row[chosen]
    return pos, best


@pytest.mark.parametrize("k", [1, 10, 64])
def test_spans_and_column_masks_select_only_allowed_keys(k):
    rng = np.random.default_rng(3)
    keys = np.round(rng.standard_normal((60, 700)), 1).astype(np.float32)  # many ties
    excluded = rng.random((3, 700)) < [[0.0], [0.6], [0.995]]
    group = rng.integers(-1, 3, 60)
    spans = np.sort(rng.integers(0, 701, (60, 2)), axis=1)
    allowed = np.ones_like(keys, bool)
    for i, (g, (lo, hi)) in enumerate(zip(group, spans)):
        allowed[i, :lo] = allowed[i, hi:] = False
        if g >= 0:
            allowed[i] &= ~excluded[g]
    bits = np.packbits(excluded, axis=1, bitorder="little")
    pos, best = selection.top_k(keys, k, spans, bits, group)
    want_pos, want_best = reference(keys, k, allowed)
    assert np.array_equal(pos, want_pos) and np.array_equal(best, want_best)


def test_masks_looked_up_by_row_skip_missing_candidates():
    rng = np.random.default_rng(4)
    rows = rng.integers(-1, 5_000, (40, 128))
    keys = np.where(rows >= 0, rng.standard_normal((40, 128)), -np.inf).astype(np.float32)
    excluded = rng.random((2, 5_000)) < 0.5
    group = np.repeat([0, -1, 1, 0], 10)
    allowed = (rows >= 0) & np.where(group[:, None] >= 0, ~excluded[np.maximum(group, 0)[:, None], np.maximum(rows, 0)], True)
    pos, best = selection.top_k(keys, 10, bits=np.packbits(excluded, axis=1, bitorder="little"), group=group, rows=rows)
    want_pos, want_best = reference(keys, 10, allowed)
    assert np.array_equal(pos, want_pos) and np.array_equal(best, want_best)


def test_nan_and_minus_infinity_are_never_selected():
    keys = np.array([[np.nan, 1.0, -np.inf, np.nan, 0.5]], np.float32)
    pos, best = selection.top_k(keys, 4)
    assert pos.tolist() == [[1, 4, -1, -1]] and best[0, :2].tolist() == [1.0, 0.5]


def test_out_of_range_inputs_are_errors_not_stray_reads():
    keys = np.zeros((2, 100), np.float32)
    short = np.zeros((1, 4), np.uint8)  # 32 rows of mask for 100 columns
    with pytest.raises(IndexError, match="shorter"):
        selection.top_k(keys, 3, bits=short, group=np.array([0, 0]))
    with pytest.raises(IndexError, match="shorter"):
        selection.top_k(keys, 3, bits=short, group=np.array([0, 0]), rows=np.full((2, 100), 40))
    with pytest.raises(IndexError, match="span"):
        selection.top_k(keys, 3, spans=np.array([[0, 101], [0, 5]]))
    with pytest.raises(IndexError, match="group"):
        selection.top_k(keys, 3, bits=np.zeros((1, 13), np.uint8), group=np.array([1, 0]))
    with pytest.raises(ValueError, match="do not fit"):
        selection.top_k(keys, 3, rows=np.zeros((2, 50), np.int64))
