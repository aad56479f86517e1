"""Predicate evaluation over attribute columns encoded once, in numpy.

:class:`Columns` wraps a table and encodes each column the first time a predicate
reads it, as column stores do:

* strings: int32 codes into the sorted distinct values (an order-preserving
  dictionary), so ``=``, ``IN`` and ranges on strings are integer tests;
* integers, and dates and timestamps as their raw counts: the integer array;
* floats: float64, NaN counted as null, -0.0 as 0.0; bools: a bool array;
* lists of strings or integers: posting lists, every element's key (a code into the sorted
  distinct strings, or the integer) sorted, with the row holding it, so ``CONTAINS v`` marks the
  rows of one slice and ALL/ANY intersect or join them;

each with its validity (None when the column has no null). A predicate is then
compiled against them and evaluated in one pass over the rows (:mod:`beamvec.index.kernel`),
by SQL three-valued logic: a node is true, false or unknown on a row. Comparisons are exact, as
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

from beamvec.index.kernel import Builder, Layout, Program, run
from beamvec.index.predicate import (
    And, Between, BoolColumn, Compare, Contains, In, IsNull, MatchAll, Not, Or, Predicate, PredicateError, Value, and_,
    kind_of, not_, parse_instant,
)

# Compiled predicates a Columns keeps.
_PROGRAMS = 1 << 16
# Masks of list conditions, and where predicates with them are true and false, over all rows, kept for
# the runs of rows a search evaluates them on (each mask as many bytes as rows).
_TRUTHS = 64
# Bytes of the rows where list conditions hold kept (a batch's every distinct condition, for all shards).
_HOLDING_BYTES = 256 << 20
_MICROS_PER_UNIT = {"s": 10**6, "ms": 1000, "us": 1, "ns": Fraction(1, 1000)}


class Column(NamedTuple):
    """One encoded column: its kind, values (codes for strings), validity (None: no nulls),
    the sorted distinct strings, and for integers the domain's ends and the temporal type. A list
    column's values are its elements' keys, sorted, and ``rows`` the row of each."""

    kind: str
    values: np.ndarray
    valid: np.ndarray | None
    dictionary: np.ndarray | None = None
    low: int = 0
    high: int = 0
    temporal: pa.DataType | None = None
    rows: np.ndarray | None = None


class Columns:
    """The columns of ``data`` (a Table or RecordBatch), each encoded on first use; evaluates predicates,
    each compiled once (:meth:`compile`, kept until :meth:`forget_programs`).

    ``Columns.of(encoded, num_rows)`` wraps columns already encoded (name -> :class:`Column`);
    :meth:`segment` gives a run of rows as Columns of their own."""

    def __init__(self, data: pa.Table | pa.RecordBatch | None, num_rows: int | None = None):
        self.data = data
        self.num_rows = data.num_rows if data is not None else int(num_rows or 0)
        self._columns: dict[str, Column] = {}
        self._layout = Layout(self.num_rows)
        self._programs: dict[Predicate, Program] = {}
        self._operands: dict[tuple, tuple[str, object]] = {}
        self._contains: dict[Contains, Column] = {}
        self._holding: dict[Contains, np.ndarray] = {}  # rows where list conditions hold
        self._holding_bytes = 0
        self._codes: dict[str, dict[str, int]] = {}  # of list columns' element strings
        self._truths: dict[Predicate, tuple[np.ndarray, np.ndarray]] = {}  # of predicates with list conditions
        self._parent: tuple[Columns, int] | None = None

    @classmethod
    def of(cls, encoded: dict[str, Column], num_rows: int) -> "Columns":
        columns = cls(None, num_rows)
        columns._columns.update(encoded)
        return columns

    def segment(self, start: int, stop: int) -> "Columns":
        """Rows start..stop-1, their encoded columns views of these."""
        columns = Columns(None, stop - start)
        columns._parent = (self, start)
        return columns

    @property
    def within(self) -> tuple["Columns", int] | None:
        """For a :meth:`segment`, the columns it is rows of and its first row there; else None."""
        return self._parent

    @property
    def schema(self) -> pa.Schema:
        return self.data.schema

    def column(self, name: str) -> Column:
        """The encoded column ``name``."""
        column = self._columns.get(name)
        if column is None:
            if self._parent is not None:
                parent, start = self._parent
                whole = parent.column(name)
                stop = start + self.num_rows
                valid = None if whole.valid is None else whole.valid[start:stop]
                if whole.rows is not None:  # posting lists: the elements of these rows
                    held = (whole.rows >= start) & (whole.rows < stop)
                    column = whole._replace(values=whole.values[held], valid=valid, rows=whole.rows[held] - start)
                else:
                    column = whole._replace(values=whole.values[start:stop], valid=valid)
            else:
                column = encode(self.data.column(name))
            self._columns[name] = column
        return column

    def contains(self, atom: Contains) -> Column:
        """Where the list column of (positive) ``atom`` holds its values, as a bool column (null where
        the list is null), once per atom."""
        found = self._contains.get(atom)
        if found is None:
            if len(self._contains) >= _TRUTHS:
                self._contains.clear()
            if self._parent is not None:
                parent, start = self._parent
                whole = parent.contains(atom)
                stop = start + self.num_rows
                found = whole._replace(values=whole.values[start:stop],
                                       valid=None if whole.valid is None else whole.valid[start:stop])
            else:
                mask = np.zeros(self.num_rows, bool)
                mask[self.holding(atom)] = True
                found = Column("bool", mask, self.column(atom.column).valid)
            self._contains[atom] = found
        return found

    def holding(self, atom: Contains, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The rows lo..hi-1, ascending, whose list holds the values of ``atom`` (its negation ignored),
        from the posting lists (:func:`posting_rows`), found once per atom for all rows (a batch asks
        for each shard's rows of an index's columns in turn)."""
        found = self._holding.get(atom)
        if found is None:
            column = self.column(atom.column)
            found = posting_rows(column, self._list_keys(atom.column, atom.values), atom)
            self._holding_bytes += found.nbytes
            if self._holding_bytes > _HOLDING_BYTES:
                self._holding.clear()
                self._holding_bytes = found.nbytes
            self._holding[atom] = found
        if lo == 0 and hi is None:
            return found
        hi = self.num_rows if hi is None else hi
        return found[found.searchsorted(lo):found.searchsorted(hi)]

    def _list_keys(self, name: str, values: tuple) -> list[int]:
        """The distinct keys of ``values`` that elements of the list column ``name`` hold (of its element domain)."""
        column = self.column(name)
        if column.dictionary is None:
            return [int(v) for v in dict.fromkeys(values) if isinstance(v, int) and column.low <= v <= column.high]
        codes = self._codes.get(name)
        if codes is None:  # the dictionary's strings by code, once per column
            codes = self._codes[name] = {v: i for i, v in enumerate(column.dictionary.tolist())}
        return [codes[v] for v in dict.fromkeys(values) if isinstance(v, str) and v in codes]

    def compile(self, predicate: Predicate, conjuncts: tuple[int, ...] | None = None) -> Program:
        """``predicate`` compiled against these columns, once (not validated: see :meth:`Predicate.validate`);
        with ``conjuncts``, only the AND of the parts of the (AND) predicate at those positions."""
        key = predicate if conjuncts is None else (predicate, conjuncts)
        program = self._programs.get(key)
        if program is None:
            if len(self._programs) >= _PROGRAMS:
                self._programs.clear()
            part = predicate if conjuncts is None else and_(*(predicate.parts[i] for i in conjuncts))
            program = self._programs[key] = compile_predicate(part, self, self._layout)
        return program

    def operand(self, name: str, op: str, value: Value) -> tuple[str, object]:
        """:func:`operand_of` column ``name``, once per literal."""
        key = (name, op, type(value), value)
        found = self._operands.get(key)
        if found is None:
            if len(self._operands) >= _PROGRAMS:
                self._operands.clear()
            found = self._operands[key] = operand_of(self.column(name), op, value)
        return found

    def forget_programs(self) -> None:
        """Drop the compiled predicates and rewritten literals (the encoded columns stay)."""
        self._programs.clear()
        self._operands.clear()
        self._contains.clear()
        self._truths.clear()
        self._holding.clear()
        self._holding_bytes = 0

    def run(self, predicate: Predicate, lo: int = 0, hi: int | None = None, truth: bool = True,
            conjuncts: tuple[int, ...] | None = None) -> tuple[np.ndarray, int, int, int]:
        """Over rows lo..hi-1, where ``predicate`` (or its ``conjuncts``, see :meth:`compile`) is true
        (``truth``), or false, with the count of such rows and the first and one past the last of
        them, relative to lo (0, 0 when none)."""
        hi = self.num_rows if hi is None else hi
        part = predicate if conjuncts is None else and_(*(predicate.parts[i] for i in conjuncts))
        if any(isinstance(atom, Contains) for atom in part.atoms()):
            truths = self._truths.get(part)
            if truths is None:
                if len(self._truths) >= _TRUTHS:
                    self._truths.clear()  # (not an eviction: a worker's threads share these columns)
                truths = self._truths[part] = self._kleene(part)
            mask = truths[0 if truth else 1][lo:hi].copy()  # the caller's to change, as the kernel's are
            at = np.flatnonzero(mask)
            return mask, len(at), (int(at[0]) if len(at) else 0), (int(at[-1]) + 1 if len(at) else 0)
        return run(self.compile(predicate, conjuncts), self._layout, lo, hi, truth)

    def _kleene(self, p: Predicate) -> tuple[np.ndarray, np.ndarray]:
        """Over all rows, where ``p`` is true and where it is false, in numpy: a predicate with list
        conditions combines their posting-list masks so, its other parts evaluated by the kernel."""
        if not any(isinstance(atom, Contains) for atom in p.atoms()):
            return self.run(p)[0], self.run(p, truth=False)[0]
        if isinstance(p, Not):
            true, false = self._kleene(p.part)
            return false, true
        if isinstance(p, (And, Or)):
            parts = [self._kleene(q) for q in p.parts]
            trues, falses = np.array([t for t, _ in parts]), np.array([f for _, f in parts])
            if isinstance(p, And):
                return trues.all(axis=0), falses.any(axis=0)
            return trues.any(axis=0), falses.all(axis=0)
        column = self.contains(p if not p.negated else not_(p))  # type: ignore[attr-defined]
        valid = np.ones(self.num_rows, bool) if column.valid is None else column.valid
        true, false = column.values & valid, ~column.values & valid
        return (false, true) if p.negated else (true, false)  # type: ignore[attr-defined]

    def evaluate(self, predicate: Predicate, truth: bool = True) -> np.ndarray:
        """The rows where ``predicate`` is true (``truth``), or false (not validated: see
        :meth:`Predicate.evaluate`)."""
        return self.run(predicate, truth=truth)[0]


