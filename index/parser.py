"""The predicate language's parser: text -> :class:`beamvec.index.predicate.Predicate`.

A tokenizer and a recursive-descent parser (never ``eval``) for the syntax that
:mod:`beamvec.index.predicate` documents; errors are :class:`PredicateError` with the
position and what was expected.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, NamedTuple, NoReturn

from beamvec.index.predicate import (
    _KEYWORDS, _TOKEN, MATCH_ALL, MAX_DEPTH, And, Between, BoolColumn, Compare, Contains, In, IsNull, Not, Or, Predicate,
    PredicateError, Value, quote_identifier,
)


class _Token(NamedTuple):
    kind: str  # num str ident kw op ( ) , end
    value: Any
    pos: int
    text: str


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of text"
    text = token.text if len(token.text) <= 24 else token.text[:21] + "..."
    return f"'{text}'" if token.kind != "str" else text


def _quoted(text: str, start: int, quote: str, what: str) -> tuple[str, int]:
    """The content of a quoted token at ``start`` (doubling escapes the quote) and the end offset."""
    parts, i = [], start + 1
    while True:
        j = text.find(quote, i)
        if j < 0:
            raise PredicateError(f"unterminated {what}", start, f"a closing {quote}")
        parts.append(text[i:j])
        if text.startswith(quote, j + 1):
            parts.append(quote)
            i = j + 2
        else:
            return "".join(parts), j + 1


def _number(text: str, pos: int) -> int | float:
    if re.search(r"[.eE]", text):
        value = float(text)
        if not math.isfinite(value):
            raise PredicateError(f"number {text} is out of range", pos, "a finite number")
        return value
    try:
        return int(text)
    except ValueError:  # longer than Python's int conversion limit
        raise PredicateError("integer literal is too long", pos) from None


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        char = text[pos]
        if char in "'\"":
            value, end = _quoted(text, pos, char, "string" if char == "'" else "quoted identifier")
            if char == '"' and not value:
                raise PredicateError("empty quoted identifier", pos, "a column name")
            tokens.append(_Token("str" if char == "'" else "ident", value, pos, text[pos:end]))
            pos = end
            continue
        match = _TOKEN.match(text, pos)
        if match is None:
            if char.isalnum():  # a letter or digit outside ASCII, within or starting a name
                start, end = pos, pos
                while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
                    start -= 1
                while end < len(text) and (text[end].isalnum() or text[end] == "_"):
                    end += 1
                name = text[start:end]
                raise PredicateError(f"unexpected character {char!r}: quote a column name that is not plain "
                                     f"ASCII: {quote_identifier(name)}", pos, "a quoted identifier")
            raise PredicateError(f"unexpected character {char!r}", pos)
        kind, word = match.lastgroup, match.group()
        if kind == "num":
            tokens.append(_Token("num", _number(word, pos), pos, word))
        elif kind == "word":
            upper = word.upper()
            tokens.append(_Token("kw", upper, pos, word) if upper in _KEYWORDS else _Token("ident", word, pos, word))
        elif kind == "op":
            if word == "==":
                raise PredicateError("'==' is not an operator; use '='", pos, "'='")
            tokens.append(_Token("op", "!=" if word == "<>" else word, pos, word))
        elif kind == "punct":
            tokens.append(_Token(word, word, pos, word))
        pos = match.end()
    tokens.append(_Token("end", None, len(text), ""))
    return tokens


class _Parser:
    """Recursive descent over the token list; each nesting level costs three stack frames."""

    def __init__(self, tokens: list[_Token]):
        self.tokens = tokens
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def at_keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "kw" and token.value == word

    def fail(self, expected: str, after: str | None = None, hint: str = "") -> NoReturn:
        token = self.peek()
        where = f" after {after}" if after else ""
        raise PredicateError(f"expected {expected}{where}, found {_describe(token)}{hint}", token.pos, expected)

    def parse(self) -> Predicate:
        predicate = self.disjunction(0, None)
        if self.peek().kind != "end":
            self.fail("AND, OR or end of text")
        return predicate

    def disjunction(self, depth: int, after: str | None) -> Predicate:
        parts = [self.conjunction(depth, after)]
        while self.at_keyword("OR"):
            self.take()
            parts.append(self.conjunction(depth, "'OR'"))
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def conjunction(self, depth: int, after: str | None) -> Predicate:
        parts = [self.unary(depth, after)]
        while self.at_keyword("AND"):
            self.take()
            parts.append(self.unary(depth, "'AND'"))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def deeper(self, depth: int) -> int:
        if depth >= MAX_DEPTH:
            raise PredicateError(f"nested deeper than {MAX_DEPTH} levels", self.peek().pos)
        return depth + 1

    def unary(self, depth: int, after: str | None) -> Predicate:
        nots = 0
        while self.at_keyword("NOT"):
            depth = self.deeper(depth)
            self.take()
            nots, after = nots + 1, "'NOT'"
        token = self.peek()
        if token.kind == "(":
            inner_depth = self.deeper(depth)
            self.take()
            predicate = self.disjunction(inner_depth, "'('")
            if self.peek().kind != ")":
                self.fail(f"')' to close the '(' at position {token.pos}")
            self.take()
        elif token.kind == "ident":
            self.take()
            predicate = self.condition(token)
        else:
            self.fail("a column name, '(' or NOT", after)
        for _ in range(nots):
            predicate = Not(predicate)
        return predicate

    def condition(self, column: _Token) -> Predicate:
        name, token = column.value, self.peek()
        if token.kind == "op":
            self.take()
            return Compare(name, token.value, self.value(f"'{token.text}'"))
        negated = self.at_keyword("NOT")
        if negated:
            self.take()
            if not (self.at_keyword("BETWEEN") or self.at_keyword("IN") or self.at_keyword("CONTAINS")):
                self.fail("BETWEEN, IN or CONTAINS", "'NOT'")
        if self.at_keyword("BETWEEN"):
            self.take()
            low_token = self.peek()
            low = self.value("'BETWEEN'")
            if not self.at_keyword("AND"):
                self.fail("AND", f"'BETWEEN {low_token.text}'")
            self.take()
            return Between(name, low, self.value("'AND'"), negated)
        if self.at_keyword("IN"):
            self.take()
            return In(name, self.values("'IN'"), negated)
        if self.at_keyword("CONTAINS"):
            self.take()
            token = self.peek()
            mode = token.value.lower() if token.kind == "ident" and token.value.upper() in ("ALL", "ANY") else None
            if mode is None:
                if token.kind not in ("str", "num"):
                    self.fail("a string, an integer, ALL or ANY", "'CONTAINS'")
                values = (self.element("'CONTAINS'"),)
            else:
                self.take()
                values = self.values(f"'{token.text}'", self.element)
            return Contains(name, values, mode or "all", negated)
        if self.at_keyword("IS"):
            self.take()
            is_not = self.at_keyword("NOT")
            if is_not:
                self.take()
            if not self.at_keyword("NULL"):
                self.fail("NULL", "'IS NOT'" if is_not else "'IS'")
            self.take()
            return IsNull(name, is_not)
        return BoolColumn(name)

    def values(self, after: str, item=None) -> tuple:
        """A parenthesised, comma-separated list of values (of ``item``, default :meth:`value`)."""
        item = item or self.value
        if self.peek().kind != "(":
            self.fail("'('", after)
        self.take()
        values = [item("'('")]
        while self.peek().kind == ",":
            self.take()
            values.append(item("','"))
        if self.peek().kind != ")":
            self.fail("',' or ')'")
        self.take()
        return tuple(values)

    def element(self, after: str) -> Value:
        """A value a list can hold: a string or an integer."""
        token = self.peek()
        if token.kind == "str" or (token.kind == "num" and isinstance(token.value, int)):
            self.take()
            return token.value
        self.fail("a string or an integer", after)

    def value(self, after: str) -> Value:
        token = self.peek()
        if token.kind in ("str", "num") or (token.kind == "kw" and token.value in ("TRUE", "FALSE")):
            self.take()
            return token.value == "TRUE" if token.kind == "kw" else token.value
        hint = " (use IS NULL or IS NOT NULL to test for null)" if token.kind == "kw" and token.value == "NULL" else ""
        self.fail("a value", after, hint)


def parse(text: str | None) -> Predicate:
    """Parse filter text; None, empty or blank text gives :data:`MATCH_ALL`.

    Raises :class:`PredicateError` (with ``position``) for anything malformed.
    """
    if text is None:
        return MATCH_ALL
    if not isinstance(text, str):
        raise PredicateError(f"predicate text must be a string, got {type(text).__name__}")
    tokens = _tokenize(text)
    if len(tokens) == 1:
        return MATCH_ALL
    try:
        return _Parser(tokens).parse()
    except RecursionError:
        raise PredicateError("predicate is nested too deeply for the stack", 0) from None


@functools.lru_cache(maxsize=1 << 16)
def parse_shared(text: str | None) -> Predicate:
    """:func:`parse`, once per text: equal texts give the same object, so caches keyed by predicate
    hit on identity (see :func:`clear_reasoning_cache` and ``Index.clear_caches``)."""
    return parse(text)
