"""Tests for beamvec.index.predicate: parsing, printing, JSON, validation, evaluation, boxes."""

from __future__ import annotations

import datetime as dt
import json
import math
import operator

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamvec.index.predicate import (
    MATCH_ALL,
    MAX_DEPTH,
    And,
    Between,
    BoolColumn,
    Compare,
    In,
    IsNull,
    MatchAll,
    Not,
    Or,
    Predicate,
    PredicateError,
    and_,
    from_json,
    not_,
    not_true,
    or_,
)
from beamvec.index.boxes import Box, may_match
from beamvec.index.parser import parse

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------- fixed schema

SCHEMA = pa.schema(
    [
        ("category", pa.string()),
        ("year", pa.int64()),
        ("score", pa.float64()),
        ("explicit", pa.bool_()),
        ("ts", pa.timestamp("us")),
        ("my col", pa.int8()),  # needs quoting; int8 makes many literals out of range
        ("and", pa.string()),  # a keyword as a column name
    ]
)
STRING_COLUMNS = ("category", "and")
DATA = {
    "category": ["rock", "jazz", "it's", "", "Ünï"],
    "and": ["rock", "x", "'", '"'],
    "year": [-3, -1, 0, 1, 2, 3],
    "score": [-1.5, 0.0, -0.0, 0.5, 2.0, math.nan],
    "explicit": [True, False],
    "ts": [
        dt.datetime(2019, 12, 31, 23, 59, 59),
        dt.datetime(2020, 1, 1),
        dt.datetime(2020, 1, 1, 0, 0, 0, 1),
        dt.datetime(2020, 1, 1, 12),
    ],
    "my col": [-128, -1, 0, 1, 127],
}
EPOCH = dt.datetime(1970, 1, 1)


def micros(t: dt.datetime) -> int:
    return (t - EPOCH) // dt.timedelta(microseconds=1)


LITERALS = {
    "category": st.sampled_from(DATA["category"] + ["pop", "2020-01-01"]),
    "and": st.sampled_from(DATA["and"] + ["y"]),
    "year": st.one_of(st.integers(-4, 4), st.sampled_from([-1.5, 0.5, 2.0, 3.0, 10**30])),
    "score": st.one_of(st.sampled_from([-1.5, 0.0, -0.0, 0.5, 1.0, 2.0, 1e300]), st.integers(-2, 3)),
    "explicit": st.booleans(),
    "ts": st.one_of(
        st.sampled_from(
            [
                "2020-01-01",
                "2020-01-01T00:00:00",
                "2020-01-01 12:00",
                "2020-01-01T01:00:00+01:00",
                "2019-12-31T23:59:59.5",
                "2020-01-01T00:00:00.000001",
            ]
        ),
        st.sampled_from([micros(t) + d for t in DATA["ts"] for d in (-1, 0, 1)]),
    ),
    "my col": st.one_of(
        st.sampled_from(DATA["my col"]), st.sampled_from([128, -129, 2**70, -(2**70), 0.5, -127.5, 126.9, 1000.0])
    ),
}


def rows_strategy(max_size: int = 10) -> st.SearchStrategy[list[dict]]:
    row = st.fixed_dictionaries({c: st.one_of(st.none(), st.sampled_from(v)) for c, v in DATA.items()})
    return st.lists(row, max_size=max_size)


def make_table(rows: list[dict]) -> pa.Table:
    return pa.table({f.name: pa.array([r[f.name] for r in rows], f.type) for f in SCHEMA}, schema=SCHEMA)


@st.composite
def variants(draw, rows: list[dict]) -> pa.Table | pa.RecordBatch:
    """The same rows as a plain table, a record batch, dictionary-encoded or multi-chunk."""
    table = make_table(rows)
    kind = draw(st.sampled_from(["plain", "batch", "dictionary", "chunks"]))
    if kind == "batch":
        return pa.RecordBatch.from_arrays([c.combine_chunks() for c in table.columns], schema=SCHEMA)
    if kind == "dictionary":
        for name in STRING_COLUMNS:
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, table.column(i).dictionary_encode())
    if kind in ("dictionary", "chunks"):
        cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=3)))
        pieces = [table.slice(a, b - a) for a, b in zip([0] + cuts, cuts + [len(rows)])]
        table = pa.concat_tables(pieces) if pieces else pa.Table.from_batches([], table.schema)
    return table


