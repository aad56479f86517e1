"""The data model: validation names the row and the problem, and counts reconcile."""

import numpy as np
import pyarrow as pa
import pytest

from beamvec.index.schema import (
    SchemaError, results_table, validate_items, validate_queries, vectors_array,
)


def items(ids, vectors, **attributes):
    return pa.table({"id": ids, "vector": pa.array(vectors, pa.list_(pa.float32())), **attributes})


def test_bad_rows_are_rejected_with_their_row_and_reason():
    table = items(
        [1, 2, 2, None, 5, 6, 7],
        [[1, 0], [0, 1], [1, 1], [1, 1], [1, float("nan")], [1, 2, 3], None],
        year=[2000, None, 2001, 2002, 2003, 2004, 2005],
    )
    result = validate_items(table, row_offset=100)
    assert result.table.column("id").to_pylist() == [1, 2]
    assert result.rows.tolist() == [100, 101]
    assert [(r.row, r.id, r.reason) for r in result.rejections] == [
        (102, "2", "duplicate id 2 (first at row 1)"),
        (103, None, "missing id"),
        (104, "5", "vector has NaN or infinite values (after conversion to float32)"),
        (105, "6", "vector has dimension 3, expected 2"),
        (106, "7", "missing vector"),
    ]
    assert len(result.rows) + len(result.rejections) == table.num_rows
    assert result.rejections_table().num_rows == 5
    np.testing.assert_array_equal(result.vectors, [[1, 0], [0, 1]])


def test_float64_overflowing_float32_is_rejected():
    table = pa.table({"id": ["a", "b"], "vector": pa.array([[1e39, 0.0], [1.0, 0.0]], pa.list_(pa.float64()))})
    result = validate_items(table)
    assert [r.id for r in result.rejections] == ["a"]


def test_whole_table_problems_raise_schema_error():
    with pytest.raises(SchemaError, match="no 'vector' column"):
        validate_items(pa.table({"id": [1]}))
    with pytest.raises(SchemaError, match="attribute column 'scores' has unsupported type list<item: double>"):
        validate_items(items([1], [[1.0]], scores=pa.array([[0.5]])))
    with pytest.raises(SchemaError, match="column 'id' has type double"):
        validate_items(items(pa.array([1.5]), [[1.0]]))


def test_queries_with_bad_predicates_or_k_are_rejected():
    table = pa.table({
        "query_id": ["q1", "q2", "q3", "q4"],
        "vector": vectors_array(np.ones((4, 2), np.float32)),
        "predicate": ["year >= 2000", "year >=", None, ""],
        "k": [10, 10, 0, None],
    })
    result = validate_queries(table, dimension=2)
    assert result.table.column("query_id").to_pylist() == ["q1", "q4"]
    reasons = {r.id: r.reason for r in result.rejections}
    assert reasons["q2"].startswith("predicate does not parse: at position 7")
    assert reasons["q3"] == "k must be at least 1, got 0"


def test_results_table_holds_neighbors_best_first_without_padding():
    ids = pa.array(["a", "b", None, "c", None, None])
    scores = np.array([[0.9, 0.5, np.nan], [0.7, np.nan, np.nan]], np.float32)
    table = results_table(["q1", "q2"], ids, scores, np.array([2, 1]))
    assert table.schema.field("neighbors").type == pa.list_(pa.struct([("id", pa.string()), ("score", pa.float32())]))
    rows = table.to_pylist()
    assert [n["id"] for n in rows[0]["neighbors"]] == ["a", "b"]
    assert rows[1]["neighbors"] == [{"id": "c", "score": pytest.approx(0.7)}]
