"""The data model: items, queries and results as Arrow tables, and their validation.

Items: ``id`` (string or integer, unique), ``vector`` (list or fixed_size_list of
float16/32/64), every other column an attribute (string, integer, float, bool,
timestamp or date; nullable).
Queries: ``query_id``, ``vector``, ``predicate`` (text; null or empty = no filter),
``k`` (integer, optional).
Results: ``query_id``, ``neighbors`` = list<struct<id, score>>, best first.

Validation splits a table into the rows that can be used and :class:`Rejection`
records that name the row and the problem, so callers can dead-letter them and
counts reconcile (input = accepted + rejected). Problems of the whole table (a
missing column, an attribute type the index cannot hold) raise :class:`SchemaError`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ID = "id"
VECTOR = "vector"
QUERY_ID = "query_id"
PREDICATE = "predicate"
K = "k"
NEIGHBORS = "neighbors"
SCORE = "score"

REJECTION_SCHEMA = pa.schema([("row", pa.int64()), ("id", pa.string()), ("reason", pa.string())])


class SchemaError(ValueError):
    """A table cannot be used at all: a column is missing or has a type beamvec cannot hold."""


@dataclasses.dataclass(frozen=True)
class Rejection:
    """One unusable row: its position in the input, its id (as text, if any) and why."""

    row: int
    id: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class Validated:
    """The outcome of validating a table: the usable rows, their vectors, and the rejected rows.

    ``rows`` holds the input positions of the accepted rows, in input order; ``source`` names
    the input they came from (a file), so (source, first row) tells blocks apart.
    """

    table: pa.Table
    vectors: np.ndarray
    rows: np.ndarray
    rejections: tuple[Rejection, ...]
    source: str = ""

    def rejections_table(self) -> pa.Table:
        """The rejections as a dead-letter table (row, id, reason)."""
        return rejections_to_table(self.rejections)


def rejections_to_table(rejections: Iterable[Rejection]) -> pa.Table:
    """Rejection records as an Arrow table with :data:`REJECTION_SCHEMA`."""
    rows = list(rejections)
    return pa.table(
        {
            "row": pa.array([r.row for r in rows], pa.int64()),
            "id": pa.array([r.id for r in rows], pa.string()),
            "reason": pa.array([r.reason for r in rows], pa.string()),
        },
        schema=REJECTION_SCHEMA,
    )


def is_attribute_type(t: pa.DataType) -> bool:
    """True for the attribute types an index can hold and predicates can test."""
    if pa.types.is_dictionary(t):
        return is_attribute_type(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):  # a multi-valued attribute (tags)
        element = t.value_type
        return pa.types.is_string(element) or pa.types.is_large_string(element) or pa.types.is_integer(element)
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_date(t)
    )


def is_vector_type(t: pa.DataType) -> bool:
    """True for list, large_list or fixed_size_list of floats."""
    return (
        pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    ) and pa.types.is_floating(t.value_type)


def _id_type_ok(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)


def _require(table: pa.Table, column: str, ok, what: str, kind: str) -> None:
    if column not in table.column_names:
        raise SchemaError(f"{kind} have no '{column}' column; columns are: {', '.join(table.column_names)}")
    t = table.schema.field(column).type
    if not ok(t):
        raise SchemaError(f"column '{column}' has type {t}; expected {what}")


def attribute_columns(schema: pa.Schema) -> list[str]:
    """The attribute columns of an items schema: every column but id and vector."""
    return [n for n in schema.names if n not in (ID, VECTOR)]


def check_item_schema(schema: pa.Schema) -> None:
    """Raise SchemaError unless ``schema`` is a valid items schema."""
    table = schema.empty_table()
    _require(table, ID, _id_type_ok, "string or integer", "items")
    _require(table, VECTOR, is_vector_type, "a list of float16/float32/float64", "items")
    for name in attribute_columns(schema):
        t = schema.field(name).type
        if not is_attribute_type(t):
            raise SchemaError(
                f"attribute column '{name}' has unsupported type {t}; "
                "supported: string, integer, float, bool, timestamp, date, list<string>, list<int64>"
            )


def vector_dimension(column: pa.ChunkedArray | pa.Array) -> int | None:
    """The dimension of a vector column: its fixed size, else the first non-null row's length."""
    if pa.types.is_fixed_size_list(column.type):
        return column.type.list_size
    lengths = pc.drop_null(pc.list_value_length(column))
    return int(lengths[0].as_py()) if len(lengths) else None


def _id_text(value) -> str | None:
    return None if value is None else str(value)