def compile_predicate(predicate: Predicate, columns: "Columns", layout: Layout) -> Program:
    """``predicate`` as a kernel program over ``layout``, holding ``columns``. Each literal is
    rewritten into the column's domain first (:meth:`Columns.operand`, :func:`in_keys`)."""
    program = Builder()

    def slot(name: str) -> tuple[Column, bool, int, int]:
        column = columns.column(name)
        if column.rows is not None:  # a list column: the kernel reads only its validity
            column = Column("bool", np.zeros(columns.num_rows, bool), column.valid)
        return (column, *layout.slot(name, column))

    def compare(name: str, op: str, value) -> None:
        _, is_float, row, shift = slot(name)
        op, operand = columns.operand(name, op, value)
        program.compare(is_float, row, op, operand if is_float else int(operand) + shift)

    def walk(p: Predicate) -> None:
        if isinstance(p, MatchAll):
            program.constant(True)
        elif isinstance(p, Not):
            walk(p.part)
            program.negate()
        elif isinstance(p, (And, Or)):
            walk(p.parts[0])
            for part in p.parts[1:]:
                guard = program.guard(isinstance(p, And))
                walk(part)
                program.combine(isinstance(p, And), guard)
        elif isinstance(p, IsNull):
            _, is_float, row, _ = slot(p.column)
            program.is_null(is_float, row, p.negated)
        elif isinstance(p, BoolColumn):
            compare(p.column, "=", True)
        elif isinstance(p, Compare):
            compare(p.column, p.op, p.value)
        elif isinstance(p, Between):
            compare(p.column, ">=", p.low)
            compare(p.column, "<=", p.high)
            program.combine(True)
            if p.negated:
                program.negate()
        elif isinstance(p, In):
            column, is_float, row, shift = slot(p.column)
            keys = in_keys(column, p.values)
            program.contains(is_float, row, keys if is_float else [int(k) + shift for k in keys])
            if p.negated:
                program.negate()
        else:  # list conditions are evaluated apart (Columns.run)
            raise PredicateError(f"cannot evaluate {p!r}")

    walk(predicate)
    return program.build()


