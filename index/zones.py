"""Zone maps: which partitions a predicate can match, decided from the partitions' own values.

For every column a predicate reads, each partition is summarised once (lazily,
then kept): a partition with at most :data:`MAX_LISTED` distinct values lists
them; a larger one keeps its smallest and largest value; both record whether the
column holds nulls and non-null values. An atom is then judged for all partitions
at once, with the same exact comparisons that evaluate rows
(:mod:`beamvec.index.columns`):

* over listed values, exactly: can the atom be true (false) on some value?
* over a range, soundly: ``x = v`` can be true only if min <= v <= max, ``x < v``
  only if min < v, and so on (it may say "can" where no row matches, never "cannot"
  where one does);
* a list column (tags) keeps each partition's distinct elements: ``CONTAINS v`` can be true
  only where a list holds v (ALL: every value, ANY: one of them); when the partitions are
  consecutive rows of one :class:`Columns` (an index's shards), exactly where the condition's
  posting lists hold rows of the partition.

Atoms combine by Kleene logic over the two possibilities (can be true, can be
false), as :func:`beamvec.index.boxes.may_match` does over a plan's partition
descriptions; the data's own bounds are as tight as a description or tighter. A
partition is searched only where the predicate can be true.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from beamvec.index.columns import Column, Columns, encode, holds, operand_of
from beamvec.index.predicate import Between, Compare, Contains, In, IsNull, MatchAll, Predicate, not_

_OPS = {"=": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}

Masks = tuple[np.ndarray, np.ndarray]
"""Per partition: whether an atom can be true, and whether it can be false."""

MAX_LISTED = 1024
"""A partition lists a column's distinct values when it has at most this many."""

MAX_ATOMS = 1 << 16
"""Atoms whose judgement zone maps keep."""


class _ColumnZones(NamedTuple):
    """One column over all partitions: listed values (with their partition), range ends, nulls."""

    listed: Columns  # the distinct values of listed partitions, concatenated, as the column
    owner: np.ndarray  # partition of each listed value
    ranged: np.ndarray  # partitions summarised by a range
    low: Columns  # their smallest values, in the order of ``ranged``
    high: Columns  # their largest values
    has_null: np.ndarray  # per partition
    has_value: np.ndarray  # per partition


class _ListZones(NamedTuple):
    """One list column over all partitions: each one's distinct elements (sorted), and nulls."""

    held: list  # per partition, a sorted array of the elements its lists hold
    has_null: np.ndarray
    has_value: np.ndarray  # per partition: whether it has a non-null list


class ZoneMaps:
    """Zone maps over the partitions whose rows ``columns`` hold (one :class:`Columns` each)."""

    def __init__(self, columns: Sequence[Columns]):
        self.partitions = len(columns)
        self._parts = list(columns)
        self._zones: dict[str, _ColumnZones] = {}
        self._whole = _laid_end_to_end(self._parts)
        self._atoms: dict[tuple[Predicate, bool], np.ndarray] = {}

    def may_match(self, predicate: Predicate) -> np.ndarray:
        """Per partition, False only if no row of it can satisfy ``predicate``."""
        if isinstance(predicate, MatchAll):
            return np.ones(self.partitions, bool)
        return holds(predicate, self._possible, self.partitions)

    def _column(self, name: str) -> _ColumnZones:
        zones = self._zones.get(name)
        if zones is None:
            zones = self._zones[name] = _summarise(name, [part.column(name) for part in self._parts])
        return zones

    def forget_predicates(self) -> None:
        """Forget the atoms judged so far (the summaries of the data stay)."""
        self._atoms.clear()

    def _possible(self, atom: Predicate, truth: bool) -> np.ndarray:
        """Per partition, whether ``atom`` can be true (``truth``), or false, on one of its rows (once per atom)."""
        found = self._atoms.get((atom, truth))
        if found is None:
            if len(self._atoms) >= MAX_ATOMS:
                self._atoms.clear()
            found = self._atoms[atom, truth] = self._judge(atom, truth)
        return found

    def _judge(self, atom: Predicate, truth: bool) -> np.ndarray:
        z = self._column(atom.column)  # type: ignore[attr-defined]
        if isinstance(atom, IsNull):
            return z.has_null if truth != atom.negated else z.has_value
        if isinstance(atom, Contains):  # positive: true only where lists hold the values; false wherever a list is
            if atom.negated:
                return self._judge(not_(atom), not truth)
            if not truth:
                return z.has_value
            if self._whole is not None:  # exactly: the partitions holding rows of the condition's posting lists
                whole, bounds = self._whole
                return np.diff(np.searchsorted(whole.holding(atom), bounds)) > 0
            every = atom.mode == "all"
            return np.array([(all if every else any)(_holds(held, v) for v in atom.values) for held in z.held],
                            bool) & z.has_value
        out = np.zeros(self.partitions, bool)
        if len(z.owner):  # exact over the listed values
            out[z.owner[z.listed.evaluate(atom, truth)]] = True
        if len(z.ranged):
            out[z.ranged] = _ranged(z, atom)[0 if truth else 1]
        return out & z.has_value


