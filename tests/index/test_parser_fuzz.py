"""Fuzzing the predicate parser: any text either parses or raises PredicateError (never IndexError,
RecursionError, TypeError...), and whatever parses prints and serialises back to itself."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamvec.index.predicate import (
    MAX_DEPTH, And, Between, BoolColumn, Compare, In, IsNull, Not, Or, Predicate, PredicateError, from_json,
)
from beamvec.index.parser import parse

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

TOKENS = ["AND", "OR", "NOT", "BETWEEN", "IN", "IS", "NULL", "TRUE", "FALSE", "and", "Not", "(", ")", ",", "=", "!=",
          "<>", "<", "<=", ">", ">=", "==", "=<", "!", "'a'", "''", "'it''s'", "'", '"', '"col"', '"a ""b"""', '""',
          '"größe"', "x", "y_1", "_", "größe", "é", "1", "-2", "3.5", ".5", "1e3", "-1e-3", "1e999", "1.", "-", "+",
          "9" * 5000, "0x1F", " ", "  ", "\t", "\n", "\x00", ";", "*", "{x}", "%", "\\"]


def round_trips(p: Predicate) -> None:
    assert parse(p.to_text()) == p, p.to_text()
    assert from_json(json.loads(json.dumps(p.to_json()))) == p
    assert hash(parse(p.to_text())) == hash(p)


def parses_or_refuses(text: str) -> None:
    try:
        p = parse(text)
    except PredicateError:
        return
    round_trips(p)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_predicate_error(text):
    parses_or_refuses(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join))
def test_token_soup_parses_or_raises_predicate_error(text):
    parses_or_refuses(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_token_soup_without_spaces_parses_or_raises_predicate_error(text):
    parses_or_refuses(text)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.integers(0, MAX_DEPTH + 300), st.sampled_from(["(", "NOT ", "NOT (", "(x = 1 OR y = 2 AND ",
                                                         "(x = 1 AND y = 2 OR ", "NOT (x OR NOT "]),
       st.booleans())
def test_deep_nesting_parses_or_raises_predicate_error(depth, opener, closed):
    closer = ")" * opener.count("(")
    text = opener * depth + "z = 3" + (closer * depth if closed else "")
    parses_or_refuses(text)


def test_nesting_beyond_the_limit_is_a_predicate_error():
    for text in ["(" * 500 + "x = 1" + ")" * 500, "NOT " * 5000 + "x", "(" * 100_000, "(x = 1 OR " * 1000 + "y"]:
        try:
            parse(text)
        except PredicateError as e:
            assert "nested" in str(e) or "expected" in str(e), e
        else:
            raise AssertionError(f"{text[:40]}... parsed")


# ------------------------------------------------------------------------------- valid predicates

names = st.one_of(st.sampled_from(["x", "year", "AND", "in", "my col", 'q"uote', "größe", "_", "é1"]),
                  st.text(min_size=1, max_size=8))
values = st.one_of(st.text(max_size=8), st.integers(-10**30, 10**30), st.booleans(),
                   st.floats(allow_nan=False, allow_infinity=False))
atoms = st.one_of(
    st.builds(Compare, names, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), values),
    st.builds(Between, names, values, values, st.booleans()),
    st.builds(In, names, st.lists(values, min_size=1, max_size=4).map(tuple), st.booleans()),
    st.builds(IsNull, names, st.booleans()),
    st.builds(BoolColumn, names),
)
predicates = st.recursive(atoms, lambda inner: st.one_of(
    st.builds(Not, inner),
    st.builds(lambda a, b, rest: And((a, b, *rest)), inner, inner, st.lists(inner, max_size=2)),
    st.builds(lambda a, b, rest: Or((a, b, *rest)), inner, inner, st.lists(inner, max_size=2)),
), max_leaves=12)


@FUZZ
@given(predicates)
def test_generated_predicates_round_trip(p):
    round_trips(p)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.integers(1, MAX_DEPTH), st.sampled_from(["not", "and-or", "paren-or"]))
def test_the_deepest_accepted_predicates_round_trip(depth, shape):
    """Trees as deep as the parser accepts print, hash and serialise without running out of stack."""
    p: Predicate = Compare("x", "=", 1)
    for i in range(depth):
        if shape == "not":
            p = Not(p)
        elif shape == "and-or":
            p = Or((Compare("y", "=", i), And((Compare("z", "<", i), p))))
        else:
            p = And((Compare("y", "=", i), Or((Compare("z", "<", i), p))))
    round_trips(p)
