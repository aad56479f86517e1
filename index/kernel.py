"""A small instruction set for predicates over encoded columns, and the numba kernel that runs it.

A predicate is compiled (:func:`beamvec.index.columns.compile_predicate`) into postfix
instructions (:class:`Builder`): its atoms, with their literals already in the columns'
encoded domain (string codes, integer counts), then NOT, AND and OR. The kernel runs the
program over rows lo..hi-1 a chunk at a time, each value one byte of SQL three-valued logic
(false 0 < unknown 1 < true 2, so AND is min, OR is max and NOT is 2 - x), and returns where
the predicate is true, with the number of such rows and the first and last of them: one call
per predicate and table, no intermediate arrays, the GIL released.

The kernel reads the columns from a :class:`Layout`: integer-like columns (integers,
timestamps, string codes, bools) as rows of one int64 matrix, floats as rows of one float64
matrix, each with a row of validity. uint64 values are shifted by -2**63 (order kept).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numba
import numpy as np

_CMP = {"=": 0, "!=": 1, "<": 2, "<=": 3, ">": 4, ">=": 5}
_CMP_INT, _CMP_FLOAT, _IN_INT, _IN_FLOAT, _NULL, _NOT, _AND, _OR, _CONST, _IN_TABLE, _SKIP = range(11)
_CHUNK = 512
# Integer IN lists whose keys span at most this many values are tested by a lookup table.
_TABLE_SPAN = 4096
_NO_TABLES = np.zeros(0, np.uint8)
_FALSE, _UNKNOWN, _TRUE = 0, 1, 2


class Layout:
    """The columns of ``num_rows`` rows as the kernel reads them, added on first use (:meth:`slot`)."""

    def __init__(self, num_rows: int):
        self.num_rows = num_rows
        self.ints = np.zeros((0, num_rows), np.int64)
        self.int_valid = np.zeros((0, num_rows), np.bool_)
        self.floats = np.zeros((0, num_rows), np.float64)
        self.float_valid = np.zeros((0, num_rows), np.bool_)
        self.int_nulls = np.zeros(0, np.bool_)  # per row: whether the column has a null
        self.float_nulls = np.zeros(0, np.bool_)
        self._slots: dict[str, tuple[bool, int, int]] = {}
        self._lock = threading.Lock()

    def slot(self, name: str, column) -> tuple[bool, int, int]:
        """(whether a float row, its row, the shift added to its values) of the encoded ``column``.
        Safe from several threads (a worker's threads share an index's columns)."""
        found = self._slots.get(name)
        if found is not None:
            return found
        with self._lock:
            return self._add(name, column)

    def _add(self, name: str, column) -> tuple[bool, int, int]:
        found = self._slots.get(name)
        if found is None:
            valid = np.ones(self.num_rows, np.bool_) if column.valid is None else column.valid
            if column.kind == "float":
                self.floats = np.vstack([self.floats, column.values[None, :]])
                self.float_valid = np.vstack([self.float_valid, valid[None, :]])
                self.float_nulls = np.append(self.float_nulls, column.valid is not None)
                found = (True, len(self.floats) - 1, 0)
            else:
                values, shift = column.values, 0
                if values.dtype == np.uint64:
                    values, shift = (values ^ np.uint64(1 << 63)).view(np.int64), -(1 << 63)
                self.ints = np.vstack([self.ints, values.astype(np.int64)[None, :]])
                self.int_valid = np.vstack([self.int_valid, valid[None, :]])
                self.int_nulls = np.append(self.int_nulls, column.valid is not None)
                found = (False, len(self.ints) - 1, shift)
            self._slots[name] = found
        return found


class Program(NamedTuple):
    """A compiled predicate: instructions (opcode, row, a, b, c), their float literals, sorted IN lists
    (integer and float), IN lookup tables, and the stack depth it needs."""

    code: np.ndarray
    floats: np.ndarray
    int_pool: np.ndarray
    float_pool: np.ndarray
    tables: np.ndarray
    depth: int


class Builder:
    """Assembles a :class:`Program` in postfix order: push atoms, then combine the values on top of the stack."""

    def __init__(self):
        self._code: list[tuple[int, int, int, int, int]] = []
        self._floats: list[float] = []
        self._int_pool: list[int] = []
        self._float_pool: list[float] = []
        self._tables: list[np.ndarray] = []
        self._table_size = 0
        self._height = self._depth = 0

    def _emit(self, op: int, row: int = 0, a: int = 0, b: int = 0, c: int = 0, f: float = 0.0,
              pushes: int = 0) -> None:
        self._code.append((op, row, a, b, c))
        self._floats.append(f)
        self._height += pushes
        self._depth = max(self._depth, self._height)

    def compare(self, is_float: bool, row: int, op: str, operand: int | float) -> None:
        """Push ``x op operand`` for the values of a layout row (unknown where null)."""
        if is_float:
            self._emit(_CMP_FLOAT, row, _CMP[op], f=float(operand), pushes=1)
        else:
            self._emit(_CMP_INT, row, _CMP[op], int(operand), pushes=1)

    def contains(self, is_float: bool, row: int, keys) -> None:
        """Push ``x IN keys`` (sorted, distinct; unknown where null)."""
        if not is_float and len(keys) and int(keys[-1]) - int(keys[0]) < _TABLE_SPAN:
            low = int(keys[0])
            table = np.zeros(int(keys[-1]) - low + 1, np.uint8)
            table[np.asarray(keys, np.int64) - low] = 1
            self._emit(_IN_TABLE, row, self._table_size, len(table), low, pushes=1)
            self._tables.append(table)
            self._table_size += len(table)
            return
        pool = self._float_pool if is_float else self._int_pool
        start = len(pool)
        pool.extend(float(k) for k in keys) if is_float else pool.extend(int(k) for k in keys)
        self._emit(_IN_FLOAT if is_float else _IN_INT, row, start, len(pool) - start, pushes=1)

    def is_null(self, is_float: bool, row: int, negated: bool) -> None:
        """Push ``x IS [NOT] NULL`` (never unknown)."""
        self._emit(_NULL, row, int(is_float), int(negated), pushes=1)

    def constant(self, truth: bool) -> None:
        self._emit(_CONST, 0, _TRUE if truth else _FALSE, pushes=1)

    def negate(self) -> None:
        self._emit(_NOT)

    def guard(self, conjunction: bool) -> int:
        """Before the right operand of an AND (``conjunction``) or OR: where the left one already decides
        it over a chunk (all false, or all true), the kernel skips to after :meth:`combine`."""
        self._emit(_SKIP, 0, 0, _FALSE if conjunction else _TRUE)
        return len(self._code) - 1

    def combine(self, conjunction: bool, guard: int | None = None) -> None:
        """Replace the two values on top by their AND (``conjunction``) or OR; ``guard`` from :meth:`guard`."""
        self._emit(_AND if conjunction else _OR, pushes=-1)
        if guard is not None:
            op, row, _, b, c = self._code[guard]
            self._code[guard] = (op, row, len(self._code) - 1 - guard, b, c)

    def build(self) -> "Program":
        if self._height != 1:
            raise ValueError(f"a program must leave one value, this one leaves {self._height}")
        tables = np.concatenate(self._tables) if self._tables else _NO_TABLES
        return Program(np.asarray(self._code, np.int64).reshape(-1, 5), np.asarray(self._floats, np.float64),
                       np.asarray(self._int_pool, np.int64), np.asarray(self._float_pool, np.float64), tables,
                       self._depth)


def run(program: Program, layout: Layout, lo: int, hi: int, truth: bool = True) -> tuple[np.ndarray, int, int, int]:
    """Over rows lo..hi-1: where the program is true (``truth``), or false; with how many such rows,
    the first and one past the last of them (relative to lo; 0, 0 when none)."""
    out = np.empty(max(0, hi - lo), np.bool_)
    count, first, last = _run(program.code, program.floats, program.int_pool, program.float_pool, program.tables,
                              layout.ints, layout.int_valid, layout.int_nulls, layout.floats, layout.float_valid,
                              layout.float_nulls, lo, hi, program.depth, _TRUE if truth else _FALSE, out)
    return out, count, first, last


@numba.njit(nogil=True, cache=True)
def _compare(values, start, width, cmp, x, s):  # pragma: no cover - compiled
    v = values[start:start + width]
    if cmp == 0:
        for j in range(width):
            s[j] = (v[j] == x) * 2
    elif cmp == 1:
        for j in range(width):
            s[j] = (v[j] != x) * 2
    elif cmp == 2:
        for j in range(width):
            s[j] = (v[j] < x) * 2
    elif cmp == 3:
        for j in range(width):
            s[j] = (v[j] <= x) * 2
    elif cmp == 4:
        for j in range(width):
            s[j] = (v[j] > x) * 2
    else:
        for j in range(width):
            s[j] = (v[j] >= x) * 2


@numba.njit(nogil=True, cache=True)
def _contains(values, start, width, pool, s):  # pragma: no cover - compiled
    v = values[start:start + width]
    n = len(pool)
    for j in range(width):
        x = v[j]
        a, b = 0, n  # binary search: the first key >= x
        while a < b:
            m = (a + b) >> 1
            if pool[m] < x:
                a = m + 1
            else:
                b = m
        s[j] = 2 if a < n and pool[a] == x else 0


@numba.njit(nogil=True, cache=True)
def _in_table(values, start, width, table, low, s):  # pragma: no cover - compiled
    v = values[start:start + width]
    top = low + (len(table) - 1)  # the largest key: no overflow
    for j in range(width):
        x = v[j]
        s[j] = 2 * table[x - low] if low <= x <= top else 0


@numba.njit(nogil=True, cache=True)
def _unknown_where_null(valid, start, width, s):  # pragma: no cover - compiled
    ok = valid[start:start + width]
    for j in range(width):
        s[j] = s[j] if ok[j] else _UNKNOWN


@numba.njit(nogil=True, cache=True)
def _all(s, width, value):  # pragma: no cover - compiled
    for j in range(width):
        if s[j] != value:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _run(code, fargs, ipool, fpool, tpool, ints, ivalid, inull, floats, fvalid, fnull, lo, hi, depth, want,
         out):  # pragma: no cover - compiled
    stack = np.empty((max(depth, 1), _CHUNK), np.uint8)
    for start in range(lo, hi, _CHUNK):
        width = min(_CHUNK, hi - start)
        top = 0
        i = 0
        while i < code.shape[0]:
            op, row, a, b, c = code[i, 0], code[i, 1], code[i, 2], code[i, 3], code[i, 4]
            i += 1
            if op == 5:  # NOT
                s = stack[top - 1]
                for j in range(width):
                    s[j] = 2 - s[j]
            elif op == 6 or op == 7:  # AND, OR
                x, y = stack[top - 2], stack[top - 1]
                if op == 6:
                    for j in range(width):
                        x[j] = min(x[j], y[j])
                else:
                    for j in range(width):
                        x[j] = max(x[j], y[j])
                top -= 1
            elif op == 10:  # the value on top decides the AND (all false) or OR (all true) that follows: skip
                if _all(stack[top - 1], width, b):
                    i += a
            else:
                s = stack[top]
                top += 1
                if op == 0 or op == 2 or op == 9:
                    values = ints[row]
                    if op == 0:
                        _compare(values, start, width, a, b, s)
                    elif op == 2:
                        _contains(values, start, width, ipool[a:a + b], s)
                    else:  # IN by the table tpool[a:a + b] of the keys from c on
                        _in_table(values, start, width, tpool[a:a + b], c, s)
                    if inull[row]:
                        _unknown_where_null(ivalid[row], start, width, s)
                elif op == 1 or op == 3:
                    if op == 1:
                        _compare(floats[row], start, width, a, fargs[i - 1], s)
                    else:
                        _contains(floats[row], start, width, fpool[a:a + b], s)
                    if fnull[row]:
                        _unknown_where_null(fvalid[row], start, width, s)
                elif op == 4:  # IS [NOT] NULL: never unknown
                    valid = fvalid[row] if a == 1 else ivalid[row]
                    for j in range(width):
                        s[j] = 0 if valid[start + j] != (b == 1) else 2
                else:  # constant
                    for j in range(width):
                        s[j] = a
        s = stack[0]
        o = out[start - lo:start - lo + width]
        for j in range(width):
            o[j] = s[j] == want
    count = 0
    for j in range(len(out)):
        count += out[j]
    first, last = 0, 0
    if count:
        while not out[first]:
            first += 1
        last = len(out)
        while not out[last - 1]:
            last -= 1
    return count, first, last