# --------------------------------------------------------------------------- AST strategies


def atoms_strategy(columns: st.SearchStrategy[str], literal, bool_column) -> st.SearchStrategy[Predicate]:
    @st.composite
    def atom(draw) -> Predicate:
        column = draw(columns)
        value = literal(column)
        kinds = ["compare", "between", "in", "is_null"] + (["bool"] if bool_column(column) else [])
        kind = draw(st.sampled_from(kinds))
        negated = draw(st.booleans())
        if kind == "compare":
            return Compare(column, draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="])), draw(value))
        if kind == "between":
            return Between(column, draw(value), draw(value), negated)
        if kind == "in":
            return In(column, tuple(draw(st.lists(value, min_size=1, max_size=4))), negated)
        if kind == "is_null":
            return IsNull(column, negated)
        return BoolColumn(column)

    return atom()


def predicates_strategy(atoms: st.SearchStrategy[Predicate], max_leaves: int = 8) -> st.SearchStrategy[Predicate]:
    return st.recursive(
        atoms,
        lambda inner: st.one_of(
            st.lists(inner, min_size=2, max_size=3).map(lambda ps: and_(*ps)),
            st.lists(inner, min_size=2, max_size=3).map(lambda ps: or_(*ps)),
            inner.map(Not),
        ),
        max_leaves=max_leaves,
    )


ANY_LITERAL = st.one_of(
    st.text(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans()
)
ANY_COLUMN = st.one_of(
    st.sampled_from(SCHEMA.names + ["x", "Select", "NULL", "not", 'weird "name"', "a-b", "1abc", " ", "_"]),
    st.text(min_size=1),
)
ANY_ATOMS = atoms_strategy(ANY_COLUMN, lambda c: ANY_LITERAL, lambda c: True)
ANY_PREDICATES = st.one_of(st.just(MATCH_ALL), predicates_strategy(ANY_ATOMS))

TYPED_ATOMS = atoms_strategy(st.sampled_from(SCHEMA.names), LITERALS.__getitem__, lambda c: c == "explicit")
TYPED_PREDICATES = predicates_strategy(TYPED_ATOMS)


# ------------------------------------------------------- a naive, row-by-row SQL evaluator

OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def comparable(column: str, x, value):
    """x and the literal as a pair Python compares the way SQL would."""
    if column == "ts" and isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return x, parsed
    if column == "ts":
        return micros(x), value
    return x, value


def naive(p: Predicate, row: dict) -> bool | None:
    if isinstance(p, MatchAll):
        return True
    if isinstance(p, Not):
        inner = naive(p.part, row)
        return None if inner is None else not inner
    if isinstance(p, (And, Or)):
        values = [naive(q, row) for q in p.parts]
        decisive = isinstance(p, Or)  # True decides an OR, False an AND
        if decisive in values:
            return decisive
        return None if None in values else not decisive
    x = row[p.column]
    if isinstance(x, float) and math.isnan(x):
        x = None  # NaN counts as null
    if isinstance(p, IsNull):
        return (x is None) != p.negated
    if x is None:
        return None
    if isinstance(p, BoolColumn):
        return x
    if isinstance(p, Compare):
        return OPS[p.op](*comparable(p.column, x, p.value))
    if isinstance(p, Between):
        x_low, low = comparable(p.column, x, p.low)
        x_high, high = comparable(p.column, x, p.high)
        return (low <= x_low and x_high <= high) != p.negated
    if isinstance(p, In):
        return any(operator.eq(*comparable(p.column, x, v)) for v in p.values) != p.negated
    raise AssertionError(p)


# ------------------------------------------------------------------------------- parsing

a, b, c = BoolColumn("a"), BoolColumn("b"), BoolColumn("c")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a OR b AND c", Or((a, And((b, c))))),
        ("a AND b OR c", Or((And((a, b)), c))),
        ("(a OR b) AND c", And((Or((a, b)), c))),
        ("NOT a AND b", And((Not(a), b))),
        ("NOT (a AND b)", Not(And((a, b)))),
        ("NOT NOT a", Not(Not(a))),
        ("NOT x = 1 OR b", Or((Not(Compare("x", "=", 1)), b))),
        ("a AND (b AND c)", And((a, b, c))),
        ("x BETWEEN 1 AND 2 AND a", And((Between("x", 1, 2), a))),
        ("x not between -1 AND 2.5", Between("x", -1, 2.5, True)),
        ("x nOt In (1, 'a', TRUE)", In("x", (1, "a", True), True)),
        ("x is NULL or X Is Not null", Or((IsNull("x"), IsNull("X", True)))),
        ("x <> 1", Compare("x", "!=", 1)),
        ("x!=1", Compare("x", "!=", 1)),
        ("x>=-.5e1", Compare("x", ">=", -5.0)),
        ("x = 1E3", Compare("x", "=", 1000.0)),
        ("x = 10", Compare("x", "=", 10)),
        ("x = true", Compare("x", "=", True)),
        ("\"my col\" = 'it''s'", Compare("my col", "=", "it's")),
        ('"a""b" < \'\'', Compare('a"b', "<", "")),
        ('"and" AND "NOT"', And((BoolColumn("and"), BoolColumn("NOT")))),
        ("category IN ('rock', 'jazz') AND year >= 2000 AND NOT explicit",
         And((In("category", ("rock", "jazz")), Compare("year", ">=", 2000), Not(BoolColumn("explicit"))))),
        ("((((a))))", a),
        ("ts >= '2020-01-01'", Compare("ts", ">=", "2020-01-01")),
    ],
)
def test_parse_examples(text: str, expected: Predicate) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t "])
def test_blank_is_match_all(text) -> None:
    assert parse(text) is MATCH_ALL
    assert MATCH_ALL.to_text() == "" and str(MATCH_ALL) == ""


