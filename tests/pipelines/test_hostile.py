"""Hostile and broken input to the command line, as a table: each case writes small inputs, runs a
`beamvec` command in-process and checks what a user should get: either a short error (exit code 2,
``beamvec <command>: <message>`` naming the file, row, column or id, no traceback), or a job that
finishes with the bad rows as dead letters (with their reasons), count lines that reconcile, and
answers equal to the exact brute-force answer."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec.index import Index
from beamvec.index.parser import parse
from beamvec.pipelines import cli

D = 8
VEC = pa.list_(pa.float32())
SMALL = ["--min-partition-rows", "10", "--max-partition-rows", "40", "--shard-spec", "Brute"]


# ------------------------------------------------------------------------------------------ inputs


def vectors(n: int, seed: int = 0, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def items(n: int, seed: int = 0, start: int = 0, **columns) -> dict:
    """Columns of ``n`` items (ids ``start``...), with attributes cat, year, price, flag and two
    whose names need quotes; ``columns`` replaces or adds columns."""
    ids = np.arange(start, start + n)
    out = {
        "id": pa.array(ids, pa.int64()),
        "vector": pa.array(list(vectors(n, seed)), VEC),
        "cat": pa.array([f"c{i % 4}" for i in ids]),
        "year": pa.array(2000 + ids % 20, pa.int64()),
        "price": pa.array((ids % 13) / 2.0),
        "flag": pa.array(ids % 3 == 0),
        "prix €": pa.array((ids % 7) / 7.0),
        "größe": pa.array(["groß" if i % 2 else "klein" for i in ids]),
    }
    out.update(columns)
    return out


def write(path: pathlib.Path, columns: dict | pa.Table) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(columns if isinstance(columns, pa.Table) else pa.table(columns), path)
    return path


def with_rows(column: list, rows: dict) -> list:
    """``column`` with ``rows`` (position -> value) replaced."""
    column = list(column)
    for i, value in rows.items():
        column[i] = value
    return column


def queries(vecs, predicates=None, ks=None, ids=None, vector_type=VEC) -> dict:
    n = len(vecs)
    out = {"query_id": pa.array(list(range(n)) if ids is None else ids),
           "vector": pa.array([None if v is None else list(v) for v in vecs], vector_type),
           "predicate": pa.array(predicates if predicates is not None else [None] * n, pa.string())}
    if ks is not None:
        out["k"] = pa.array(ks, pa.int64())
    return out


# ------------------------------------------------------------------------------------- outcomes


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def dead_letters(root: pathlib.Path) -> pa.Table | None:
    """Every dead letter written under ``root`` (a query's output, or an index: ``**/rejected*``)."""
    files = sorted({*root.glob("**/rejected*/**/*.parquet"), *root.glob("**/rejected*.parquet")})
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def results(out: pathlib.Path) -> dict:
    """query_id -> [neighbour ids], from ``out/results-*.parquet``."""
    answers = {}
    for f in sorted(out.glob("results-*.parquet")):
        for row in pq.read_table(f).to_pylist():
            assert row["query_id"] not in answers, f"query {row['query_id']!r} answered twice"
            answers[row["query_id"]] = [n["id"] for n in row["neighbors"]]
    return answers


def brute_force(table: pa.Table, vector, predicate: str | None, k: int) -> list:
    """The exact dot-product top-k of ``table``'s items under ``predicate``."""
    matrix = np.asarray(table.column("vector").to_pylist(), np.float32)
    mask = parse(predicate).evaluate(table.drop_columns(["vector"])) if predicate else np.ones(len(matrix), bool)
    scores = matrix @ np.asarray(vector, np.float32)
    candidates = np.flatnonzero(mask)
    best = candidates[np.argsort(-scores[candidates], kind="stable")][:k]
    return [table.column("id")[int(i)].as_py() for i in best]


def indexed_rows(index: pathlib.Path) -> pa.Table:
    """The rows (id and attributes) an index holds, over all its shards."""
    opened = Index.open(str(index))
    return pa.concat_tables([opened.shard(o).attributes for o in range(len(opened.manifest.partitions))],
                            promote_options="permissive")


@dataclasses.dataclass(frozen=True)
class Case:
    """``setup(tmp_path, base)`` writes the inputs and returns the command line (``base``: the shared
    index and its items). Expected: ``error`` fragments in a short stderr message with exit code 2;
    or exit code 0, the reconciling count ``line``, ``rejected`` {id as text (or None): reason fragment,
    or (count, reason fragment) under the key "*n:..."} and ``check(tmp_path, base)``."""

    name: str
    setup: Callable
    error: tuple[str, ...] = ()
    line: str | None = None
    rejected: dict = dataclasses.field(default_factory=dict)
    check: Callable | None = None


def build_argv(tmp, *files, extra=("--partitioner", "single")):
    pattern = str(files[0]) if len(files) == 1 else str(tmp / "in" / "*.parquet")
    return ["build", "--items", pattern, "--output", str(tmp / "idx"), *SMALL, *extra]


def query_argv(tmp, base, queries_path, *extra):
    return ["query", "--index", str(base.index), "--queries", str(queries_path), "--output", str(tmp / "out"),
            *extra]


def answers_match(table_of, *, default_k=10):
    """A check: every answered query of ``tmp/q.parquet`` (or its several files) equals brute force
    over the items ``table_of(tmp, base)`` gives."""
    def check(tmp, base):
        qfiles = sorted((tmp / "q").glob("*.parquet")) if (tmp / "q").is_dir() else [tmp / "q.parquet"]
        table = table_of(tmp, base)
        found = results(tmp / "out")
        assert found, "no query answered"
        seen = set()
        for q in pa.concat_tables([pq.read_table(f) for f in qfiles], promote_options="permissive").to_pylist():
            if q["query_id"] in found and q["query_id"] not in seen:  # a repeated id: its first copy is answered
                seen.add(q["query_id"])
                k = q.get("k") or default_k
                assert found[q["query_id"]] == brute_force(table, q["vector"], q["predicate"], k), q["query_id"]
    return check


def base_items(tmp, base):
    return base.items


# ---------------------------------------------------------------------------------------- cases

BIG = "x" * (1 << 20)

CASES = [
    # --- build: vectors
    Case("build: a minority of rows of the wrong dimension",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(
             60, vector=pa.array(with_rows(list(vectors(60)), {7: [1.0] * 7, 30: [1.0] * 9}), VEC))), extra=()),
         line="items: read 60 = indexed 58 + rejected 2",
         rejected={"7": "vector has dimension 7, expected 8", "30": "vector has dimension 9, expected 8"}),
    Case("build: the FIRST row has the wrong dimension (the majority decides)",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(
             60, vector=pa.array(with_rows(list(vectors(60)), {0: [1.0] * 5}), VEC)))),
         line="items: read 60 = indexed 59 + rejected 1", rejected={"0": "vector has dimension 5, expected 8"},
         check=lambda tmp, base: Index.open(str(tmp / "idx")).dimension == D),
    Case("build: the first rows have null or empty vectors",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(
             40, vector=pa.array(with_rows(list(vectors(40)), {0: None, 1: [], 2: [], 20: None}), VEC)))),
         line="items: read 40 = indexed 36 + rejected 4",
         rejected={"0": "missing vector", "1": "vector has dimension 0, expected 8", "20": "missing vector"}),
    Case("build: NaN and infinite vectors, float64 that overflows float32",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(40, vector=pa.array(with_rows(
             [list(map(float, v)) for v in vectors(40)],
             {3: [float("nan")] * 8, 4: [float("inf")] + [0.0] * 7, 5: [1.0] * 7 + [-float("inf")],
              6: [1e300] * 8}), pa.list_(pa.float64()))))),
         line="items: read 40 = indexed 36 + rejected 4",
         rejected={str(i): "NaN or infinite" for i in (3, 4, 5, 6)}),
    Case("build: a null element in a vector",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(30, vector=pa.array(with_rows(
             list(vectors(30)), {9: [1.0] * 7 + [None]}), VEC)))),
         line="items: read 30 = indexed 29 + rejected 1", rejected={"9": "null element"}),
    Case("build: zero vectors under --metric cosine",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(30, vector=pa.array(with_rows(
             list(vectors(30)), {2: [0.0] * 8, 11: [0.0] * 8}), VEC))), extra=("--partitioner", "single",
                                                                                "--metric", "cosine")),
         line="items: read 30 = indexed 28 + rejected 2", rejected={"2": "zero vector", "11": "zero vector"}),
    Case("build: a vector column of strings",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(
             10, vector=pa.array([["1"] * 8] * 10)))),
         error=("items.parquet", "column 'vector' has type list<element: string>")),
    # --- build: ids
    Case("build: null ids",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(30, id=pa.array(with_rows(
             list(range(30)), {0: None, 17: None}), pa.int64())))),
         line="items: read 30 = indexed 28 + rejected 2", rejected={"*2": "missing id"}),
    Case("build: duplicate ids within one file (the first copy is kept)",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(30, id=pa.array(with_rows(
             list(range(30)), {20: 5, 21: 9, 22: 9}), pa.int64()))), extra=()),
         line="items: read 30 = indexed 27 + rejected 3", rejected={"5": "duplicate id", "9": "duplicate id"},
         check=lambda tmp, base: sorted(indexed_rows(tmp / "idx").column("id").to_pylist())
         == sorted(set(range(30)) - {20, 21, 22})),
    Case("build: the same ids in two files, one partition (the first file's copy is kept)",
         lambda tmp, base: build_argv(tmp, write(tmp / "in" / "a.parquet", items(50, cat=pa.array(["a"] * 50))),
                                      write(tmp / "in" / "b.parquet", items(20, 5, 40, cat=pa.array(["b"] * 20)))),
         line="items: read 70 = indexed 60 + rejected 10", rejected={str(i): "duplicate id" for i in range(40, 50)},
         check=lambda tmp, base: {r["id"]: r["cat"] for r in indexed_rows(tmp / "idx").to_pylist()}
         == {i: "a" if i < 50 else "b" for i in range(60)}),
    Case("build: the same ids in two files, in different partitions",
         lambda tmp, base: build_argv(tmp, write(tmp / "in" / "a.parquet", items(50, cat=pa.array(["a"] * 50))),
                                      write(tmp / "in" / "b.parquet", items(20, 5, 40, cat=pa.array(["b"] * 20))),
                                      extra=("--partitioner", "attribute:cat")),
         line="items: read 70 = indexed 60 + rejected 10", rejected={str(i): "duplicate id" for i in range(40, 50)}),
    Case("build: integer ids in one file, string ids in another",
         lambda tmp, base: build_argv(tmp, write(tmp / "in" / "a.parquet", items(20)),
                                      write(tmp / "in" / "b.parquet", items(20, 1, id=pa.array(
                                          [f"s{i}" for i in range(20)])))),
         error=("column 'id'", "a.parquet", "int64", "b.parquet", "string")),
    # --- build: attributes
    Case("build: an attribute changes type between files",
         lambda tmp, base: build_argv(tmp, write(tmp / "in" / "a.parquet", items(20)),
                                      write(tmp / "in" / "b.parquet", items(20, 1, 20, year=pa.array(
                                          [str(y) for y in range(20)])))),
         error=("column 'year'", "a.parquet", "int64", "b.parquet", "string")),
    Case("build: an attribute is int32 in one file and int64 in another (widened)",
         lambda tmp, base: build_argv(tmp, write(tmp / "in" / "a.parquet", items(20)),
                                      write(tmp / "in" / "b.parquet", items(20, 1, 20, year=pa.array(
                                          range(20), pa.int32()))), extra=("--partitioner", "hash")),
         line="items: read 40 = indexed 40 + rejected 0",
         check=lambda tmp, base: indexed_rows(tmp / "idx").schema.field("year").type == pa.int64()
         and cli.main(["query", "--index", str(tmp / "idx"), "--output", str(tmp / "out"), "--queries", str(write(
             tmp / "q.parquet", queries(vectors(2, 9), ["year >= 2005", None]))), "--k", "50"]) == 0
         and len(results(tmp / "out")[0]) == 15 and len(results(tmp / "out")[1]) == 40),
    Case("build: a struct attribute",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(10, meta=pa.array(
             [{"a": i} for i in range(10)])))),
         error=("items.parquet", "attribute column 'meta' has unsupported type struct")),
    Case("build: a map attribute",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(10, tags=pa.array(
             [[("k", i)] for i in range(10)], pa.map_(pa.string(), pa.int64()))))),
         error=("items.parquet", "attribute column 'tags' has unsupported type map")),
    Case("build: a 1 MB string attribute",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", items(30, note=pa.array(
             with_rows([None] * 30, {3: BIG, 4: BIG + "y", 5: "short"}))))),
         line="items: read 30 = indexed 30 + rejected 0",
         check=lambda tmp, base: indexed_rows(tmp / "idx").column("note").to_pylist().count(BIG) == 1),
    # --- build: files
    Case("build: an empty file (0 rows)",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", pa.table(items(0)))),
         error=("items.parquet", "no items")),
    Case("build: an empty file first, rows in the next",
         lambda tmp, base: build_argv(tmp, write(tmp / "in" / "a.parquet", items(0)),
                                      write(tmp / "in" / "b.parquet", items(30))),
         line="items: read 30 = indexed 30 + rejected 0"),
    Case("build: a file that is not Parquet",
         lambda tmp, base: build_argv(tmp, _bytes(tmp / "items.parquet", b"id,vector\n1,2\n" * 50)),
         error=("items.parquet", "Parquet")),
    Case("build: a truncated second file",
         lambda tmp, base: build_argv(tmp, write(tmp / "in" / "a.parquet", items(20)),
                                      _truncated(write(tmp / "in" / "b.parquet", items(20, 1, 20)))),
         error=("b.parquet", "Parquet")),
    Case("build: no such file",
         lambda tmp, base: build_argv(tmp, tmp / "nope.parquet"),
         error=("nope.parquet",)),
    Case("build: a directory reads its Parquet files",
         lambda tmp, base: ["build", "--items", str(_two_files(tmp)), "--output", str(tmp / "idx"), *SMALL,
                            "--partitioner", "single"],
         line="items: read 40 = indexed 40 + rejected 0"),
    Case("build: an empty directory",
         lambda tmp, base: build_argv(tmp, _mkdir(tmp / "empty")),
         error=("empty", "no file")),
    Case("build: no id column",
         lambda tmp, base: build_argv(tmp, write(tmp / "items.parquet", {
             k: v for k, v in items(10).items() if k != "id"})),
         error=("items.parquet", "no column id")),
    # --- query
    Case("query: unknown column, type mismatch, malformed, 500-deep parentheses",
         lambda tmp, base: query_argv(tmp, base, write(tmp / "q.parquet", queries(vectors(6, 9), [
             "nope = 1", "year = 'abc'", "cat = ", "(" * 500 + "cat = 'c1'" + ")" * 500, "cat = 'c1'",
             "year BETWEEN 2003 AND 2010 AND NOT flag"]))),
         line="queries: read 6 = answered 2 + rejected 4",
         rejected={"0": "unknown column 'nope'", "1": "cannot compare it with 'abc'", "2": "does not parse",
                   "3": "nested deeper than 200 levels"},
         check=answers_match(base_items)),
    Case("query: a 10 kB predicate",
         lambda tmp, base: query_argv(tmp, base, write(tmp / "q.parquet", queries(vectors(2, 9), [
             "cat IN ('c1', " + ", ".join(f"'x{i}'" for i in range(1500)) + ")",
             " OR ".join(f"year = {y}" for y in range(2005, 2005 + 900))]))),
         line="queries: read 2 = answered 2 + rejected 0", check=answers_match(base_items)),
    Case("query: column names that need quotes, and a bare non-ASCII name",
         lambda tmp, base: query_argv(tmp, base, write(tmp / "q.parquet", queries(vectors(3, 9), [
             '"prix €" > 0.5', '"größe" = \'groß\' AND "prix €" <= 0.5', "größe = 'groß'"]))),
         line="queries: read 3 = answered 2 + rejected 1",
         rejected={"2": 'quote a column name that is not plain ASCII: "größe"'}, check=answers_match(base_items)),
    Case("query: --k 0", lambda tmp, base: query_argv(tmp, base, tmp / "q.parquet", "--k", "0"),
         error=("--k", "must be at least 1, got 0")),
    Case("query: --k -3", lambda tmp, base: query_argv(tmp, base, tmp / "q.parquet", "--k", "-3"),
         error=("--k", "must be at least 1, got -3")),
    Case("query: k = 0 and k = -3 in rows; k above the collection size; k = 10**9",
         lambda tmp, base: query_argv(tmp, base, write(tmp / "q.parquet", queries(
             vectors(5, 9), ["cat = 'c1'", None, None, "cat = 'c2'", None], ks=[0, -3, 500, 10**9, None]))),
         line="queries: read 5 = answered 3 + rejected 2",
         rejected={"0": "k must be at least 1, got 0", "1": "k must be at least 1, got -3"},
         check=answers_match(base_items)),
    Case("query: NaN, infinite, null, empty and wrong-dimension query vectors",
         lambda tmp, base: query_argv(tmp, base, write(tmp / "q.parquet", queries(
             [vectors(1, 9)[0], [float("nan")] * 8, [0.0] * 7 + [float("inf")], None, [], [1.0] * 9]))),
         line="queries: read 6 = answered 1 + rejected 5",
         rejected={"1": "NaN or infinite", "2": "NaN or infinite", "3": "missing vector", "4": "dimension 0",
                   "5": "dimension 9, expected 8"}, check=answers_match(base_items)),
    Case("query: a zero query vector against a cosine index",
         lambda tmp, base: ["query", "--index", str(_cosine_index(tmp)), "--queries", str(write(
             tmp / "q.parquet", queries([vectors(1, 9)[0], [0.0] * 8]))), "--output", str(tmp / "out")],
         line="queries: read 2 = answered 1 + rejected 1", rejected={"1": "zero vector"}),
    Case("query: duplicate and null query ids in one file",
         lambda tmp, base: query_argv(tmp, base, write(tmp / "q.parquet", queries(
             vectors(4, 9), ids=pa.array([1, 1, None, 2], pa.int64())))),
         line="queries: read 4 = answered 2 + rejected 2", rejected={"1": "duplicate query_id", None: "missing"},
         check=answers_match(base_items)),
    Case("query: the same query id in two files (the first file's is answered)",
         lambda tmp, base: query_argv(tmp, base, _two_query_files(tmp)),
         line="queries: read 6 = answered 5 + rejected 1", rejected={"2": "duplicate query_id 2"},
         check=lambda tmp, base: results(tmp / "out")[2] == brute_force(base.items, vectors(3, 9)[2], None, 10)),
    Case("query: integer query ids in one file, string ids in another",
         lambda tmp, base: query_argv(tmp, base, _two_query_files(tmp, ids=pa.array(["a", "b", "c"]))),
         error=("column 'query_id'", "a.parquet", "int64", "b.parquet", "string")),
    Case("query: a float k column",
         lambda tmp, base: query_argv(tmp, base, write(tmp / "q.parquet", {**queries(vectors(2, 9)),
                                                                         "k": pa.array([1.0, 2.0])})),
         error=("q.parquet", "column 'k' has type double; expected integer")),
    Case("query: an empty queries file",
         lambda tmp, base: query_argv(tmp, base, write(tmp / "q.parquet", queries([]))),
         line="queries: read 0 = answered 0 + rejected 0"),
    Case("query: a queries file that is not Parquet",
         lambda tmp, base: query_argv(tmp, base, _bytes(tmp / "q.parquet", b"\0" * 100)),
         error=("q.parquet", "Parquet")),
    Case("query: no such queries file",
         lambda tmp, base: query_argv(tmp, base, tmp / "nope.parquet"), error=("nope.parquet",)),
    Case("query: no such index",
         lambda tmp, base: ["query", "--index", str(tmp / "noindex"), "--queries",
                            str(write(tmp / "q.parquet", queries(vectors(2, 9)))), "--output", str(tmp / "out")],
         error=("noindex",)),
    # --- related
    Case("related: the template names a column the items lack",
         lambda tmp, base: ["related", "--index", str(base.index), "--items", str(base.items_path),
                            "--predicate-template", "cat = {nope}", "--output", str(tmp / "out")],
         error=("{nope}", "not a column of the items")),
    Case("related: the template names a column the index lacks (every item rejected, counted)",
         lambda tmp, base: ["related", "--index", str(base.index), "--items", str(base.items_path),
                            "--predicate-template", "nope = {cat}", "--output", str(tmp / "out")],
         line="items: read 120 = answered 0 + rejected 120", rejected={"*120": "unknown column 'nope'"}),
    Case("related: a template filled with a null value",
         lambda tmp, base: ["related", "--index", str(base.index), "--items", str(write(tmp / "r.parquet", items(
             20, cat=pa.array(with_rows([f"c{i % 4}" for i in range(20)], {3: None}))))),
                            "--predicate-template", "cat = {cat} AND id != {id}", "--output", str(tmp / "out"),
                            "--k", "3"],
         line="items: read 20 = answered 19 + rejected 1", rejected={"3": "IS NULL"}),
]


