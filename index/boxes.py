"""Reasoning over boxes: which rows a predicate can hold on, without reading any.

A :class:`Box` describes a region of rows per column (:class:`Bounds`: a range, values allowed
or excluded, whether null is possible); :func:`may_match` soundly decides whether a predicate can
hold on any row of a box, and :meth:`Box.restrict` narrows a box by an atom (the qd-tree's
partition descriptions are boxes). Comparisons follow :mod:`beamvec.index.predicate`'s semantics.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np
import pyarrow as pa

from beamvec.index.predicate import (
    _NEGATED_OP, MATCH_ALL, And, Between, BoolColumn, Compare, Contains, In, IsNull, MatchAll, Not, Or, Predicate,
    PredicateError, Value, _Atom, _check_value, _field, _tagged, and_, or_, parse_instant,
)


def possible(predicate: Predicate, box: Box) -> _Possible:
    """Whether ``predicate`` can be true, and whether it can be false, on some row of ``box``."""
    if isinstance(predicate, MatchAll):
        return _Possible(True, False)
    if isinstance(predicate, IsNull):
        bounds = box.bounds(predicate.column)
        null, value = bounds.nullable, bounds.has_values()
        return _Possible(value, null) if predicate.negated else _Possible(null, value)
    if isinstance(predicate, _Atom):
        bounds = box.bounds(predicate.column)
        return _Possible(restrict_bounds(predicate, bounds, True).has_values(),
                         restrict_bounds(predicate, bounds, False).has_values())
    if isinstance(predicate, Not):
        inner = possible(predicate.part, box)
        return _Possible(inner.false, inner.true)
    ps = [possible(p, box) for p in predicate.parts]  # type: ignore[attr-defined]
    if isinstance(predicate, And):
        return _Possible(all(p.true for p in ps), any(p.false for p in ps))
    return _Possible(any(p.true for p in ps), all(p.false for p in ps))


def restrict(predicate: Predicate, box: Box, holds: bool) -> Box:
    """``box`` narrowed to rows where ``predicate`` is true (``holds``), or not true (sound)."""
    if isinstance(predicate, MatchAll):
        return box
    if isinstance(predicate, _Atom):
        return box._with(predicate.column, restrict_bounds(predicate, box.bounds(predicate.column), holds))
    if isinstance(predicate, Not):
        return restrict(predicate.part, box, False) if holds else box
    if isinstance(predicate, And):
        return functools.reduce(lambda b, p: restrict(p, b, True), predicate.parts, box) if holds else box
    if isinstance(predicate, Or):
        return box if holds else functools.reduce(lambda b, p: restrict(p, b, False), predicate.parts, box)
    raise TypeError(f"not a predicate: {predicate!r}")


def restrict_bounds(atom: _Atom, bounds: Bounds, holds: bool) -> Bounds:
    """A column's bounds narrowed to where ``atom`` is true (``holds``), or not true."""
    if isinstance(atom, IsNull):
        return bounds._allow(()) if holds != atom.negated else bounds._non_null()
    if isinstance(atom, Compare):
        op = atom.op if holds else _NEGATED_OP[atom.op]
        value = atom.value
        if op == "=":
            bounds = bounds._allow((value,))
        elif op == "!=":
            bounds = bounds._exclude((value,))
        elif op in ("<", "<="):
            bounds = bounds._tighten_high(value, op == "<=")
        else:
            bounds = bounds._tighten_low(value, op == ">=")
    elif isinstance(atom, Between):
        if holds != atom.negated:
            bounds = bounds._tighten_low(atom.low, True)._tighten_high(atom.high, True)
    elif isinstance(atom, In):
        bounds = bounds._allow(atom.values) if holds != atom.negated else bounds._exclude(atom.values)
    elif isinstance(atom, BoolColumn):
        bounds = bounds._allow((holds,))
    elif isinstance(atom, Contains):
        bounds = _restrict_list(bounds, atom, holds != atom.negated)
    else:
        raise TypeError(f"not an atom: {atom!r}")
    return bounds._non_null() if holds else bounds


