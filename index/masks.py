"""Row masks of many predicates over one table, built from cached atom masks.

A batch job sees thousands of distinct predicates made of far fewer distinct
atomic conditions (``category = 'rock'``, ``year >= 2000``). Each atom is
evaluated once with pyarrow and kept as two masks (definitely true, definitely
false); predicates combine them with Kleene logic in numpy, so a null stays
"not true" exactly as :meth:`Predicate.evaluate` decides.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from beamvec.index.predicate import And, MatchAll, Not, Or, Predicate, not_

# Bytes of masks kept per table (atoms and whole predicates together).
DEFAULT_BUDGET = 256 << 20


class MaskCache:
    """Masks of predicates over ``table``, bounded to about ``budget`` bytes (oldest dropped first)."""

    def __init__(self, table: pa.Table, budget: int = DEFAULT_BUDGET):
        self.table = table
        self._capacity = max(16, budget // max(1, 2 * table.num_rows))
        self._atoms: dict[Predicate, tuple[np.ndarray, np.ndarray]] = {}
        self._masks: dict[Predicate, np.ndarray] = {}
        self._excluded: dict[Predicate, np.ndarray] = {}

    def mask(self, predicate: Predicate) -> np.ndarray | None:
        """The rows where ``predicate`` is true; None when it is MATCH_ALL."""
        if isinstance(predicate, MatchAll):
            return None
        mask = self._masks.get(predicate)
        if mask is None:
            mask = self._true_false(predicate)[0]
            _put(self._masks, predicate, mask, self._capacity)
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

    def _true_false(self, p: Predicate) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(p, Not):
            true, false = self._true_false(p.part)
            return false, true
        if isinstance(p, (And, Or)):
            parts = [self._true_false(part) for part in p.parts]
            trues, falses = np.array([t for t, _ in parts]), np.array([f for _, f in parts])
            if isinstance(p, And):
                return trues.all(axis=0), falses.any(axis=0)
            return trues.any(axis=0), falses.all(axis=0)
        masks = self._atoms.get(p)
        if masks is None:
            masks = (p.evaluate(self.table), not_(p).evaluate(self.table))
            _put(self._atoms, p, masks, self._capacity)
        return masks


def _put(cache: dict, key, value, capacity: int) -> None:
    while len(cache) >= capacity:
        cache.pop(next(iter(cache)))
    cache[key] = value