def test_literal_types_are_distinct() -> None:
    one, one_float, true = parse("x = 1"), parse("x = 1.0"), parse("x = TRUE")
    assert one != one_float and one != true and one_float != true
    assert len({one, one_float, true}) == 3
    assert isinstance(one_float.value, float) and isinstance(true.value, bool)
    assert In("x", (1, 2)) != In("x", (1, 2.0))


@pytest.mark.parametrize(
    "predicate, text",
    [
        (and_(or_(a, b), c), "(a OR b) AND c"),
        (or_(and_(a, b), c), "a AND b OR c"),
        (Not(and_(a, b)), "NOT (a AND b)"),
        (Not(Compare("x", "<>", 1)), "NOT x != 1"),
        (BoolColumn("and"), '"and"'),
        (BoolColumn("my col"), '"my col"'),
        (Compare("x", "=", "it's"), "x = 'it''s'"),
        (Compare("x", "=", 1e16), "x = 1e+16"),
        (Compare("x", "=", -0.5), "x = -0.5"),
        (In("x", (1, False), True), "x NOT IN (1, FALSE)"),
        (IsNull("x", True), "x IS NOT NULL"),
    ],
)
def test_to_text_examples(predicate: Predicate, text: str) -> None:
    assert predicate.to_text() == text == str(predicate)
    assert parse(text) == predicate


