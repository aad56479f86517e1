"""Filter predicates over attribute columns: the syntax tree, printing, JSON, validation,
evaluation, and reasoning over boxes (the parser is :mod:`beamvec.index.parser`).

The text syntax is a small SQL ``WHERE`` dialect, keywords case-insensitive::

    category IN ('rock', 'jazz') AND year >= 2000 AND NOT explicit

Conditions: ``=, != (or <>), <, <=, >, >=``, ``[NOT] BETWEEN a AND b`` (inclusive),
``[NOT] IN (v, ...)``, ``IS [NOT] NULL``, a bare bool column, and on list columns
(``list<string>``, ``list<int64>``) ``[NOT] CONTAINS v``, ``[NOT] CONTAINS ALL (v, ...)`` and
``[NOT] CONTAINS ANY (v, ...)``; combined with
``NOT``, ``AND``, ``OR`` and parentheses (precedence OR < AND < NOT < comparison).
Literals are 'strings' ('' escapes a quote), integers, floats and TRUE/FALSE;
identifiers are bare ``[A-Za-z_][A-Za-z0-9_]*`` or "double quoted" ("" escapes).
Empty text or None is :data:`MATCH_ALL`.

Semantics follow SQL three-valued logic: a comparison with null is unknown, NOT
unknown is unknown, and a row matches only when the whole predicate is true.
NaN in a float column counts as null. On a list column, CONTAINS is unknown on a null list
(so neither it nor its negation matches there) and false on an empty one (its negation true); null
elements inside a list are not values of it. Comparisons are exact: an integer column
compared with 2.5 or a float column with a huge integer gives the mathematically
right answer. Timestamp and date columns accept ISO date/datetime strings (a
timezone offset is converted to UTC; a naive string is taken in the column's
timezone, or UTC) and integers (the column's raw count of its unit).

Reasoning over regions of rows (boxes) is :mod:`beamvec.index.boxes`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Union

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from beamvec.index.columns import Columns

Value = Union[str, int, float, bool]
"""A literal: str, int, float (finite) or bool. int and float are distinct values."""

MAX_DEPTH = 200
"""The deepest nesting of parentheses and NOTs that :func:`parse` accepts."""

_KEYWORDS = frozenset({"AND", "OR", "NOT", "BETWEEN", "IN", "IS", "NULL", "TRUE", "FALSE", "CONTAINS"})
_OPS = frozenset({"=", "!=", "<", "<=", ">", ">="})
_NEGATED_OP = {"=": "!=", "!=": "=", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(
    r"(?P<space>\s+)"
    r"|(?P<num>-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><=|>=|<>|!=|==|=|<|>)"
    r"|(?P<punct>[(),])"
)


class PredicateError(ValueError):
    """A predicate that does not parse, is malformed, or does not fit a schema.

    ``position`` is the 0-based character offset into the text (None for errors
    that are not about text, such as validation); ``expected`` names what would
    have been acceptable, when that is known.
    """

    def __init__(self, message: str, position: int | None = None, expected: str | None = None):
        super().__init__(message if position is None else f"at position {position}: {message}")
        self.position = position
        self.expected = expected


# ---------------------------------------------------------------------------------------- AST


def _check_column(column: object) -> None:
    if not isinstance(column, str) or not column:
        raise PredicateError(f"a column name must be a non-empty string, got {column!r}")


def _check_value(value: object) -> None:
    if not isinstance(value, (str, int, float)):
        raise PredicateError(f"a literal must be a str, int, float or bool, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PredicateError(f"a float literal must be finite, got {value!r}")


def _tagged(value: object) -> object:
    """A comparison key that keeps 1, 1.0 and True apart."""
    if isinstance(value, tuple):
        return tuple(_tagged(v) for v in value)
    if isinstance(value, Predicate):
        return value
    return (type(value).__name__, value)


def quote_identifier(name: str) -> str:
    """A column name as predicate text: bare when it can be, else double-quoted."""
    if _BARE.fullmatch(name) and name.upper() not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def literal_text(value) -> str:
    """A value as a predicate literal: NULL, TRUE/FALSE, a number, or a quoted string (dates and
    timestamps as their ISO text, which compares with temporal columns)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    text = value if isinstance(value, str) else str(value)
    return "'" + text.replace("'", "''") + "'"