def _bytes(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncated(path: pathlib.Path) -> pathlib.Path:
    data = path.read_bytes()
    return _bytes(path, data[: len(data) // 2])


def _mkdir(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True)
    return path


def _two_files(tmp: pathlib.Path) -> pathlib.Path:
    write(tmp / "dir" / "a.parquet", items(20))
    write(tmp / "dir" / "b.parquet", items(20, 1, 20))
    (tmp / "dir" / "_SUCCESS").write_text("")
    return tmp / "dir"


def _cosine_index(tmp: pathlib.Path) -> pathlib.Path:
    assert cli.main(["build", "--items", str(write(tmp / "items.parquet", items(30))), "--output", str(tmp / "cos"),
                     "--metric", "cosine", "--partitioner", "single", *SMALL]) == 0
    return tmp / "cos"


def _two_query_files(tmp: pathlib.Path, ids=None) -> pathlib.Path:
    both = vectors(6, 9)
    write(tmp / "q" / "a.parquet", queries(both[:3]))
    write(tmp / "q" / "b.parquet", queries(both[3:], ids=pa.array([2, 3, 4]) if ids is None else ids))
    return tmp / "q" / "*.parquet"


@dataclasses.dataclass(frozen=True)
class Base:
    index: pathlib.Path
    items_path: pathlib.Path
    items: pa.Table


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    """An index of 120 clean items in several hash partitions, searched exactly (Brute shards)."""
    root = tmp_path_factory.mktemp("base")
    path = write(root / "items.parquet", items(120))
    cli.main(["build", "--items", str(path), "--output", str(root / "index"), "--partitioner", "hash", *SMALL])
    return Base(root / "index", path, pq.read_table(path))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_hostile_input(case: Case, base: Base, tmp_path: pathlib.Path, capsys):
    capsys.readouterr()
    argv = case.setup(tmp_path, base)
    code, out, err = run(argv, capsys)
    if case.error:
        assert code == 2, f"exit code {code}; stdout:\n{out}\nstderr:\n{err}"
        assert "Traceback" not in err, err
        message = [line for line in err.splitlines() if line.startswith(f"beamvec {argv[0]}:")
                   or line.startswith("beamvec: error:") or "error:" in line]
        assert message, err
        assert len(message[0]) < 600, message[0]
        for fragment in case.error:
            assert fragment in err, f"{fragment!r} not in: {err}"
        return
    assert code == 0, f"exit code {code}; stderr:\n{err}"
    assert case.line in out.splitlines(), out
    assert "do not add up" not in out
    letters = dead_letters(tmp_path)
    rows = [] if letters is None else letters.to_pylist()
    expected_total = int(case.line.rsplit("rejected ", 1)[1].replace(",", ""))
    assert len(rows) == expected_total, rows
    for key, fragment in case.rejected.items():
        if isinstance(key, str) and key.startswith("*"):
            matching = [r for r in rows if fragment in r["reason"]]
            assert len(matching) == int(key[1:]), (fragment, rows[:5])
            continue
        mine = [r for r in rows if r["id"] == key]
        assert mine, f"no dead letter for id {key!r}: {rows}"
        assert all(fragment in r["reason"] and r["stage"] and r["source"] for r in mine), mine
    if case.check is not None:
        assert case.check(tmp_path, base) is not False


def test_a_user_error_is_one_line_on_stderr_with_exit_code_2(tmp_path):
    """In a real process: no traceback, Beam's own error log silenced; --verbose shows the traceback."""
    write(tmp_path / "items.parquet", items(10, meta=pa.array([{"a": 1}] * 10)))
    argv = [sys.executable, "-m", "beamvec.pipelines.cli", "build", "--items", str(tmp_path / "items.parquet"),
            "--output", str(tmp_path / "idx")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"beamvec build: {tmp_path / 'items.parquet'}: attribute column 'meta' has unsupported type "
        "struct<a: int64>; supported: string, integer, float, bool, timestamp, date, list<string>, list<int64>"], done.stderr
    verbose = subprocess.run(argv[:3] + ["--verbose"] + argv[3:], capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr, verbose.stderr


def test_an_error_inside_the_pipeline_is_short_too(tmp_path, capsys, monkeypatch):
    """An error raised by a stage while the pipeline runs (Beam re-raises it annotated) is still one line."""
    from beamvec.transforms import build

    class Oops(ValueError):
        pass

    def broken(*args, **kwargs):
        raise Oops("something about row 3 of a file")

    monkeypatch.setattr(build, "_shape", broken)
    code, _, err = run(build_argv(tmp_path, write(tmp_path / "items.parquet", items(10))), capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "beamvec build: something about row 3 of a file" in err.splitlines(), err