def test_factories_and_constructors() -> None:
    assert and_() is MATCH_ALL
    assert and_(MATCH_ALL, a) == a
    assert and_(and_(a, b), c) == And((a, b, c)) == And((And((a, b)), c))
    assert or_(a, or_(b, c)) == Or((a, b, c))
    assert or_(a, MATCH_ALL) is MATCH_ALL
    assert or_(a) == a
    assert not_(not_(a)) == a and not_(a) == Not(a)
    assert not_(In("x", (1,))) == In("x", (1,), True)
    assert not_(IsNull("x", True)) == IsNull("x")
    for bad in (
        lambda: And((a,)),
        lambda: Or((a, MATCH_ALL)),
        lambda: Not(MATCH_ALL),
        lambda: not_(MATCH_ALL),
        lambda: or_(),
        lambda: Compare("x", "=", math.nan),
        lambda: Compare("x", "=", math.inf),
        lambda: Compare("x", "==", 1),
        lambda: Compare("", "=", 1),
        lambda: Compare("x", "=", None),
        lambda: In("x", ()),
        lambda: In("x", "ab"),
    ):
        with pytest.raises(PredicateError):
            bad()


def test_atoms_and_columns() -> None:
    p = parse("x = 1 OR NOT (b AND x = 1) OR y IS NULL AND b")
    assert p.atoms() == (Compare("x", "=", 1), b, IsNull("y"))
    assert p.columns() == frozenset({"x", "b", "y"})
    assert MATCH_ALL.atoms() == () and MATCH_ALL.columns() == frozenset()


@SETTINGS
@given(ANY_PREDICATES)
def test_text_and_json_round_trip(p: Predicate) -> None:
    text = p.to_text()
    assert parse(text) == p
    assert parse(text).to_text() == text
    assert hash(parse(text)) == hash(p)
    assert from_json(json.loads(json.dumps(p.to_json()))) == p


# ------------------------------------------------------------------------ malformed text


@pytest.mark.parametrize(
    "text, position",
    [
        ("year >=", 7),
        ("year >= 2000 AND", 16),
        ("year >= 2000 AND )", 17),
        ("category IN ()", 13),
        ("category IN ('a',)", 17),
        ("category IN 'a'", 12),
        ("(a = 1", 6),
        ("a = 'unterminated", 4),
        ('"unterminated = 1', 0),
        ('"" = 1', 0),
        ("a == 1", 2),
        ("a BETWEEN 1", 11),
        ("a BETWEEN 1 OR 2", 12),
        ("1 = a", 0),
        ("'a' = a", 0),
        ("a = NULL", 4),
        ("a IS 5", 5),
        ("a NOT LIKE 'x'", 6),
        ("a = 1 b", 6),
        ("a = -", 4),
        ("a @ 1", 2),
        ("a = 1e999", 4),
        ("NOT", 3),
        (")", 0),
        ("a = 1)", 5),
        ("AND a", 0),
        ("a = b", 4),
    ],
)
def test_malformed_positions(text: str, position: int) -> None:
    with pytest.raises(PredicateError) as info:
        parse(text)
    assert info.value.position == position
    assert str(info.value).startswith(f"at position {position}: ")


def test_error_message_names_expectation() -> None:
    with pytest.raises(PredicateError) as info:
        parse("year >= )")
    assert str(info.value) == "at position 8: expected a value after '>=', found ')'"
    assert info.value.expected == "a value"


TOKENS = [
    "(", ")", ",", "AND", "or", "Not", "BETWEEN", "in", "IS", "NULL", "TRUE", "false", "=", "!=", "<>",
    "<", "<=", ">", ">=", "==", "x", "year", '"my col"', '"a""b"', "'s'", "'it''s'", "'", '"', "1", "-2",
    "3.5", "1e3", "-", ".", "@", "\n",
]


@SETTINGS
@given(
    st.one_of(
        st.text(),
        st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join),
        st.lists(st.sampled_from(TOKENS), max_size=12).map("".join),
    )
)
def test_fuzz_only_predicate_errors(text: str) -> None:
    try:
        p = parse(text)
    except PredicateError as e:
        assert isinstance(e.position, int) and 0 <= e.position <= len(text)
        return
    assert parse(p.to_text()) == p