def holds(predicate: Predicate, atom: Callable[[Predicate, bool], np.ndarray], num_rows: int,
          truth: bool = True) -> np.ndarray:
    """Kleene logic over anything atoms can be judged on (partitions, for zone maps): where
    ``predicate`` can be true (``truth``), or false, given ``atom(a, truth)`` for its atoms.
    AND can be true where every part can and false where any part can; OR the converse; NOT
    swaps true and false."""
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


def posting_rows(column: Column, keys: list[int], atom: Contains) -> np.ndarray:
    """The rows (ascending) whose list holds every (mode "all") or some ("any") of ``atom``'s values
    (``keys``: those the column holds), from the posting lists of the encoded list ``column``:
    binary searches and the matching rows only, no pass over the rows."""
    every = atom.mode == "all"
    if not keys or (every and len(keys) < len(set(atom.values))):  # a value no list holds
        return np.zeros(0, np.int64)
    lists = []
    for key in keys:
        rows = column.rows[column.values.searchsorted(key, "left"):column.values.searchsorted(key, "right")]
        lists.append(rows)
    if len(lists) == 1:
        return lists[0]
    if every:
        lists.sort(key=len)
        out = lists[0]
        for rows in lists[1:]:
            out = intersect_sorted(out, rows)
        return out
    return np.unique(np.concatenate(lists))


