"""Row masks of many predicates over one table, as runs of rows.

A batch job sees thousands of distinct predicates over rows sorted by the columns
the workload filters on (:mod:`beamvec.index.layout`). So a predicate is evaluated
in two steps:

1. its run: the conjuncts on the leading sort column (then on the next, while the
   previous one is held to a single value) narrow the rows to one run ``lo:hi`` by
   binary search, no pass over the rows: ``category = 'rock' AND year >= 2000`` is a
   run on rows sorted by (category, year);
2. the remaining conjuncts are evaluated over that run only, in one compiled pass
   over the encoded columns (:meth:`beamvec.index.columns.Columns.run`), by SQL
   three-valued logic, so a null stays "not true" exactly as :meth:`Predicate.evaluate`
   decides.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from beamvec.index.columns import Columns, intersect_sorted
from beamvec.index.predicate import And, Between, BoolColumn, Compare, Contains, In, IsNull, MatchAll, Predicate

# Bytes of masks kept per table.
DEFAULT_BUDGET = 256 << 20


class Run(NamedTuple):
    """Where a predicate matches: ``matches`` rows, all within ``lo:hi``; ``rows`` the matching rows,
    ascending, when posting lists gave them, else ``local``, the mask over rows lo..hi-1 (None when
    every row of the run matches). An empty match is (0, 0, 0, None)."""

    matches: int
    lo: int
    hi: int
    local: np.ndarray | None
    rows: np.ndarray | None = None


class MaskCache:
    """Runs and masks of predicates over a table (or its :class:`Columns`) whose rows are sorted by
    ``sorted_by`` (ascending, nulls last, as :func:`beamvec.index.layout.row_order` lays them out),
    bounded to about ``budget`` bytes (oldest dropped first). Pass the same ``Columns`` to a new
    cache to keep the encoded columns. With ``rows`` (start, stop), the cache covers only those
    rows of the columns (one shard's, of an index's shards laid end to end) and counts them from 0."""

    def __init__(self, data: pa.Table | Columns, budget: int = DEFAULT_BUDGET, sorted_by: Sequence[str] = (),
                 rows: tuple[int, int] | None = None):
        self.columns = data if isinstance(data, Columns) else Columns(data)
        self.sorted_by = tuple(sorted_by)
        self.start, self.stop = rows if rows is not None else (0, self.columns.num_rows)
        self.num_rows = self.stop - self.start
        self._capacity = max(16, budget // max(1, 2 * self.num_rows))
        self._runs: dict[Predicate, Run] = {}
        self._excluded: dict[Predicate, np.ndarray] = {}

    def __len__(self) -> int:
        """How many predicates it holds runs of."""
        return len(self._runs)

    def run(self, predicate: Predicate) -> Run:
        """Where ``predicate`` matches (see :class:`Run`)."""
        run = self._runs.get(predicate)
        if run is None:
            run = self._evaluate(predicate)
            _put(self._runs, predicate, run, self._capacity)
        return run

    def mask(self, predicate: Predicate) -> np.ndarray | None:
        """The rows where ``predicate`` is true; None when it is MATCH_ALL."""
        if isinstance(predicate, MatchAll):
            return None
        run = self.run(predicate)
        mask = np.zeros(self.num_rows, bool)
        if run.rows is not None:
            mask[run.rows] = True
        else:
            mask[run.lo:run.hi] = True if run.local is None else run.local
        return mask

    def excluded_bits(self, predicate: Predicate) -> np.ndarray | None:
        """The rows where ``predicate`` is not true, as little-endian packed bits (set = excluded); None for MATCH_ALL."""
        if isinstance(predicate, MatchAll):
            return None
        bits = self._excluded.get(predicate)
        if bits is None:
            bits = np.packbits(self.mask(predicate), bitorder="little")
            np.invert(bits, out=bits)  # the bits past the last row are set: those rows do not exist
            _put(self._excluded, predicate, bits, self._capacity)
        return bits

    def _evaluate(self, predicate: Predicate) -> Run:
        if isinstance(predicate, MatchAll):
            return Run(self.num_rows, 0, self.num_rows, None)
        parts = predicate.parts if isinstance(predicate, And) else (predicate,)
        lo, hi, rest = self._narrow(parts)
        if lo >= hi:
            return Run(0, 0, 0, None)
        if any(isinstance(parts[i], Contains) and not parts[i].negated for i in rest):
            return self._from_postings(predicate, parts, lo, hi, rest)
        if not rest:
            return Run(hi - lo, lo - self.start, hi - self.start, None)
        conjuncts = None if len(rest) == len(parts) else tuple(rest)
        local, matches, first, last = self.columns.run(predicate, lo, hi, conjuncts=conjuncts)
        if matches == 0:
            return Run(0, 0, 0, None)
        lo -= self.start
        return Run(matches, lo + first, lo + last, None if matches == last - first else local[first:last])

    def _from_postings(self, predicate: Predicate, parts: tuple[Predicate, ...], lo: int, hi: int,
                       rest: list[int]) -> Run:
        """The run of a conjunction with list conditions (``parts[i]`` for i in ``rest``, within rows lo:hi):
        the rows their posting lists give, the other conjuncts evaluated over those rows' span only."""
        listed = [i for i in rest if isinstance(parts[i], Contains) and not parts[i].negated]
        rows = self.columns.holding(parts[listed[0]], lo, hi)
        for i in listed[1:]:
            rows = intersect_sorted(rows, self.columns.holding(parts[i], lo, hi))
        others = tuple(i for i in rest if i not in listed)
        if len(rows) and others:
            local = self.columns.run(predicate, int(rows[0]), int(rows[-1]) + 1, conjuncts=others)[0]
            rows = rows[local[rows - rows[0]]]
        if not len(rows):
            return Run(0, 0, 0, None)
        return Run(len(rows), int(rows[0]) - self.start, int(rows[-1]) + 1 - self.start, None, rows - self.start)

    def _narrow(self, parts: tuple[Predicate, ...]) -> tuple[int, int, list[int]]:
        """The run of rows (of the columns) the conjuncts ``parts`` on the sort columns allow, and the
        positions of the conjuncts left over."""
        lo, hi = self.start, self.stop
        rest = list(range(len(parts)))
        for name in self.sorted_by:
            held = False
            for i, part in enumerate(parts):
                if i not in rest or getattr(part, "column", None) != name or not _may_be_interval(part):
                    continue
                lo, hi, exact, single = _interval(self.columns, part, lo, hi)
                if exact:
                    rest.remove(i)
                held = held or single
                if lo >= hi:
                    return lo, hi, rest
            if not held:  # rows are sorted by the next column only where this one holds a single value
                break
        return lo, hi, rest

