"""Row masks of many predicates over one table, as runs of rows, built from cached atom masks.

A batch job sees thousands of distinct predicates made of far fewer distinct
atomic conditions (``category = 'rock'``, ``year >= 2000``), over rows sorted by the
columns the workload filters on (:mod:`beamvec.index.layout`). So a predicate is
evaluated in two steps:

1. its run: the conjuncts on the leading sort column (then on the next, while the
   previous one is held to a single value) narrow the rows to one run ``lo:hi`` by
   binary search, no pass over the rows: ``category = 'rock' AND year >= 2000`` is a
   run on rows sorted by (category, year);
2. the remaining conjuncts are evaluated over that run only; over all rows, atoms
   are evaluated once (over the encoded columns, :class:`beamvec.index.columns.Columns`)
   and kept (where true, and where false if a NOT asks) for the predicates that combine
   them by SQL three-valued logic, so a null stays "not true" exactly as
   :meth:`Predicate.evaluate` decides.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from beamvec.index.columns import Column, Columns, atom_mask, holds, operand_of
from beamvec.index.predicate import And, Between, BoolColumn, Compare, In, IsNull, MatchAll, Predicate, and_

# Bytes of masks kept per table (atoms and whole predicates together).
DEFAULT_BUDGET = 256 << 20


class Run(NamedTuple):
    """Where a predicate matches: ``matches`` rows, all within ``lo:hi``; ``local`` is the mask over
    rows lo..hi-1 (None when every row of the run matches). An empty match is (0, 0, 0, None)."""

    matches: int
    lo: int
    hi: int
    local: np.ndarray | None


class MaskCache:
    """Runs and masks of predicates over a table (or its :class:`Columns`) whose rows are sorted by
    ``sorted_by`` (ascending, nulls last, as :func:`beamvec.index.layout.row_order` lays them out),
    bounded to about ``budget`` bytes (oldest dropped first). Pass the same ``Columns`` to a new
    cache to keep the encoded columns."""

    def __init__(self, data: pa.Table | Columns, budget: int = DEFAULT_BUDGET, sorted_by: Sequence[str] = ()):
        self.columns = data if isinstance(data, Columns) else Columns(data)
        self.sorted_by = tuple(sorted_by)
        self._capacity = max(16, budget // max(1, 2 * self.columns.num_rows))
        self._atoms: dict[tuple[Predicate, bool], np.ndarray] = {}
        self._runs: dict[Predicate, Run] = {}
        self._excluded: dict[Predicate, np.ndarray] = {}

    def __len__(self) -> int:
        """How many atoms and predicates it holds masks of."""
        return len(self._atoms) + len(self._runs)

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
        mask = np.zeros(self.columns.num_rows, bool)
        mask[run.lo:run.hi] = True if run.local is None else run.local
        return mask

    def excluded_bits(self, predicate: Predicate) -> np.ndarray | None:
        """The rows where ``predicate`` is not true, as little-endian packed bits (set = excluded); None for MATCH_ALL."""
        if isinstance(predicate, MatchAll):
            return None
        bits = self._excluded.get(predicate)
        if bits is None:
            bits = np.packbits(~self.mask(predicate), bitorder="little")
            _put(self._excluded, predicate, bits, self._capacity)
        return bits

    def _evaluate(self, predicate: Predicate) -> Run:
        n = self.columns.num_rows
        if isinstance(predicate, MatchAll):
            return Run(n, 0, n, None)
        lo, hi, rest = self._narrow(list(predicate.parts) if isinstance(predicate, And) else [predicate])
        if lo >= hi:
            return Run(0, 0, 0, None)
        if not rest:
            return Run(hi - lo, lo, hi, None)
        remaining = and_(*rest)
        if (lo, hi) == (0, n):  # over all rows: from the shared atom masks
            local = holds(remaining, self._atom, n)
        else:
            local = holds(remaining, lambda a, truth: atom_mask(_rows(self.columns.column(a.column), lo, hi), a, truth),
                          hi - lo)
        matches = int(np.count_nonzero(local))
        if matches == 0:
            return Run(0, 0, 0, None)
        first, last = int(np.argmax(local)), len(local) - int(np.argmax(local[::-1]))
        local = None if matches == last - first else local[first:last]
        return Run(matches, lo + first, lo + last, local)

    def _narrow(self, parts: list[Predicate]) -> tuple[int, int, list[Predicate]]:
        """The run of rows the conjuncts ``parts`` on the sort columns allow, and the conjuncts left over."""
        lo, hi = 0, self.columns.num_rows
        for name in self.sorted_by:
            column, held = None, False
            for part in list(parts):
                if getattr(part, "column", None) != name or not isinstance(part, (Compare, Between, In, IsNull,
                                                                                      BoolColumn)):
                    continue
                column = column or self.columns.column(name)
                found = _interval(column, part, lo, hi)
                if found is None:
                    continue
                lo, hi, exact, single = found
                if exact:
                    parts.remove(part)
                held = held or single
                if lo >= hi:
                    return lo, hi, parts
            if not held:  # rows are sorted by the next column only where this one holds a single value
                break
        return lo, hi, parts

    def _atom(self, atom: Predicate, truth: bool) -> np.ndarray:
        mask = self._atoms.get((atom, truth))
        if mask is None:
            mask = self.columns.atom(atom, truth)
            _put(self._atoms, (atom, truth), mask, self._capacity)
        return mask


def _rows(column: Column, lo: int, hi: int) -> Column:
    """Rows lo..hi-1 of an encoded column (views, no copy)."""
    return column._replace(values=column.values[lo:hi], valid=None if column.valid is None else column.valid[lo:hi])


def _interval(column: Column, atom: Predicate, lo: int, hi: int) -> tuple[int, int, bool, bool] | None:
    """For an atom on a column sorted over rows lo:hi (nulls last): the rows it can hold on, as
    (lo, hi, whether exactly those, whether the column has a single value there); None if it is
    not an interval."""
    valid_end = hi if column.valid is None else lo + int(np.count_nonzero(column.valid[lo:hi]))
    values = column.values[lo:valid_end]

    def bounds(op: str, value) -> tuple[int, int]:
        op, operand = operand_of(column, op, value)
        operand = values.dtype.type(operand)  # of the values' own type: numpy would otherwise cast them all
        left = lambda: lo + int(values.searchsorted(operand, "left"))  # noqa: E731
        right = lambda: lo + int(values.searchsorted(operand, "right"))  # noqa: E731
        return {"<": lambda: (lo, left()), "<=": lambda: (lo, right()), ">": lambda: (right(), valid_end),
                ">=": lambda: (left(), valid_end), "=": lambda: (left(), right())}[op]()

    if isinstance(atom, IsNull):
        # Not a single value: NaN, also null to predicates, sorts apart from nulls.
        return (lo, valid_end, True, False) if atom.negated else (valid_end, hi, True, False)
    if isinstance(atom, BoolColumn):
        return *bounds("=", True), True, True
    if isinstance(atom, Compare) and atom.op != "!=":
        a, b = bounds(atom.op, atom.value)
        return a, b, True, atom.op == "="
    if isinstance(atom, Between) and not atom.negated:
        (a, _), (_, b) = bounds(">=", atom.low), bounds("<=", atom.high)
        return a, max(a, b), True, False
    if isinstance(atom, In) and not atom.negated:
        spans = [bounds("=", v) for v in atom.values]
        spans = [s for s in spans if s[0] < s[1]]
        if not spans:
            return lo, lo, True, False
        a, b = min(s[0] for s in spans), max(s[1] for s in spans)
        return a, b, len(spans) == 1, len(spans) == 1
    return None


def _put(cache: dict, key, value, capacity: int) -> None:
    while len(cache) >= capacity:
        cache.pop(next(iter(cache)))
    cache[key] = value