def check_vectors(column: pa.ChunkedArray | pa.Array, dimension: int) -> tuple[np.ndarray, dict[int, str]]:
    """Dense float32 vectors (bad rows zero-filled) and, per bad row, the reason."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    bad: dict[int, str] = {}
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(nulls):
        bad[int(i)] = "missing vector"
    for i in np.flatnonzero(~nulls & (lengths != dimension)):
        bad[int(i)] = f"vector has dimension {int(lengths[i])}, expected {dimension}"
    out = np.zeros((n, dimension), np.float32)
    good = np.flatnonzero(~nulls & (lengths == dimension))
    if len(good):
        sub = column.take(pa.array(good))
        values = sub.values if pa.types.is_fixed_size_list(sub.type) else sub.flatten()
        if values.null_count:
            row_has_null = values.is_null().to_numpy(zero_copy_only=False).reshape(len(good), dimension).any(axis=1)
            for i in good[row_has_null]:
                bad[int(i)] = "vector has a null element"
            values = values.fill_null(0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            mat = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(good), dimension)
        for i in good[~np.isfinite(mat).all(axis=1)]:
            bad.setdefault(int(i), "vector has NaN or infinite values (after conversion to float32)")
        out[good] = mat
    return out, bad


def split_rows(
    table: pa.Table, vectors: np.ndarray, bad: dict[int, str], id_column: str, row_offset: int
) -> Validated:
    ids = table.column(id_column).to_pylist()
    rows = np.array(sorted(set(range(table.num_rows)) - set(bad)), dtype=np.int64)
    rejections = tuple(
        Rejection(row_offset + i, _id_text(ids[i]), reason) for i, reason in sorted(bad.items())
    )
    return Validated(table.take(pa.array(rows)), vectors[rows], rows + row_offset, rejections)


def check_ids(table: pa.Table, column: str, bad: dict[int, str]) -> None:
    """Mark null ids, and every repeat of an id after its first valid occurrence."""
    first: dict[object, int] = {}
    for i, value in enumerate(table.column(column).to_pylist()):
        if value is None:
            bad[i] = f"missing {column}"
        elif i in bad:
            continue
        elif value in first:
            bad[i] = f"duplicate {column} {value!r} (first at row {first[value]})"
        else:
            first[value] = i


def validate_items(table: pa.Table, dimension: int | None = None, row_offset: int = 0) -> Validated:
    """Split items into usable rows and rejections.

    Rows are rejected for a missing id, a duplicate id (within ``table``), a missing
    vector, a vector of the wrong dimension, or one holding null, NaN or infinite
    values. ``dimension`` defaults to the vector column's fixed size or the first
    row's length. ``row_offset`` is added to row numbers in rejections (for tables
    read in pieces). Raises SchemaError for problems of the whole table.
    """
    check_item_schema(table.schema)
    dimension = dimension or vector_dimension(table.column(VECTOR))
    if dimension is None:
        return split_rows(table, np.zeros((table.num_rows, 0), np.float32),
                      {i: "missing vector" for i in range(table.num_rows)}, ID, row_offset)
    vectors, bad = check_vectors(table.column(VECTOR), dimension)
    check_ids(table, ID, bad)
    return split_rows(table, vectors, bad, ID, row_offset)


def check_query_schema(schema: pa.Schema) -> None:
    """Raise SchemaError unless ``schema`` is a valid queries schema."""
    table = schema.empty_table()
    _require(table, QUERY_ID, _id_type_ok, "string or integer", "queries")
    _require(table, VECTOR, is_vector_type, "a list of float16/float32/float64", "queries")
    if PREDICATE in schema.names:
        _require(table, PREDICATE, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string", "queries")
    if K in schema.names:
        _require(table, K, pa.types.is_integer, "integer", "queries")


def validate_queries(table: pa.Table, dimension: int, row_offset: int = 0) -> Validated:
    """Split queries into usable rows and rejections.

    Rows are rejected for a missing or duplicate query_id, a bad vector (as for
    items), a predicate that does not parse, or a k below 1. Predicates are only
    parsed here; checking them against the items' attributes is the searcher's job.
    """
    from beamvec.index.predicate import PredicateError
    from beamvec.index.parser import parse_shared

    check_query_schema(table.schema)
    vectors, bad = check_vectors(table.column(VECTOR), dimension)
    check_ids(table, QUERY_ID, bad)
    if PREDICATE in table.column_names:
        for i, text in enumerate(table.column(PREDICATE).to_pylist()):
            if i not in bad:
                try:
                    parse_shared(text)  # the searcher parses it again: then from this cache
                except PredicateError as e:
                    bad[i] = f"predicate does not parse: {e}"
    if K in table.column_names:
        for i, k in enumerate(table.column(K).to_pylist()):
            if k is not None and k < 1 and i not in bad:
                bad[i] = f"k must be at least 1, got {k}"
    return split_rows(table, vectors, bad, QUERY_ID, row_offset)


def vectors_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The (n, d) float32 matrix of a column :func:`vectors_array` wrote (rows already validated)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = column.values[column.offset * column.type.list_size:][:len(column) * column.type.list_size]
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(column), -1)


def vectors_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A (n, d) float array as an Arrow fixed_size_list<float32>[d] column."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def results_schema(query_id_type: pa.DataType, id_type: pa.DataType) -> pa.Schema:
    """The results schema: query_id and neighbors = list<struct<id, score>>, best first."""
    neighbor = pa.struct([(ID, id_type), (SCORE, pa.float32())])
    return pa.schema([(QUERY_ID, query_id_type), (NEIGHBORS, pa.list_(neighbor))])


def results_table(
    query_ids: pa.Array | Sequence, ids: pa.Array, scores: np.ndarray, found: np.ndarray
) -> pa.Table:
    """Build a results table.

    ``ids`` is a flat Arrow array of n*k neighbor ids (row-major), ``scores`` an (n, k)
    float array, ``found`` the number of valid neighbors per query (the first found[i]
    of row i); the rest of each row is padding and is dropped.
    """
    query_ids = query_ids if isinstance(query_ids, (pa.Array, pa.ChunkedArray)) else pa.array(query_ids)
    n, k = scores.shape
    keep = (np.arange(k)[None, :] < np.asarray(found)[:, None]).reshape(-1)
    flat_ids = ids.filter(pa.array(keep))
    flat_scores = pa.array(scores.reshape(-1)[keep].astype(np.float32))
    offsets = np.concatenate([[0], np.cumsum(found)]).astype(np.int32)
    neighbors = pa.ListArray.from_arrays(
        pa.array(offsets), pa.StructArray.from_arrays([flat_ids, flat_scores], names=[ID, SCORE])
    )
    return pa.Table.from_arrays([query_ids, neighbors], schema=results_schema(query_ids.type, ids.type))