def test_nesting_limit() -> None:
    assert parse("(" * MAX_DEPTH + "x" + ")" * MAX_DEPTH) == BoolColumn("x")
    for text in (
        "(" * (MAX_DEPTH + 1) + "x" + ")" * (MAX_DEPTH + 1),
        "NOT " * (MAX_DEPTH + 1) + "x",
        "(" * 100_000,
        "(NOT " * 5000 + "x",
    ):
        with pytest.raises(PredicateError) as info:
            parse(text)
        assert info.value.position is not None


def test_from_json_rejects_bad_input() -> None:
    deep: dict = {"type": "bool_column", "column": "x"}
    for _ in range(10_000):
        deep = {"type": "not", "part": deep}
    for bad in (
        deep,
        {"type": "compare", "column": "x", "op": "=", "value": [1]},
        {"type": "compare", "column": "x", "op": "="},
        {"type": "in", "column": "x", "values": [], "negated": False},
        {"type": "and", "parts": [{"type": "match_all"}, {"type": "bool_column", "column": "x"}]},
        {"type": "nope"},
        [],
    ):
        with pytest.raises(PredicateError):
            from_json(bad)


# ------------------------------------------------------------------------------ validation


def test_unknown_column_is_named() -> None:
    with pytest.raises(PredicateError) as info:
        parse("year > 1 AND nope = 2").validate(SCHEMA)
    assert "'nope'" in str(info.value) and "category" in str(info.value)
    assert info.value.position is None


@pytest.mark.parametrize(
    "text",
    ["year = 'abc'", "category = 5", "category IN ('a', 1)", "explicit = 1", "year", "score = TRUE",
     "ts >= 'not a date'", "ts >= 1.5", "ts BETWEEN '2020-01-01' AND 'x'", "score BETWEEN 1 AND '2'"],
)
def test_type_mismatch(text: str) -> None:
    with pytest.raises(PredicateError):
        parse(text).validate(SCHEMA)


@pytest.mark.parametrize(
    "text",
    ["year = 1.5", "score = 1", "explicit < TRUE", "ts >= '2020-01-01'", "ts = 5", "category IS NULL",
     "\"my col\" > 1000", "ts < '2020-01-01T00:00:00+05:00'"],
)
def test_type_ok(text: str) -> None:
    parse(text).validate(SCHEMA)


def test_evaluate_validates_first() -> None:
    table = pa.table({"year": ["2000"], "scores": pa.array([[1.5]], pa.list_(pa.float64()))})
    for text in ("year > 5", "year = '2000' AND year > 5", "scores IS NULL", "missing"):
        with pytest.raises(PredicateError):
            parse(text).evaluate(table)


# ------------------------------------------------------------------------------ evaluation


@SETTINGS
@given(st.data(), rows_strategy(), TYPED_PREDICATES)
def test_evaluate_matches_naive(data, rows: list[dict], p: Predicate) -> None:
    table = data.draw(variants(rows))
    expected = [naive(p, row) is True for row in rows]
    result = p.evaluate(table)
    assert result.dtype == bool and result.shape == (len(rows),)
    assert result.tolist() == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), TYPED_PREDICATES)
def test_evaluate_matches_naive_over_many_chunks(seed: int, p: Predicate) -> None:
    """Tables longer than the kernel's chunk, in sorted runs, so whole chunks decide an AND or an OR."""
    rng = np.random.default_rng(seed)
    rows = [{c: (None if rng.random() < 0.1 else v[rng.integers(len(v))]) for c, v in DATA.items()}
            for _ in range(1500)]
    rows.sort(key=lambda r: [(r[c] is None, str(r[c])) for c in ("year", "category")])
    assert p.evaluate(make_table(rows)).tolist() == [naive(p, row) is True for row in rows]


@SETTINGS
@given(st.data(), rows_strategy(), TYPED_PREDICATES)
def test_not_true_is_the_complement(data, rows: list[dict], p: Predicate) -> None:
    table = data.draw(variants(rows))
    assert (not_true(p).evaluate(table) == ~p.evaluate(table)).all()
    assert (not_true(not_true(p)).evaluate(table) == p.evaluate(table)).all()


