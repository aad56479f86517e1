"""Workload logs: the deterministic split into calibration and held-out queries, and the recall summary."""

import numpy as np
import pyarrow as pa
import pytest

from beamvec.pipelines import synthetic
from beamvec.index.querylog import QueryLog, build_parts, recall_summary

DIM = 8


def make_log(n, seed=0):
    table = synthetic.make_queries(n, DIM, seed=seed)
    return QueryLog(table.column("predicate").to_pylist(), table.column("vector").combine_chunks().values.to_numpy()
                    .reshape(-1, DIM))


def test_split_is_deterministic_disjoint_and_sized():
    log = make_log(1_000)
    calibration, heldout = log.split()
    again_calibration, again_heldout = make_log(1_000).split()
    assert len(heldout) == 250 and len(calibration) == 750
    np.testing.assert_array_equal(heldout.vectors, again_heldout.vectors)
    assert heldout.predicates == again_heldout.predicates and calibration.predicates == again_calibration.predicates
    # Together they are the log, each query once, in log order.
    rows = {tuple(v): i for i, v in enumerate(log.vectors)}
    positions = sorted(rows[tuple(v)] for v in np.concatenate([calibration.vectors, heldout.vectors]))
    assert positions == list(range(1_000))
    assert [rows[tuple(v)] for v in heldout.vectors] == sorted(rows[tuple(v)] for v in heldout.vectors)
    assert [log.predicates[rows[tuple(v)]] for v in heldout.vectors] == heldout.predicates


def test_split_caps_the_held_out_part_and_spreads_it_over_the_log():
    log = make_log(12_000)
    _, heldout = log.split()
    assert len(heldout) == 2_000
    _, small = log.split(heldout_share=0.1, max_heldout=100)
    assert len(small) == 100
    rows = {tuple(v): i for i, v in enumerate(log.vectors)}
    positions = np.array([rows[tuple(v)] for v in heldout.vectors])
    assert np.histogram(positions, bins=4, range=(0, 12_000))[0].min() > 400  # not just the first queries


def test_a_log_without_vectors_is_all_calibration_and_iterates_as_predicates():
    log = QueryLog(["category = 'rock'", None, ""])
    calibration, heldout = log.split()
    assert calibration is log and len(heldout) == 0 and not heldout.has_vectors
    assert list(log) == ["category = 'rock'", None, ""] and len(log) == 3
    assert build_parts(log, pa.schema([("id", pa.int64())]), DIM) == (None, None)


def test_vectors_for_some_queries_only_stay_aligned_with_their_predicates():
    log = QueryLog(["a = 1", "a = 2", "a = 3"], np.eye(2, 3, dtype=np.float32), vector_rows=[0, 2])
    aligned = log.queries()
    assert aligned.predicates == ["a = 1", "a = 3"] and aligned.vectors.shape == (2, 3)
    with pytest.raises(ValueError, match="give vector_rows"):
        QueryLog(["a = 1"], np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        QueryLog(["a = 1"], np.full((1, 3), np.nan))


def test_build_parts_drops_held_out_predicates_the_items_cannot_answer_and_caps_calibration():
    log = make_log(400)
    log = QueryLog(["colour = 'red'" if i % 2 else p for i, p in enumerate(log.predicates)], log.vectors)
    schema = synthetic.make_items(10, DIM).drop_columns(["vector"]).schema
    calibration, heldout = build_parts(log, schema, DIM)
    assert len(calibration) == 300 and 0 < len(heldout) < 100
    assert all(not p or "colour" not in p for p in heldout.predicates)
    with pytest.raises(ValueError, match="dimension 8; the items have dimension 9"):
        build_parts(log, schema, 9)
    assert len(make_log(500).sample(100)) == 100
    np.testing.assert_array_equal(make_log(500).sample(100).vectors, make_log(500).sample(100).vectors)


def test_recall_summary_reports_the_most_selective_tenth():
    recall = np.r_[np.full(90, 1.0), np.full(10, 0.5)]
    matches = np.r_[np.full(90, 1_000), np.arange(10)]
    summary = recall_summary(recall, matches, 10, 0.95)
    assert summary == {"queries": 100, "k": 10, "mean": 0.95, "selective": 0.5, "selective_queries": 10, "target": 0.95}