def _restrict_list(bounds: Bounds, atom: Contains, true: bool) -> Bounds:
    """A list column's bounds narrowed to where the positive ``atom`` is true (``true``), or not true:
    the elements every list holds (``holds``) and those no list holds (``lacks``)."""
    values = frozenset(atom.values)
    if true:
        if atom.mode == "all":
            return bounds._replace(holds=bounds.holds | values)
        if values <= bounds.lacks:  # none of them can be held: no list qualifies
            return bounds._replace(holds=bounds.holds | {atom.values[0]})
        return bounds
    if atom.mode == "any":
        return bounds._replace(lacks=bounds.lacks | values)
    missing = values - bounds.holds  # not all held: one of these is lacking
    if not missing:
        return bounds._replace(lacks=bounds.lacks | {atom.values[0]})
    return bounds._replace(lacks=bounds.lacks | missing) if len(missing) == 1 else bounds


def _family(value: Value) -> str:
    return "bool" if isinstance(value, bool) else "string" if isinstance(value, str) else "number"


def _cmp(a: Value, b: Value) -> int | None:
    """-1, 0 or 1 when the order of a and b is certain whatever the column type, else None.

    Two strings that both parse as ISO datetimes are ordered only where text order and
    time order agree; values of different families are never ordered.
    """
    if _family(a) != _family(b):
        return None
    order = (a > b) - (a < b)  # type: ignore[operator]
    if isinstance(a, str) and order:
        ia, ib = parse_instant(a), parse_instant(b)  # type: ignore[arg-type]
        if ia is not None and ib is not None and order != (ia > ib) - (ia < ib):
            return None
    return order


def _all3(verdicts: Iterator[bool | None]) -> bool | None:
    """Kleene AND over True/False/None (None = unknown)."""
    result: bool | None = True
    for verdict in verdicts:
        if verdict is False:
            return False
        if verdict is None:
            result = None
    return result


def _member(value: Value, values: frozenset) -> bool | None:
    """Whether value certainly is (True), certainly is not (False) or may be (None) in values."""
    same = [_cmp(value, v) for v in values]
    return True if 0 in same else None if None in same else False


def _meet(a: frozenset, b: frozenset) -> bool:
    """Whether some element of ``a`` is certainly one of ``b`` (1, 1.0 and True kept apart)."""
    return any(_member(v, b) for v in a)


def _sorted_values(values: frozenset) -> tuple:
    return tuple(sorted(values, key=lambda v: (_family(v), v)))


def _json_values(obj: Mapping, key: str) -> frozenset:
    values = _field(obj, key, list)
    for value in values:
        _check_value(value)
    return frozenset(values)


_REPLACED: dict[tuple, tuple[Bounds, Bounds]] = {}


def _replaced(bounds: Bounds, changes: tuple) -> Bounds:
    """``bounds`` with fields changed; memoised, as fitting a plan narrows the same bounds objects many times.

    Keyed by the identity of ``bounds`` (kept alive in the memo, so the identity
    is not reused) and the type-tagged changes: 1, 1.0 and True are equal in
    Python but not interchangeable here.
    """
    key = (id(bounds), tuple((name, _type_tagged(value)) for name, value in changes))
    hit = _REPLACED.get(key)
    if hit is None:
        if len(_REPLACED) >= 1 << 16:
            _REPLACED.clear()
        hit = _REPLACED[key] = (bounds, dataclasses.replace(bounds, **dict(changes)))
    return hit[1]


def clear_reasoning_cache() -> None:
    """Forget memoised bounds (see :func:`_replaced`)."""
    _REPLACED.clear()