def test_not_true_examples() -> None:
    assert not_true(parse("x = 1")) == parse("NOT x = 1 OR x IS NULL")
    assert not_true(parse("x IS NULL")) == parse("x IS NOT NULL")
    assert not_true(parse("NOT (a AND x IN (1))")) == parse("(a OR a IS NULL) AND (x IN (1) OR x IS NULL)")
    with pytest.raises(PredicateError):
        not_true(MATCH_ALL)


def test_null_semantics() -> None:
    table = pa.table({"x": pa.array([1, None, 3]), "f": pa.array([1.0, math.nan, None])})
    assert parse("x NOT IN (5)").evaluate(table).tolist() == [True, False, True]
    assert parse("NOT x = 1").evaluate(table).tolist() == [False, False, True]
    assert parse("NOT (x = 1 OR x > 2)").evaluate(table).tolist() == [False, False, False]
    assert parse("x = 1 OR x IS NULL").evaluate(table).tolist() == [True, True, False]
    assert parse("NOT x NOT BETWEEN 0 AND 2").evaluate(table).tolist() == [True, False, False]
    assert parse("f IS NULL").evaluate(table).tolist() == [False, True, True]
    assert parse("f != 2").evaluate(table).tolist() == [True, False, False]


def test_empty_and_all_null_tables() -> None:
    empty = pa.Table.from_batches([], SCHEMA)
    assert parse("year > 1 OR NOT explicit").evaluate(empty).shape == (0,)
    assert MATCH_ALL.evaluate(empty).shape == (0,)
    nulls = pa.table({"x": pa.array([None, None], pa.int64()), "s": pa.array([None, None], pa.string())})
    assert parse("x > 1 OR s IN ('a') OR NOT x = 2").evaluate(nulls).tolist() == [False, False]
    assert parse("x IS NULL AND s IS NULL").evaluate(nulls).tolist() == [True, True]
    assert MATCH_ALL.evaluate(nulls).tolist() == [True, True]


def test_exact_comparisons_across_types() -> None:
    table = pa.table(
        {
            "i8": pa.array([-128, 0, 1, 127], pa.int8()),
            "u64": pa.array([0, 5, 2**64 - 1, 1], pa.uint64()),
            "f": pa.array([2.0**53, 2.0**53 + 2, -1.0, 0.5]),
        }
    )
    zeros = pa.table({"z": pa.array([-0.0, 0.0, 1.5], pa.float32())})
    cases = {
        "i8 < 1000": [True] * 4,
        "i8 > -1000": [True] * 4,
        "i8 = 1000 OR i8 = -129": [False] * 4,
        "i8 != 1000": [True] * 4,
        "i8 < 0.5": [True, True, False, False],
        "i8 >= 0.5": [False, False, True, True],
        "i8 = 1.0": [False, False, True, False],
        "i8 IN (1.5, 127.0, 300, 0)": [False, True, False, True],
        "u64 > -1": [True] * 4,
        "u64 = 18446744073709551615": [False, False, True, False],
        "f = 9007199254740993": [False] * 4,
        "f < 9007199254740993": [True, False, True, True],
        "f > 9007199254740993": [False, True, False, False],
        "f IN (9007199254740993, 1)": [False] * 4,
        "f < 1e300": [True] * 4,
        "f > -1": [True, True, False, True],
        "z IN (0)": [True, True, False],
        "z IN (-0.0, 1.5)": [True, True, True],
        "z = -0.0": [True, True, False],
        f"f < 1{'0' * 330}": [True] * 4,
    }
    for text, expected in cases.items():
        data = zeros if text.startswith("z") else table
        assert parse(text).evaluate(data).tolist() == expected, text