def _laid_end_to_end(parts: list[Columns]) -> tuple[Columns, np.ndarray] | None:
    """When ``parts`` are consecutive segments of one :class:`Columns` (an index's shards' rows), it and the
    bounds of the parts' rows in it; else None."""
    within = [part.within for part in parts]
    if not within or any(w is None or w[0] is not within[0][0] for w in within):
        return None
    bounds = np.array([w[1] for w in within] + [within[-1][1] + parts[-1].num_rows], np.int64)
    if any(int(bounds[i]) + part.num_rows != int(bounds[i + 1]) for i, part in enumerate(parts)):
        return None
    return within[0][0], bounds


def _holds(held: np.ndarray, value) -> bool:
    """Whether the sorted distinct elements ``held`` include ``value`` (a binary search)."""
    at = int(np.searchsorted(held, value))
    return at < len(held) and held[at] == value


def _ranged(z: _ColumnZones, atom: Predicate) -> Masks:
    """Whether ``atom`` can be true, and false, in partitions known by [low, high] only (sound)."""
    name = atom.column  # type: ignore[attr-defined]
    low, high = z.low.column(name), z.high.column(name)

    def some(op: str, value) -> np.ndarray:  # some x in [low, high] has x op value
        if op in ("<", "<="):
            return _compare(low, op, value)
        if op in (">", ">="):
            return _compare(high, op, value)
        if op == "=":
            return _compare(low, "<=", value) & _compare(high, ">=", value)
        return _compare(low, "!=", value) | _compare(high, "!=", value)  # "!="

    if isinstance(atom, Compare):
        opposite = {"=": "!=", "!=": "=", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}[atom.op]
        return some(atom.op, atom.value), some(opposite, atom.value)
    if isinstance(atom, Between):
        inside = some(">=", atom.low) & some("<=", atom.high)
        outside = some("<", atom.low) | some(">", atom.high)
        return (outside, inside) if atom.negated else (inside, outside)
    if isinstance(atom, In):
        inside = np.logical_or.reduce([some("=", v) for v in atom.values])
        outside = (_decoded(low) != _decoded(high)) | ~z.low.evaluate(In(name, atom.values))
        return (outside, inside) if atom.negated else (inside, outside)
    raise TypeError(f"not an atom: {atom!r}")


def _compare(ends: Column, op: str, value) -> np.ndarray:
    """``x op value`` for range ends (never null), in the column's encoded domain."""
    op, operand = operand_of(ends, op, value)
    return _OPS[op](ends.values, operand)


def _decoded(column: Column) -> np.ndarray:
    return column.dictionary[column.values] if column.kind == "string" else column.values


def _summarise(name: str, columns: list[Column]) -> _ColumnZones:
    """Zones of one column from its encoded form in every partition."""
    count = len(columns)
    if columns[0].rows is not None:  # a list column
        return _ListZones([np.unique(c.values) if c.dictionary is None else c.dictionary[np.unique(c.values)]
                           for c in columns],
                          np.array([c.valid is not None and not c.valid.all() for c in columns], bool),
                          np.array([c.valid is None or c.valid.any() for c in columns], bool))
    listed, owner, ranged, lows, highs = [], [], [], [], []
    has_null = np.array([c.valid is not None and not c.valid.all() for c in columns], bool)
    has_value = np.zeros(count, bool)
    for p, c in enumerate(columns):
        present = c.values if c.valid is None else c.values[c.valid]
        if not len(present):
            continue
        has_value[p] = True
        distinct = np.unique(present)
        if c.kind == "string":
            distinct = c.dictionary[distinct]
        if len(distinct) <= MAX_LISTED:
            listed.append(distinct)
            owner.append(np.full(len(distinct), p, np.int64))
        else:
            ranged.append(p)
            lows.append(distinct[0])
            highs.append(distinct[-1])
    first = columns[0]

    def column_of(values: list) -> Columns:
        if first.kind == "string":
            column = encode(pa.array(values, pa.string()))
        else:
            column = first._replace(values=np.asarray(values, first.values.dtype), valid=None, dictionary=None)
        return Columns.of({name: column}, len(values))

    listed_values = list(np.concatenate(listed)) if listed else []
    return _ColumnZones(column_of(listed_values), np.concatenate(owner) if owner else np.zeros(0, np.int64),
                        np.asarray(ranged, np.int64), column_of(lows), column_of(highs), has_null, has_value)