def intersect_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The values of ascending, distinct ``a`` that ascending ``b`` holds: a binary search in ``b`` per
    value of ``a`` (the shorter one, ideally), no sort."""
    if not len(a) or not len(b):
        return a[:0]
    at = np.minimum(b.searchsorted(a), len(b) - 1)
    return a[b[at] == a]


def list_elements(array: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """The elements of a list array's non-null lists, with the row of each (a null list's slot may
    still span elements: they are not its values)."""
    lengths = np.asarray(pc.fill_null(pc.list_value_length(array), 0).to_numpy(), np.int64)
    elements = pc.list_flatten(array)
    return np.repeat(np.arange(len(array), dtype=np.int64), lengths), elements


def _encode_list(array: pa.Array, valid: np.ndarray | None) -> Column:
    """A list column as posting lists (see the module docstring)."""
    rows, elements = list_elements(array)
    if pa.types.is_dictionary(elements.type):
        elements = elements.cast(elements.type.value_type)
    if elements.null_count:  # a null element is not a value of its list
        present = np.asarray(pc.is_valid(elements).to_numpy(zero_copy_only=False), bool)
        rows, elements = rows[present], elements.filter(pa.array(present))
    element = encode(elements)
    order = np.argsort(element.values, kind="stable")  # by key, then row: each posting list ascending
    keys, rows = element.values[order].astype(np.int64), rows[order]
    first = np.r_[True, (keys[1:] != keys[:-1]) | (rows[1:] != rows[:-1])][:len(keys)]  # a value twice in a list: once
    return Column(kind_of(array.type), keys[first], valid, element.dictionary, element.low, element.high,
                  rows=rows[first])


def encode(array: pa.Array | pa.ChunkedArray) -> Column:
    """A column encoded for evaluation (see the module docstring)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], array.type)
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    t = array.type
    kind = kind_of(t)
    valid = None if array.null_count == 0 else np.asarray(pc.is_valid(array).to_numpy(zero_copy_only=False), bool)
    if kind in ("string list", "integer list"):
        return _encode_list(array, valid)
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


def in_keys(column: Column, values: tuple) -> np.ndarray:
    """The encoded values ``x IN values`` holds on, sorted and distinct: codes of the strings present,
    the literals of the column's domain that some value can equal."""
    if column.kind == "string":
        wanted = np.asarray(values, object)
        at = np.searchsorted(column.dictionary, wanted)
        held = at < len(column.dictionary)
        return np.unique(at[held][column.dictionary[at[held]] == wanted[held]])
    if column.kind == "float":
        keys = [float(v) + 0.0 for v in values if isinstance(v, float) or _as_float(v) == v]
    elif column.kind in ("integer", "temporal"):
        exact = (_exact(column, v) for v in values)
        keys = [int(r) for r in exact if r.denominator == 1 and column.low <= r <= column.high]
    else:
        keys = [int(v) for v in values]
    return np.unique(np.asarray(keys, np.float64 if column.kind == "float" else object))


def masks_of(data: pa.Table | pa.RecordBatch, texts) -> dict:
    """Each distinct predicate text's row mask over ``data`` (None for no filter: None or ''),
    validated, with the columns encoded once for all of them."""
    from beamvec.index.parser import parse

    columns = Columns(data)
    return {t: parse(t).evaluate(columns) if t else None for t in set(texts)}