def test_temporal_columns() -> None:
    day = dt.date(2020, 1, 1)
    table = pa.table(
        {
            "d": pa.array([day, dt.date(2020, 1, 2), None], pa.date32()),
            "utc": pa.array([dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 1, 1), None], pa.timestamp("ms", "UTC")),
            "ns": pa.array([0, 1, 1000], pa.timestamp("ns")),
            "s": pa.array([0, 1, 2], pa.timestamp("s")),
        }
    )
    cases = {
        "d < '2020-01-01T12:00'": [True, False, False],
        "d > '2020-01-01T12:00'": [False, True, False],
        "d = '2020-01-01T12:00'": [False, False, False],
        "d = '2020-01-02'": [False, True, False],
        "d IN ('2020-01-01', '2020-01-02T01:00')": [True, False, False],
        "d = 18262": [True, False, False],
        "utc = '2020-01-01T02:00:00+01:00'": [False, True, False],
        "utc < '2020-01-01T00:30'": [True, False, False],
        "utc BETWEEN '2020-01-01' AND '2020-01-01T01:00Z'": [True, True, False],
        "ns >= '1970-01-01T00:00:00.000001'": [False, False, True],
        "ns = 1": [False, True, False],
        "s < '1970-01-01T00:00:01.5'": [True, True, False],
        "s = '1970-01-01T00:00:01.5'": [False, False, False],
        "s NOT IN ('1970-01-01T00:00:01.5', '1970-01-01T00:00:02')": [True, True, False],
    }
    for text, expected in cases.items():
        assert parse(text).evaluate(table).tolist() == expected, text


# ------------------------------------------------------------------------------------ boxes


def box_of(*steps: tuple[str, bool]) -> Box:
    box = Box.everything()
    for text, holds in steps:
        box = box.restrict(parse(text), holds)
    return box


def test_may_match_precision() -> None:
    rock = box_of(("category IN ('rock')", True))
    assert not may_match(parse("category = 'jazz'"), rock)
    assert may_match(parse("category = 'rock'"), rock)
    assert not may_match(parse("category IS NULL"), rock)
    since_2000 = box_of(("year >= 2000", True))
    assert not may_match(parse("year < 1990"), since_2000)
    assert may_match(parse("year < 2005"), since_2000)
    assert not may_match(parse("year < 2000 OR year IS NULL"), since_2000)
    assert may_match(parse("NOT year < 2000 AND year = 2000"), since_2000)
    not_null = box_of(("x IS NOT NULL", True))
    assert not may_match(parse("x IS NULL"), not_null)
    assert may_match(parse("x IS NULL"), box_of(("x IS NOT NULL", False)))
    # NOT (x < 5) leaves x >= 5 or null
    at_least_5 = box_of(("x < 5", False))
    assert not may_match(parse("x < 3"), at_least_5)
    assert may_match(parse("x IS NULL"), at_least_5)
    assert may_match(parse("x BETWEEN 5 AND 5"), at_least_5)
    assert not may_match(parse("x NOT BETWEEN 0 AND 100 AND x < 0"), box_of(("x BETWEEN 0 AND 100", True)))
    excluded = box_of(("x IN (1, 2)", False), ("x BETWEEN 1 AND 2", True))
    assert not may_match(parse("x = 1 OR x = 2"), excluded)
    assert may_match(parse("x = 1.5"), excluded)
    assert not may_match(parse("NOT explicit"), box_of(("explicit", True)))
    assert may_match(parse("explicit IS NULL"), box_of(("explicit", False)))


def test_may_match_tracks_null_under_not() -> None:
    only_null = box_of(("x IS NULL", True))
    assert not may_match(parse("NOT x = 1"), only_null)
    assert not may_match(parse("x != 1"), only_null)
    assert may_match(parse("x IS NULL"), only_null)
    assert may_match(parse("NOT (x > 3 AND y = 1)"), only_null)
    assert not may_match(parse("NOT (x > 3 OR y = 1)"), only_null)


