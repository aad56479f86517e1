"""Predicate evaluation over attribute columns encoded once, in numpy.

:class:`Columns` wraps a table and encodes each column the first time a predicate
reads it, as column stores do:

* strings: int32 codes into the sorted distinct values (an order-preserving
  dictionary), so ``=``, ``IN`` and ranges on strings are integer tests;
* integers, and dates and timestamps as their raw counts: the integer array;
* floats: float64, NaN counted as null, -0.0 as 0.0; bools: a bool array;

each with its validity (None when the column has no null). An atom then costs one
numpy pass over the rows, with no per-call conversion of the column.

Evaluation follows SQL three-valued logic: a node is true, false or unknown on a
row, and :func:`holds` computes where it is true, or where it is false, as needed. Comparisons are exact, as
:mod:`beamvec.index.predicate` documents: a literal outside a column's domain (2.5
for an integer column, 2**70 for a float one, an ISO string for a timestamp) is
first rewritten into an equivalent comparison with a value of the domain.
"""

from __future__ import annotations

import datetime as dt
import math
from fractions import Fraction
from typing import Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamvec.index.predicate import (
    And, Between, BoolColumn, Compare, In, IsNull, MatchAll, Not, Or, Predicate, PredicateError, Value, kind_of,
    parse_instant,
)

_OPS: dict[str, Callable[[np.ndarray, object], np.ndarray]] = {
    "=": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
}
_MICROS_PER_UNIT = {"s": 10**6, "ms": 1000, "us": 1, "ns": Fraction(1, 1000)}


class Column(NamedTuple):
    """One encoded column: its kind, values (codes for strings), validity (None: no nulls),
    the sorted distinct strings, and for integers the domain's ends and the temporal type."""

    kind: str
    values: np.ndarray
    valid: np.ndarray | None
    dictionary: np.ndarray | None = None
    low: int = 0
    high: int = 0
    temporal: pa.DataType | None = None


class Columns:
    """The columns of ``data`` (a Table or RecordBatch), each encoded on first use; evaluates predicates."""

    def __init__(self, data: pa.Table | pa.RecordBatch):
        self.data = data
        self.num_rows = data.num_rows
        self._columns: dict[str, Column] = {}

    @property
    def schema(self) -> pa.Schema:
        return self.data.schema

    def column(self, name: str) -> Column:
        """The encoded column ``name``."""
        column = self._columns.get(name)
        if column is None:
            column = self._columns[name] = encode(self.data.column(name))
        return column

    def evaluate(self, predicate: Predicate) -> np.ndarray:
        """The rows where ``predicate`` is true (not validated: see :meth:`Predicate.evaluate`)."""
        return holds(predicate, self.atom, self.num_rows)

    def atom(self, atom: Predicate, truth: bool = True) -> np.ndarray:
        """The rows where an atomic condition is true (``truth``), or false (not null)."""
        return atom_mask(self.column(atom.column), atom, truth)  # type: ignore[attr-defined]


def atom_mask(column: Column, atom: Predicate, truth: bool = True) -> np.ndarray:
    """The rows of ``column`` where an atomic condition on it is true (``truth``), or false;
    where the value is null it is neither (except for IS [NOT] NULL, never unknown)."""
    if isinstance(atom, IsNull):
        if truth != atom.negated:  # where it is null
            return np.zeros(len(column.values), bool) if column.valid is None else ~column.valid
        return np.ones(len(column.values), bool) if column.valid is None else column.valid
    if isinstance(atom, BoolColumn):
        found = column.values
    elif isinstance(atom, Compare):
        found = compare(column, atom.op, atom.value)
    elif isinstance(atom, Between):
        found = compare(column, ">=", atom.low) & compare(column, "<=", atom.high)
    elif isinstance(atom, In):
        found = membership(column, atom.values)
    else:
        raise PredicateError(f"cannot evaluate {atom!r}")
    if getattr(atom, "negated", False) == truth:
        found = ~found
    return found if column.valid is None else found & column.valid


def holds(predicate: Predicate, atom: Callable[[Predicate, bool], np.ndarray], num_rows: int,
          truth: bool = True) -> np.ndarray:
    """Where ``predicate`` is true (``truth``), or false, by SQL three-valued logic (unknown is
    neither); ``atom(a, truth)`` gives an atom's. AND is true where every part is and false where
    any part is; OR the converse; NOT swaps true and false."""
    if isinstance(predicate, MatchAll):
        return np.full(num_rows, truth)
    if isinstance(predicate, Not):
        return holds(predicate.part, atom, num_rows, not truth)
    if isinstance(predicate, (And, Or)):
        every = isinstance(predicate, And) == truth
        out = holds(predicate.parts[0], atom, num_rows, truth)
        for part in predicate.parts[1:]:
            mask = holds(part, atom, num_rows, truth)
            out = (out & mask) if every else (out | mask)
        return out
    return atom(predicate, truth)