def _type_tagged(value: object) -> object:
    if isinstance(value, frozenset):
        return frozenset(_tagged(v) for v in value)
    return _tagged(value)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What one column may hold in a :class:`Box` (normalised on construction).

    Non-null values lie in the range low..high (None = unbounded), in ``allowed`` if
    that is not None (an empty set: no non-null value), and not in ``excluded``;
    null is possible if ``nullable``. For a list column, a non-null list holds every
    element of ``holds`` and none of ``lacks`` (none can be when the two meet).
    """

    low: Value | None = None
    high: Value | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    allowed: frozenset | None = None
    excluded: frozenset = frozenset()
    nullable: bool = True
    holds: frozenset = frozenset()
    lacks: frozenset = frozenset()

    def __post_init__(self) -> None:
        for value in (self.low, self.high):
            if value is not None:
                _check_value(value)
        for values in (self.allowed or (), self.excluded, self.holds, self.lacks):
            for value in values:
                _check_value(value)
        set_ = functools.partial(object.__setattr__, self)
        set_("excluded", frozenset(e for e in self.excluded if self._in_range(e) is not False))
        allowed = None if self.allowed is None else frozenset(self.allowed)
        if allowed is None and self.low is not None and self.high is not None:
            order = _cmp(self.low, self.high)
            if order == 0 and self.low_inclusive and self.high_inclusive:
                allowed = frozenset({self.low})
            elif order is not None and order >= 0:
                allowed = frozenset()
        if allowed is not None:
            verdicts = {a: self._admits(a) for a in allowed}
            allowed = frozenset(a for a, verdict in verdicts.items() if verdict is not False)
            if all(verdicts[a] for a in allowed):
                set_("low", None), set_("high", None), set_("low_inclusive", True)
                set_("high_inclusive", True), set_("excluded", frozenset())
        set_("allowed", allowed)

    def _in_range(self, value: Value) -> bool | None:
        def side(bound: Value | None, inclusive: bool, sign: int) -> bool | None:
            if bound is None:
                return True
            order = _cmp(value, bound)
            return None if order is None else order * sign > 0 or (order == 0 and inclusive)
        return _all3(iter((side(self.low, self.low_inclusive, 1), side(self.high, self.high_inclusive, -1))))

    def _admits(self, value: Value) -> bool | None:
        member = _member(value, self.excluded)
        return _all3(iter((self._in_range(value), None if member is None else not member)))

    def has_values(self) -> bool:
        """False only if no non-null value can lie in these bounds."""
        return (self.allowed is None or bool(self.allowed)) and not _meet(self.holds, self.lacks)

    def is_empty(self) -> bool:
        """True if no value at all, null included, can lie in these bounds."""
        return not self.nullable and not self.has_values()

    def _replace(self, **changes: Any) -> Bounds:
        return _replaced(self, tuple(changes.items()))

    def _tighten_low(self, value: Value, inclusive: bool) -> Bounds:
        order = 1 if self.low is None else _cmp(value, self.low)
        if order is None or order < 0:
            return self
        return self._replace(low=value, low_inclusive=inclusive and (order > 0 or self.low_inclusive))

    def _tighten_high(self, value: Value, inclusive: bool) -> Bounds:
        order = -1 if self.high is None else _cmp(value, self.high)
        if order is None or order > 0:
            return self
        return self._replace(high=value, high_inclusive=inclusive and (order < 0 or self.high_inclusive))

    def _allow(self, values: tuple) -> Bounds:
        if self.allowed is None:
            return self._replace(allowed=frozenset(values))
        return self._replace(allowed=frozenset(a for a in self.allowed if _member(a, frozenset(values)) is not False))

    def _exclude(self, values: tuple) -> Bounds:
        return self._replace(excluded=self.excluded | frozenset(values))

    def _non_null(self) -> Bounds:
        return self._replace(nullable=False)

    def _predicate(self, column: str) -> Predicate:
        """A predicate true exactly for the values these bounds admit."""
        if not self.has_values():
            return IsNull(column) if self.nullable else And((IsNull(column), IsNull(column, True)))
        conditions: list[Predicate] = []
        if self.allowed is not None:
            conditions.append(In(column, _sorted_values(self.allowed)))
        if self.low is not None and self.high is not None and self.low_inclusive and self.high_inclusive:
            conditions.append(Between(column, self.low, self.high))
        else:
            if self.low is not None:
                conditions.append(Compare(column, ">=" if self.low_inclusive else ">", self.low))
            if self.high is not None:
                conditions.append(Compare(column, "<=" if self.high_inclusive else "<", self.high))
        if self.excluded:
            conditions.append(In(column, _sorted_values(self.excluded), negated=True))
        if self.holds:
            conditions.append(Contains(column, _sorted_values(self.holds)))
        if self.lacks:
            conditions.append(Contains(column, _sorted_values(self.lacks), "any", negated=True))
        values = and_(*conditions)
        if self.nullable:
            return MATCH_ALL if values is MATCH_ALL else or_(values, IsNull(column))
        return IsNull(column, negated=True) if values is MATCH_ALL else values

    def to_json(self) -> dict:
        """A plain JSON-able dict; :meth:`from_json` inverts it."""
        return {"low": self.low, "low_inclusive": self.low_inclusive, "high": self.high,
                "high_inclusive": self.high_inclusive,
                "allowed": None if self.allowed is None else list(_sorted_values(self.allowed)),
                "excluded": list(_sorted_values(self.excluded)), "nullable": self.nullable,
                **({"holds": list(_sorted_values(self.holds)), "lacks": list(_sorted_values(self.lacks))}
                   if self.holds or self.lacks else {})}

    @classmethod
    def from_json(cls, obj: Mapping) -> Bounds:
        """Bounds from :meth:`to_json` output."""
        if not isinstance(obj, Mapping):
            raise PredicateError(f"bounds JSON must be an object, got {obj!r}")
        bound = (str, int, float, type(None))
        return cls(_field(obj, "low", bound), _field(obj, "high", bound),
                   _field(obj, "low_inclusive", bool), _field(obj, "high_inclusive", bool),
                   None if obj.get("allowed") is None else _json_values(obj, "allowed"),
                   _json_values(obj, "excluded"), _field(obj, "nullable", bool),
                   _json_values(obj, "holds") if "holds" in obj else frozenset(),
                   _json_values(obj, "lacks") if "lacks" in obj else frozenset())


_EVERYTHING = Bounds()


@dataclasses.dataclass(frozen=True)
class Box:
    """A region of rows: per-column :class:`Bounds` (columns not listed are unconstrained).

    A box may over-approximate: it never excludes a row that the restrictions made
    to build it allow.
    """

    columns: tuple[tuple[str, Bounds], ...] = ()

    def __post_init__(self) -> None:
        items = self.columns.items() if isinstance(self.columns, Mapping) else self.columns
        columns = tuple(sorted(((n, b) for n, b in items if b != _EVERYTHING), key=lambda item: item[0]))
        if len({name for name, _ in columns}) != len(columns):
            raise PredicateError("a box lists a column twice")
        object.__setattr__(self, "columns", columns)

    @classmethod
    def everything(cls) -> Box:
        """The box of all rows."""
        return cls()

    def bounds(self, column: str) -> Bounds:
        """The bounds on ``column`` (unconstrained if the box does not mention it)."""
        return dict(self.columns).get(column, _EVERYTHING)

    def restrict(self, atom: Predicate, holds: bool = True) -> Box:
        """This box intersected with the rows where ``atom`` is true (holds) or false-or-null (not holds).

        Atoms are narrowed precisely where bounds can express it; NOT, AND and OR are
        followed where sound; anything else leaves the box unchanged (a superset).
        """
        return restrict(atom, self, holds)

    def _with(self, column: str, bounds: Bounds) -> Box:
        return Box(tuple((c, b) for c, b in self.columns if c != column) + ((column, bounds),))

    def is_empty(self) -> bool:
        """True if no row can lie in the box."""
        return any(b.is_empty() for _, b in self.columns)

    def as_predicate(self) -> Predicate:
        """A predicate true exactly for the rows in the box (MATCH_ALL for everything)."""
        return and_(*(b._predicate(column) for column, b in self.columns))

    def describe(self) -> str:
        """Human-readable text, e.g. ``category IN ('rock') AND year >= 2000``."""
        predicate = self.as_predicate()
        return "everything" if predicate is MATCH_ALL else predicate.to_text()

    def contains(self, data: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Which rows of ``data`` lie in the box, as a bool array."""
        return self.as_predicate().evaluate(data)

    def to_json(self) -> dict:
        """A plain JSON-able dict; :meth:`from_json` inverts it."""
        return {"columns": {column: b.to_json() for column, b in self.columns}}

    @classmethod
    def from_json(cls, obj: Mapping) -> Box:
        """A box from :meth:`to_json` output."""
        columns = _field(obj, "columns", Mapping) if isinstance(obj, Mapping) else None
        if columns is None:
            raise PredicateError(f"box JSON must be an object, got {obj!r}")
        return cls(tuple((str(name), Bounds.from_json(b)) for name, b in columns.items()))


class _Possible(NamedTuple):
    """Whether a predicate can be true, and whether it can be false (not null), on some row of a box.

    Null needs no tracking: under Kleene logic whether a node can be true or false
    depends only on whether its parts can be true or false (NOT swaps them; an unknown
    part never makes AND or OR true or false).
    """

    true: bool
    false: bool


def may_match(predicate: Predicate, box: Box) -> bool:
    """False only if no row in ``box`` can satisfy ``predicate`` (sound, not always exact).

    Each atom is judged on its column's bounds (can it be true? can it be false, as
    opposed to null?) and the judgements are combined with Kleene logic.
    """
    return not box.is_empty() and possible(predicate, box).true