def test_empty_boxes() -> None:
    empty = box_of(("year < 5", True), ("year > 6", True))
    assert empty.is_empty()
    assert not may_match(MATCH_ALL, empty)
    assert not box_of(("year < 5", True), ("year > 6", False)).is_empty()
    assert box_of(("x IS NULL", True), ("x IS NULL", False)).is_empty()
    assert box_of(("x = 'a'", True), ("x IN ('a', 'b')", False)).is_empty()
    assert box_of(("x >= 2", True), ("x <= 2", True), ("x != 2", True)).is_empty()
    assert not Box.everything().is_empty()


def test_iso_strings_are_not_ordered_as_text_only() -> None:
    # On a string column these are different and ordered as text; on a timestamp column equal.
    box = box_of(("s > '2020-01-01'", True))
    table = pa.table({"s": ["2020-01-01 00:00:00"]})
    pred = parse("s <= '2020-01-01 00:00:00'")
    assert (box.contains(table) & pred.evaluate(table)).all()
    assert may_match(pred, box)
    ts_box = box_of(("t = '2020-01-01'", True))
    assert may_match(parse("t = '2020-01-01T00:00:00'"), ts_box)
    assert not may_match(parse("t = '2021-01-01'"), ts_box)


def test_describe_and_as_predicate() -> None:
    box = box_of(("category IN ('rock')", True), ("year >= 2000", True))
    assert box.describe() == "category IN ('rock') AND year >= 2000"
    assert Box.everything().describe() == "everything"
    assert Box.everything().as_predicate() is MATCH_ALL
    assert box_of(("x < 5", False)).describe() == "x >= 5 OR x IS NULL"
    assert box_of(("x < 5", False), ("y", True)).describe() == "(x >= 5 OR x IS NULL) AND y IN (TRUE)"
    assert box_of(("x BETWEEN 1 AND 3", True), ("x = 2", False)).describe() == "x BETWEEN 1 AND 3 AND x NOT IN (2)"
    assert box_of(("x >= 1", True), ("x <= 1", True)).describe() == "x IN (1)"
    assert box_of(("x NOT IN (1, 10)", True), ("x < 5", True)).describe() == "x < 5 AND x NOT IN (1)"
    assert box_of(("x IN (1, 10)", True), ("x < 5", True)).describe() == "x IN (1)"
    assert box_of(("x > 5", True), ("x >= 5", True), ("x <= 9", True), ("x < 9", True)).describe() == "x > 5 AND x < 9"
    assert box_of(("x <= 3", True), ("x < 7", True), ("x >= -3", True)).describe() == "x BETWEEN -3 AND 3"
    # an ISO string may equal a differently written one (on a timestamp column), so the range stays
    ambiguous = box_of(("s = '2020-01-01'", True), ("s > '2020-01-01 00:00:00'", True))
    assert ambiguous.describe() == "s IN ('2020-01-01') AND s > '2020-01-01 00:00:00'"
    kept = box_of(("s NOT IN ('2020-01-01', '2019-01-01')", True), ("s > '2020-01-01 00:00:00'", True))
    assert kept.describe() == "s > '2020-01-01 00:00:00' AND s NOT IN ('2020-01-01')"


@SETTINGS
@given(
    st.data(),
    rows_strategy(),
    st.lists(st.tuples(st.one_of(TYPED_ATOMS, TYPED_ATOMS, TYPED_PREDICATES), st.booleans()), max_size=5),
    TYPED_PREDICATES,
)
def test_may_match_is_sound(data, rows: list[dict], steps, p: Predicate) -> None:
    table = data.draw(variants(rows))
    box, inside = Box.everything(), np.ones(len(rows), dtype=bool)
    for step, holds in steps:
        truth = step.evaluate(table)
        inside &= truth if holds else ~truth
        box = box.restrict(step, holds)
        contained = box.contains(table)
        assert not (inside & ~contained).any(), f"restrict lost rows: {box.describe()}"
    assert Box.from_json(json.loads(json.dumps(box.to_json()))) == box
    if box.is_empty():
        assert not box.contains(table).any()
    if (box.contains(table) & p.evaluate(table)).any():
        assert may_match(p, box), f"{p} can hold in {box.describe()}"