def encode(array: pa.Array | pa.ChunkedArray) -> Column:
    """A column encoded for evaluation (see the module docstring)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    t = array.type
    kind = kind_of(t)
    valid = None if array.null_count == 0 else np.asarray(pc.is_valid(array).to_numpy(zero_copy_only=False), bool)
    if kind == "string":
        encoded = pc.dictionary_encode(array)
        distinct = np.asarray(encoded.dictionary.to_numpy(zero_copy_only=False), object)
        order = np.argsort(distinct, kind="stable")
        rank = np.empty(len(order), np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        codes = np.asarray(pc.fill_null(encoded.indices, 0).to_numpy(), np.int64)
        return Column(kind, rank[codes] if len(rank) else codes.astype(np.int32), valid, distinct[order])
    if kind == "float":
        values = np.asarray(pc.fill_null(array.cast(pa.float64()), math.nan).to_numpy(), np.float64) + 0.0
        nan = np.isnan(values)
        if nan.any():
            valid = ~nan if valid is None else valid & ~nan
        return Column(kind, values, valid)
    if kind == "bool":
        return Column(kind, np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), bool), valid)
    if kind == "integer":
        return Column(kind, pc.fill_null(array, 0).to_numpy(), valid, None, *_integer_range(t))
    if kind == "temporal":
        physical = pa.int32() if pa.types.is_date32(t) else pa.int64()
        values = pc.fill_null(array.cast(physical), 0).to_numpy()
        return Column(kind, values, valid, None, *_integer_range(physical), temporal=t)
    raise PredicateError(f"a column of type {t} cannot be tested by predicates")


def _integer_range(t: pa.DataType) -> tuple[int, int]:
    bits = t.bit_width
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if pa.types.is_signed_integer(t) else (0, (1 << bits) - 1)


def _exact(column: Column, value: Value) -> int | Fraction:
    """A numeric literal, or an ISO string as a count of the temporal column's unit, exactly."""
    if isinstance(value, str):
        micros = (parse_instant(value) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
        t = column.temporal
        per = (86_400 * 10**6 if pa.types.is_date32(t) else 1000 if pa.types.is_date64(t)
               else _MICROS_PER_UNIT[t.unit])
        return Fraction(micros) / per
    return Fraction(value) if isinstance(value, float) else value


def _snap(op: str, below, above, lowest, highest) -> tuple[str, object]:
    """Rewrite ``x op v`` for a v outside a discrete domain into a comparison with a domain value.

    ``below``/``above`` are the nearest domain values under/over v (None if there is none);
    ``lowest``/``highest`` are the domain's ends. Null x still gives null.
    """
    if op in ("<", "<="):
        return ("<=", below) if below is not None else ("<", lowest)
    if op in (">", ">="):
        return (">=", above) if above is not None else (">", highest)
    return ("<", lowest) if op == "=" else (">=", lowest)


def _as_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def compare(column: Column, op: str, value: Value) -> np.ndarray:
    """``x op value`` on every row of ``column`` (null rows give anything: mask them by ``column.valid``)."""
    op, operand = operand_of(column, op, value)
    return _OPS[op](column.values, operand)


def operand_of(column: Column, op: str, value: Value) -> tuple[str, object]:
    """``x op value`` as an equivalent comparison of the encoded values with a value of their domain."""
    if column.kind == "string":  # codes of a sorted dictionary: order is kept
        first, after = (int(np.searchsorted(column.dictionary, value, side)) for side in ("left", "right"))
        if op in ("=", "!="):
            if first == after:  # not in the column at all
                return ("<", 0) if op == "=" else (">=", 0)
            return op, first
        return {"<": ("<", first), "<=": ("<", after), ">": (">=", after), ">=": (">=", first)}[op]
    operand: object = value
    if column.kind == "float":
        operand = _as_float(value) if isinstance(value, int) else value
        if operand != value:  # an int that no float equals: compare with its float neighbours
            below, above = ((math.nextafter(operand, -math.inf), operand) if operand > value
                            else (operand, math.nextafter(operand, math.inf)))
            op, operand = _snap(op, below, above, -math.inf, math.inf)
    elif column.kind in ("integer", "temporal"):
        exact = _exact(column, value)
        operand = exact
        if exact.denominator != 1 or not column.low <= exact <= column.high:
            below, above = math.floor(exact), math.ceil(exact)
            below = None if below < column.low else min(below, column.high)
            above = None if above > column.high else max(above, column.low)
            op, operand = _snap(op, below, above, column.low, column.high)
        operand = int(operand)  # type: ignore[arg-type]
    return op, operand


def membership(column: Column, values: tuple) -> np.ndarray:
    """``x IN values`` on every row of ``column`` (null rows give anything, as for :func:`compare`)."""
    if column.kind == "string":  # a table over the codes: one gather, faster than isin
        wanted = np.asarray(values, object)
        at = np.searchsorted(column.dictionary, wanted)
        held = at < len(column.dictionary)
        hit = np.zeros(len(column.dictionary) + 1, bool)
        hit[at[held][column.dictionary[at[held]] == wanted[held]]] = True
        return hit[column.values]
    if column.kind == "float":
        keys = [float(v) + 0.0 for v in values if isinstance(v, float) or _as_float(v) == v]
    elif column.kind in ("integer", "temporal"):
        exact = (_exact(column, v) for v in values)
        keys = [int(r) for r in exact if r.denominator == 1 and column.low <= r <= column.high]
    else:
        keys = list(values)
    if not keys:
        return np.zeros(len(column.values), bool)
    if len(keys) == 1:
        return column.values == keys[0]
    return np.isin(column.values, np.asarray(keys, column.values.dtype))


def masks_of(data: pa.Table | pa.RecordBatch, texts) -> dict:
    """Each distinct predicate text's row mask over ``data`` (None for no filter: None or ''),
    validated, with the columns encoded once for all of them."""
    from beamvec.index.predicate import parse

    columns = Columns(data)
    return {t: parse(t).evaluate(columns) if t else None for t in set(texts)}
