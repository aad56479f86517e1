"""Tests for beamvec.index.kernel: the instruction set and its chunked, short-circuiting evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from beamvec.index import kernel
from beamvec.index.columns import Column


def layout_of(values: np.ndarray, valid: np.ndarray | None = None) -> tuple[kernel.Layout, int]:
    layout = kernel.Layout(len(values))
    _, row, _ = layout.slot("x", Column("integer", values, valid))
    return layout, row


def test_and_or_skip_whole_chunks_and_still_agree_with_numpy():
    n = 3 * 512 + 100  # several chunks: the first all below 600, so "x >= 600 AND ..." is skipped there
    x = np.arange(n, dtype=np.int64)
    valid = np.ones(n, bool)
    valid[::7] = False
    layout, row = layout_of(x, valid)
    for conjunction in (True, False):
        b = kernel.Builder()
        b.compare(False, row, ">=", 600)
        guard = b.guard(conjunction)
        b.contains(False, row, np.arange(0, n, 3))
        b.combine(conjunction, guard)
        out, count, first, last = kernel.run(b.build(), layout, 0, n)
        ge, member = x >= 600, x % 3 == 0
        want = ((ge & member) if conjunction else (ge | member)) & valid
        assert out.tolist() == want.tolist()
        hits = np.flatnonzero(want)
        assert (count, first, last) == (len(hits), hits[0], hits[-1] + 1)


def test_unknown_is_neither_true_nor_false():
    layout, row = layout_of(np.array([1, 2, 3], np.int64), np.array([True, False, True]))
    b = kernel.Builder()
    b.compare(False, row, "=", 2)
    b.negate()
    program = b.build()
    assert kernel.run(program, layout, 0, 3)[0].tolist() == [True, False, True]
    assert kernel.run(program, layout, 0, 3, truth=False)[0].tolist() == [False, False, False]


def test_in_lists_by_table_and_by_search_agree():
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**62), 2**62, 5000)
    layout, row = layout_of(x)
    near = np.unique(x[:40] % 1000)  # a small span: a lookup table
    far = np.unique(x[:40])  # a huge span: binary search
    for keys in (near, far):
        b = kernel.Builder()
        b.contains(False, row, keys)
        assert kernel.run(b.build(), layout, 0, len(x))[0].tolist() == np.isin(x, keys).tolist()


def test_a_program_must_leave_one_value():
    b = kernel.Builder()
    b.constant(True)
    b.constant(False)
    with pytest.raises(ValueError, match="leaves 2"):
        b.build()


def test_columns_added_from_many_threads_each_keep_their_own_row():
    """A worker's threads share an index's columns: slots added at once must not overwrite each other."""
    import threading

    n, names = 4096, [f"c{i}" for i in range(64)]
    layout = kernel.Layout(n)
    start = threading.Barrier(8)

    def add(mine: list[str]) -> None:
        start.wait()
        for name in mine:
            layout.slot(name, Column("integer", np.full(n, int(name[1:]), np.int64), None))

    threads = [threading.Thread(target=add, args=(names[t::8],)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in names:
        _, row, _ = layout.slot(name, None)
        assert (layout.ints[row] == int(name[1:])).all(), name
    assert len(layout.ints) == len(names)