def _may_be_interval(atom: Predicate) -> bool:
    """Whether an atom can select an interval of sorted values (see :func:`_interval`)."""
    return (isinstance(atom, (IsNull, BoolColumn)) or (isinstance(atom, Compare) and atom.op != "!=")
            or (isinstance(atom, (Between, In)) and not atom.negated))


def _interval(columns: Columns, atom: Predicate, lo: int, hi: int) -> tuple[int, int, bool, bool]:
    """For an atom that may be an interval (:func:`_may_be_interval`) on a column sorted over rows lo:hi
    (nulls last): the rows it can hold on, as (lo, hi, whether exactly those, whether the column has a
    single value there)."""
    name = atom.column  # type: ignore[attr-defined]
    column = columns.column(name)
    valid_end = hi if column.valid is None else lo + int(np.count_nonzero(column.valid[lo:hi]))
    values = column.values[lo:valid_end]

    def bounds(op: str, value) -> tuple[int, int]:
        op, operand = columns.operand(name, op, value)
        operand = values.dtype.type(operand)  # of the values' own type: numpy would otherwise cast them all
        if op in ("<", "<="):
            return lo, lo + int(values.searchsorted(operand, "left" if op == "<" else "right"))
        if op in (">", ">="):
            return lo + int(values.searchsorted(operand, "right" if op == ">" else "left")), valid_end
        return lo + int(values.searchsorted(operand, "left")), lo + int(values.searchsorted(operand, "right"))

    if isinstance(atom, IsNull):
        # Not a single value: NaN, also null to predicates, sorts apart from nulls.
        return (lo, valid_end, True, False) if atom.negated else (valid_end, hi, True, False)
    if isinstance(atom, BoolColumn):
        return *bounds("=", True), True, True
    if isinstance(atom, Compare):
        a, b = bounds(atom.op, atom.value)
        return a, b, True, atom.op == "="
    if isinstance(atom, Between):
        (a, _), (_, b) = bounds(">=", atom.low), bounds("<=", atom.high)
        return a, max(a, b), True, False
    # IN: the span of each listed value that the domain holds ("=" rewritten to another test holds on no row)
    keys = [operand for op, operand in (columns.operand(name, "=", v) for v in atom.values) if op == "="]
    keys = np.asarray(keys, values.dtype)
    starts, stops = values.searchsorted(keys, "left"), values.searchsorted(keys, "right")
    held = starts < stops
    if not held.any():
        return lo, lo, True, False
    single = int(np.count_nonzero(held)) == 1
    return lo + int(starts[held].min()), lo + int(stops[held].max()), single, single


def _put(cache: dict, key, value, capacity: int) -> None:
    while len(cache) >= capacity:
        cache.pop(next(iter(cache)))
    cache[key] = value