class Predicate:
    """Base of all predicate nodes: immutable, hashable, equal by structure."""

    __slots__ = ("_hash", "_tags")

    def to_text(self) -> str:
        """Canonical text; ``parse(p.to_text()) == p``."""
        return self._text()

    def __str__(self) -> str:
        return self.to_text()

    def to_json(self) -> dict:
        """A plain JSON-able dict; :func:`from_json` inverts it exactly."""
        raise NotImplementedError

    def atoms(self) -> tuple[Predicate, ...]:
        """The atomic conditions (leaves), de-duplicated, in order of first appearance."""
        return tuple(dict.fromkeys(self._leaves()))

    def columns(self) -> frozenset[str]:
        """The names of the columns the predicate reads."""
        return frozenset(atom.column for atom in self.atoms())  # type: ignore[attr-defined]

    def validate(self, schema: pa.Schema) -> None:
        """Raise :class:`PredicateError` unless every column exists and fits its literals."""
        for atom in self.atoms():
            atom._check(schema)

    def evaluate(self, data: pa.Table | pa.RecordBatch | Columns) -> np.ndarray:
        """The rows of ``data`` for which the predicate is true, as a bool array.

        Each column read is encoded first (:class:`beamvec.index.columns.Columns`): to
        evaluate many predicates over the same rows, pass one ``Columns(table)`` to each
        call (or use a :class:`beamvec.index.masks.MaskCache`), so columns are encoded once.
        """
        from beamvec.index.columns import Columns

        self.validate(data.schema)
        return (data if isinstance(data, Columns) else Columns(data)).evaluate(self)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(self) is not type(other):
            return NotImplemented
        return hash(self) == hash(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        try:
            return self._hash
        except AttributeError:  # computed once: predicates key many caches
            object.__setattr__(self, "_hash", hash((type(self).__name__, self._key())))
            return self._hash

    def _key(self) -> tuple:
        try:
            return self._tags
        except AttributeError:  # computed once, as the hash
            tags = tuple(_tagged(getattr(self, f.name)) for f in dataclasses.fields(self))  # type: ignore[arg-type]
            object.__setattr__(self, "_tags", tags)
            return tags

    # Per-node behaviour, overridden below.
    def _text(self) -> str:
        raise NotImplementedError

    def _leaves(self) -> Iterator[Predicate]:
        raise NotImplementedError

    def _check(self, schema: pa.Schema) -> None:
        raise NotImplementedError





_node = dataclasses.dataclass(frozen=True, slots=True, eq=False)


@_node
class MatchAll(Predicate):
    """Matches every row (no filter). Use the singleton :data:`MATCH_ALL`; its text is ""."""

    def to_json(self) -> dict:
        return {"type": "match_all"}

    def _text(self) -> str:
        return ""

    def _leaves(self) -> Iterator[Predicate]:
        return iter(())





MATCH_ALL = MatchAll()


@_node
class _Atom(Predicate):
    """An atomic condition on one column."""

    column: str

    def _leaves(self) -> Iterator[Predicate]:
        yield self

    def _check(self, schema: pa.Schema) -> None:
        _column_kind(schema, self.column)

    def _check_literals(self, schema: pa.Schema, values: tuple) -> None:
        kind = _column_kind(schema, self.column)
        for value in values:
            _check_literal(self.column, schema.field(self.column).type, kind, value)





@_node
class Compare(_Atom):
    """``column op value`` with op one of = != < <= > >= ('<>' is normalised to '!=')."""

    op: str
    value: Value

    def __post_init__(self) -> None:
        _check_column(self.column)
        if self.op == "<>":
            object.__setattr__(self, "op", "!=")
        if self.op not in _OPS:
            raise PredicateError(f"unknown comparison operator {self.op!r}")
        _check_value(self.value)

    def to_json(self) -> dict:
        return {"type": "compare", "column": self.column, "op": self.op, "value": self.value}

    def _text(self) -> str:
        return f"{quote_identifier(self.column)} {self.op} {literal_text(self.value)}"

    def _check(self, schema: pa.Schema) -> None:
        self._check_literals(schema, (self.value,))




def _set_values(atom: Predicate, what: str) -> None:
    """``atom.values`` made a tuple, or PredicateError unless it is a non-empty sequence."""
    values = atom.values  # type: ignore[attr-defined]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise PredicateError(f"{what} needs a sequence of values, got {values!r}")
    object.__setattr__(atom, "values", tuple(values))
    if not atom.values:  # type: ignore[attr-defined]
        raise PredicateError(f"{what} needs at least one value")


@_node
class Between(_Atom):
    """``column [NOT] BETWEEN low AND high``, inclusive at both ends."""

    low: Value
    high: Value
    negated: bool = False

    def __post_init__(self) -> None:
        _check_column(self.column)
        _check_value(self.low)
        _check_value(self.high)

    def to_json(self) -> dict:
        return {"type": "between", "column": self.column, "low": self.low, "high": self.high,
                "negated": self.negated}

    def _text(self) -> str:
        not_ = "NOT " if self.negated else ""
        return (f"{quote_identifier(self.column)} {not_}BETWEEN "
                f"{literal_text(self.low)} AND {literal_text(self.high)}")

    def _check(self, schema: pa.Schema) -> None:
        self._check_literals(schema, (self.low, self.high))




@_node
class In(_Atom):
    """``column [NOT] IN (v1, v2, ...)``; ``values`` is a non-empty tuple."""

    values: tuple
    negated: bool = False

    def __post_init__(self) -> None:
        _check_column(self.column)
        _set_values(self, "IN")
        for value in self.values:
            _check_value(value)

    def to_json(self) -> dict:
        return {"type": "in", "column": self.column, "values": list(self.values), "negated": self.negated}

    def _text(self) -> str:
        not_ = "NOT " if self.negated else ""
        values = ", ".join(literal_text(v) for v in self.values)
        return f"{quote_identifier(self.column)} {not_}IN ({values})"

    def _check(self, schema: pa.Schema) -> None:
        self._check_literals(schema, self.values)




@_node
class IsNull(_Atom):
    """``column IS [NOT] NULL``; never unknown."""

    negated: bool = False

    def __post_init__(self) -> None:
        _check_column(self.column)

    def to_json(self) -> dict:
        return {"type": "is_null", "column": self.column, "negated": self.negated}

    def _text(self) -> str:
        return f"{quote_identifier(self.column)} IS {'NOT ' if self.negated else ''}NULL"





@_node
class BoolColumn(_Atom):
    """A bool column used as a condition on its own (true where the column is true)."""

    def __post_init__(self) -> None:
        _check_column(self.column)

    def to_json(self) -> dict:
        return {"type": "bool_column", "column": self.column}

    def _text(self) -> str:
        return quote_identifier(self.column)

    def _check(self, schema: pa.Schema) -> None:
        if _column_kind(schema, self.column) != "bool":
            raise PredicateError(
                f"column '{self.column}' has type {schema.field(self.column).type}; only a bool "
                "column can be a condition on its own", expected="a bool column")




@_node
class Contains(_Atom):
    """``column [NOT] CONTAINS v``, ``column [NOT] CONTAINS ALL (v1, ...)`` or ``... CONTAINS ANY (v1, ...)``
    on a list column: whether the list holds every (``mode`` "all") or some ("any") of ``values``, a
    non-empty tuple of strings or integers. A single value is mode "all" (both read the same)."""

    values: tuple
    mode: str = "all"
    negated: bool = False

    def __post_init__(self) -> None:
        _check_column(self.column)
        _set_values(self, "CONTAINS")
        for value in self.values:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise PredicateError(f"a CONTAINS value must be a string or an integer, got {value!r}")
        if self.mode not in ("all", "any"):
            raise PredicateError(f"CONTAINS mode must be 'all' or 'any', got {self.mode!r}")
        if len(self.values) == 1:
            object.__setattr__(self, "mode", "all")

    def to_json(self) -> dict:
        return {"type": "contains", "column": self.column, "values": list(self.values), "mode": self.mode,
                "negated": self.negated}

    def _text(self) -> str:
        not_ = "NOT " if self.negated else ""
        if len(self.values) == 1:
            return f"{quote_identifier(self.column)} {not_}CONTAINS {literal_text(self.values[0])}"
        values = ", ".join(literal_text(v) for v in self.values)
        return f"{quote_identifier(self.column)} {not_}CONTAINS {self.mode.upper()} ({values})"

    def _check(self, schema: pa.Schema) -> None:
        kind = _column_kind(schema, self.column)
        t = schema.field(self.column).type
        if kind not in _LIST_KINDS:
            raise PredicateError(f"column '{self.column}' has type {t}; CONTAINS needs a list column "
                                 "(list<string> or list<int64>)", expected="a list column")
        for value in self.values:
            _check_literal(self.column, t, _LIST_KINDS[kind], value)


def _check_part(part: object) -> None:
    if not isinstance(part, Predicate):
        raise PredicateError(f"expected a Predicate, got {part!r}")
    if isinstance(part, MatchAll):
        raise PredicateError("MATCH_ALL cannot be part of NOT, AND or OR; use and_(), or_(), not_()")


@_node
class Not(Predicate):
    """``NOT part`` (Kleene: NOT unknown is unknown)."""

    part: Predicate

    def __post_init__(self) -> None:
        _check_part(self.part)

    def to_json(self) -> dict:
        return {"type": "not", "part": self.part.to_json()}

    def _text(self) -> str:
        text = self.part._text()
        return f"NOT ({text})" if isinstance(self.part, (And, Or)) else f"NOT {text}"

    def _leaves(self) -> Iterator[Predicate]:
        return self.part._leaves()





@_node
class _Junction(Predicate):
    """An n-ary AND or OR: at least two parts, nested parts of the same kind merged."""

    parts: tuple

    def __post_init__(self) -> None:
        if not hasattr(self.parts, "__iter__"):
            raise PredicateError(f"parts must be a sequence of predicates, got {self.parts!r}")
        flat: list[Predicate] = []
        for part in self.parts:
            _check_part(part)
            flat.extend(part.parts if type(part) is type(self) else (part,))
        if len(flat) < 2:
            raise PredicateError(f"{type(self).__name__} needs at least two parts")
        object.__setattr__(self, "parts", tuple(flat))

    def to_json(self) -> dict:
        return {"type": type(self).__name__.lower(), "parts": [p.to_json() for p in self.parts]}

    def _leaves(self) -> Iterator[Predicate]:
        for part in self.parts:
            yield from part._leaves()


@_node
class And(_Junction):
    """``p1 AND p2 AND ...`` (Kleene). Build with :func:`and_`."""

    def _text(self) -> str:
        return " AND ".join(f"({p._text()})" if isinstance(p, Or) else p._text() for p in self.parts)





@_node
class Or(_Junction):
    """``p1 OR p2 OR ...`` (Kleene). Build with :func:`or_`."""

    def _text(self) -> str:
        return " OR ".join(p._text() for p in self.parts)





def and_(*parts: Predicate) -> Predicate:
    """The conjunction of ``parts``: MATCH_ALL dropped, nested ANDs merged, a single part as is."""
    kept = [p for p in parts if not isinstance(p, MatchAll)]
    if not kept:
        return MATCH_ALL
    return kept[0] if len(kept) == 1 else And(tuple(kept))


def or_(*parts: Predicate) -> Predicate:
    """The disjunction of ``parts`` (at least one): MATCH_ALL if any part is, a single part as is."""
    if not parts:
        raise PredicateError("or_() needs at least one part")
    if any(isinstance(p, MatchAll) for p in parts):
        return MATCH_ALL
    return parts[0] if len(parts) == 1 else Or(tuple(parts))


def not_(part: Predicate) -> Predicate:
    """The negation of ``part``, folding NOT NOT and the negatable atoms (BETWEEN, IN, IS NULL, CONTAINS)."""
    if isinstance(part, Not):
        return part.part
    if isinstance(part, (Between, In, IsNull, Contains)):
        return dataclasses.replace(part, negated=not part.negated)
    return Not(part)


def not_true(part: Predicate) -> Predicate:
    """A predicate true exactly where ``part`` is false or null (what ``NOT part`` misses on nulls).

    Raises PredicateError for MATCH_ALL, which is never false or null.
    """
    return _not_true(part, False)


def _not_true(part: Predicate, flip: bool) -> Predicate:
    """Where ``part`` is not true (flip=False) or not false (flip=True)."""
    if isinstance(part, MatchAll):
        raise PredicateError("MATCH_ALL is never false or null")
    if isinstance(part, Not):
        return _not_true(part.part, not flip)
    if isinstance(part, _Junction):
        combine = or_ if isinstance(part, And) != flip else and_
        return combine(*(_not_true(p, flip) for p in part.parts))
    side = part if flip else not_(part)
    return side if isinstance(part, IsNull) else or_(side, IsNull(part.column))  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ JSON


def _field(obj: Mapping, key: str, types: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise PredicateError(f"predicate JSON {obj.get('type')!r} lacks {key!r}")
    value = obj[key]
    if not isinstance(value, types):
        raise PredicateError(f"predicate JSON field {key!r} has a bad value {value!r}")
    return value


def from_json(obj: Mapping) -> Predicate:
    """The predicate that :meth:`Predicate.to_json` turned into ``obj``."""
    return _from_json(obj, 0)


def _from_json(obj: Mapping, depth: int) -> Predicate:
    # The parser's deepest tree nests OR in AND in each of MAX_DEPTH parentheses.
    if depth > 2 * MAX_DEPTH + 2:
        raise PredicateError("predicate JSON is nested too deeply")
    if not isinstance(obj, Mapping):
        raise PredicateError(f"predicate JSON must be an object, got {obj!r}")
    kind = obj.get("type")
    if kind == "match_all":
        return MATCH_ALL
    if kind == "compare":
        return Compare(_field(obj, "column", str), _field(obj, "op", str), _field(obj, "value", object))
    if kind == "between":
        return Between(_field(obj, "column", str), _field(obj, "low", object), _field(obj, "high", object),
                       _field(obj, "negated", bool))
    if kind == "in":
        return In(_field(obj, "column", str), tuple(_field(obj, "values", list)), _field(obj, "negated", bool))
    if kind == "is_null":
        return IsNull(_field(obj, "column", str), _field(obj, "negated", bool))
    if kind == "bool_column":
        return BoolColumn(_field(obj, "column", str))
    if kind == "contains":
        return Contains(_field(obj, "column", str), tuple(_field(obj, "values", list)), _field(obj, "mode", str),
                        _field(obj, "negated", bool))
    if kind == "not":
        return Not(_from_json(_field(obj, "part", Mapping), depth + 1))
    if kind in ("and", "or"):
        parts = tuple(_from_json(p, depth + 1) for p in _field(obj, "parts", list))
        return And(parts) if kind == "and" else Or(parts)
    raise PredicateError(f"unknown predicate JSON type {kind!r}")


# ------------------------------------------------------------------------------ validation


_LIST_KINDS = {"string list": "string", "integer list": "integer"}


def kind_of(t: pa.DataType) -> str | None:
    """What predicates see in a column of type ``t``: string, bool, integer, float, temporal, string list,
    integer list, or None (untestable)."""
    if pa.types.is_dictionary(t):
        return kind_of(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        element = kind_of(t.value_type)
        return element + " list" if element in ("string", "integer") else None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "temporal"
    return None


def _column_kind(schema: pa.Schema, column: str) -> str:
    count = schema.names.count(column)
    if count == 0:
        raise PredicateError(f"unknown column '{column}'; available columns: {', '.join(schema.names)}",
                             expected="one of: " + ", ".join(schema.names))
    if count > 1:
        raise PredicateError(f"column '{column}' appears {count} times in the schema")
    t = schema.field(column).type
    kind = kind_of(t)
    if kind is None:
        raise PredicateError(f"column '{column}' has type {t}, which predicates cannot test")
    return kind


@functools.lru_cache(maxsize=4096)
def parse_instant(text: str) -> dt.datetime | None:
    """An ISO date/datetime as a naive datetime (UTC if it had an offset), or None."""
    try:
        instant = dt.datetime.fromisoformat(text)
        if instant.tzinfo is not None:
            instant = instant.astimezone(dt.timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        return None
    return instant


_EXPECTED_LITERAL = {"string": "a string", "bool": "TRUE or FALSE", "integer": "a number",
                     "float": "a number", "temporal": "an ISO date/datetime string or an integer"}


def _check_literal(column: str, t: pa.DataType, kind: str, value: Value) -> None:
    if kind in _LIST_KINDS:
        raise PredicateError(f"column '{column}' has type {t}; a list column is tested with CONTAINS, "
                             "CONTAINS ALL, CONTAINS ANY or IS NULL", expected="CONTAINS")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        "string": isinstance(value, str),
        "bool": isinstance(value, bool),
        "integer": number,
        "float": number,
        "temporal": (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, str) and parse_instant(value) is not None),
    }[kind]
    if not ok:
        raise PredicateError(f"column '{column}' has type {t}; cannot compare it with {literal_text(value)}",
                             expected=_EXPECTED_LITERAL[kind])
