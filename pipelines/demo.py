"""`beamvec demo`: the whole product on generated data, on a Beam runner (DirectRunner by default).

Generates items (with a few broken rows) and a skewed workload of hybrid queries
(with a few broken queries), then runs three Beam jobs: build the index with the
workload-aware partitioner, answer the queries, and find every sampled item's
related items in its own category. Prints the counts (read = used + rejected),
the partitions, rows scanned per query, recall@10 against the exact answer and
queries/second, beside ``Index.search`` in-process on the same index.

Then text search on real text found on any machine: the docstrings of standard-library
modules, embedded by the built-in all-MiniLM-L6-v2 in a build job, and a few text queries
with predicates on the module, with their top results.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import os
import tempfile
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import Index, exact
from beamvec.pipelines import synthetic
from beamvec.index.columns import masks_of
from beamvec.index.plan import plan_from_json, rows_scanned
from beamvec.index.schema import validate_items
from beamvec.pipelines import jobs
from beamvec.transforms import BuildSettings

RELATED_TEMPLATE = "category = {category} AND id != {id}"


def _with_bad_rows(items: pa.Table) -> pa.Table:
    """The items plus three broken rows: a duplicate id, a NaN vector, a short vector."""
    d = items.schema.field("vector").type.list_size
    bad = items.slice(0, 3).to_pylist()
    bad[1]["id"], bad[1]["vector"] = -1, [float("nan")] * d
    bad[2]["id"], bad[2]["vector"] = -2, [0.0] * (d - 1)
    loose = items.schema.set(1, pa.field("vector", pa.list_(pa.float32())))
    return pa.concat_tables([items.cast(loose), pa.Table.from_pylist(bad, schema=loose)])


def _with_bad_queries(queries: pa.Table) -> pa.Table:
    bad = queries.slice(0, 2).to_pylist()
    bad[0]["query_id"], bad[0]["predicate"] = -1, "year >= "
    bad[1]["query_id"], bad[1]["predicate"] = -2, "genre = 'rock'"
    return pa.concat_tables([queries, pa.Table.from_pylist(bad, schema=queries.schema)])


def _read(pattern: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(pattern))])


def _recall(results: pa.Table, truth: np.ndarray, id_column: np.ndarray, query_ids: list) -> float:
    by_query = {r["query_id"]: [n["id"] for n in r["neighbors"]] for r in results.to_pylist()}
    found = np.array([(by_query[q] + [-1] * 10)[:10] for q in query_ids])
    return float(exact.recall(found, exact.ids_of_rows(id_column, truth)).mean())


def run(num_items: int = 50_000, num_queries: int = 5_000, dimension: int = 64, k: int = 10, seed: int = 0,
        beam_args: list[str] | None = None, log: Callable[[str], None] = print) -> None:
    """Run the demo, printing each figure as it is measured."""
    options = PipelineOptions(beam_args or [])
    work = tempfile.mkdtemp(prefix="beamvec-demo-")
    items = synthetic.make_items(num_items, dimension, seed)
    raw = _with_bad_rows(items)
    half = raw.num_rows // 2
    pq.write_table(raw.slice(0, half), f"{work}/items-0.parquet")
    pq.write_table(raw.slice(half), f"{work}/items-1.parquet")
    with open(f"{work}/workload.txt", "w") as f:
        f.write("\n".join(synthetic.random_predicates(2 * num_queries, seed + 1)))
    predicates = synthetic.random_predicates(num_queries, seed)
    queries = synthetic.make_queries(num_queries, dimension, seed, predicates=predicates)
    pq.write_table(_with_bad_queries(queries), f"{work}/queries.parquet")
    log(f"generated {raw.num_rows} items ({dimension}-d) and {num_queries + 2} queries in {work}")

    index_dir = f"{work}/index"
    settings = BuildSettings("workload", max(500, num_items // 40), max(2_000, num_items // 8), seed=seed)
    start = time.perf_counter()
    counts = jobs.build(f"{work}/items-*.parquet", index_dir, options, f"{work}/workload.txt", settings)
    build_seconds = time.perf_counter() - start
    rejected = _read(jobs.dead_letters(index_dir))
    log(f"build: {build_seconds:.1f} s; items read {counts['items_read']} = indexed {counts['items_indexed']} "
        f"+ rejected {rejected.num_rows} ({'; '.join(sorted(set(rejected.column('reason').to_pylist())))})")
    index = Index.open(index_dir)
    sizes = np.array([p.rows for p in index.manifest.partitions])
    log(f"partitions: {len(sizes)} (rows min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()})")

    start = time.perf_counter()
    counts = jobs.query(index_dir, f"{work}/queries.parquet", f"{work}/results", options, k)
    query_seconds = time.perf_counter() - start
    results = _read(f"{work}/results/results-*.parquet")
    dead = _read(f"{work}/results/rejected-*.parquet")
    log(f"query: {query_seconds:.1f} s; queries read {counts['queries_read']} = answered {results.num_rows} "
        f"+ rejected {dead.num_rows}; {num_queries / query_seconds:,.0f} queries/s through Beam")

    valid = validate_items(items)
    masks = masks_of(valid.table, predicates)
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, dimension)
    start = time.perf_counter()
    truth, _ = exact.search(valid.vectors, vectors, k, "dot_product", [masks[p] for p in predicates])
    oracle_seconds = time.perf_counter() - start
    start = time.perf_counter()
    index.search(vectors, predicates, k)  # loads and checks the shards, computes the predicate masks
    cold_seconds = time.perf_counter() - start
    start = time.perf_counter()
    index.search(vectors, predicates, k)  # masks cached, as the oracle's above were computed before its clock
    search_seconds = time.perf_counter() - start
    id_column = valid.table.column("id").to_numpy()
    recall = _recall(results, truth, id_column, queries.column("query_id").to_pylist())
    plan = plan_from_json(index.manifest.plan)
    scanned = rows_scanned(plan, np.bincount(plan.assign(valid.table, valid.vectors), minlength=plan.num_partitions),
                           predicates, vectors).mean()
    matching = np.mean([num_items if masks[p] is None else masks[p].sum() for p in predicates])
    log(f"recall@{k} vs exact: {recall:.4f}; rows scanned per query {scanned:,.0f} (matching rows {matching:,.0f}, "
        f"all rows {num_items:,})")
    log(f"in-process Index.search {num_queries / search_seconds:,.0f} queries/s (first search, loading shards "
        f"and computing masks: {num_queries / cold_seconds:,.0f}), exact oracle {num_queries / oracle_seconds:,.0f} "
        f"queries/s")

    sample = items.take(pa.array(np.arange(0, num_items, max(1, num_items // 2000))))
    pq.write_table(sample, f"{work}/sample.parquet")
    start = time.perf_counter()
    jobs.related(index_dir, f"{work}/sample.parquet", RELATED_TEMPLATE, f"{work}/related", options, k)
    related = _read(f"{work}/related/results-*.parquet")
    rel_valid = validate_items(sample)
    rel_predicates = [f"category = '{c}' AND id != {i}" for c, i in
                      zip(rel_valid.table.column("category").to_pylist(), rel_valid.table.column("id").to_pylist())]
    rel_masks_of = masks_of(valid.table, rel_predicates)
    rel_masks = [rel_masks_of[p] for p in rel_predicates]
    rel_truth, _ = exact.search(valid.vectors, rel_valid.vectors, k, "dot_product", rel_masks)
    log(f"related items: {related.num_rows} items in {time.perf_counter() - start:.1f} s, recall@{k} "
        f"{_recall(related, rel_truth, id_column, rel_valid.table.column('id').to_pylist()):.4f}")
    text_search(work, options, log)
    log(f"index and outputs kept in {work} ({sum(os.path.getsize(f) for f in glob.glob(f'{index_dir}/**', recursive=True) if os.path.isfile(f)) / 2**20:.0f} MiB index)")


DOC_MODULES = ("json", "pathlib", "itertools", "functools", "collections", "re", "os", "shutil", "subprocess",
               "statistics", "datetime", "csv", "textwrap", "heapq", "bisect", "random", "math", "string", "zipfile",
               "tarfile", "urllib.parse", "hashlib", "logging", "argparse", "threading", "socket", "sqlite3")
TEXT_QUERIES = (("parse a date from a string", None), ("compress files into an archive", "module IN ('zipfile', 'tarfile', 'shutil')"),
                ("run a command and capture its output", None), ("average of a list of numbers", "module = 'statistics'"),
                ("find the position to insert into a sorted list", None))


def installed_docstrings(modules=DOC_MODULES, chars: int = 300) -> pa.Table:
    """Public functions and classes of ``modules`` with a docstring: id (module.name), text
    (``name: docstring``, its first ``chars`` characters), module, kind."""
    rows, seen = [], set()
    for name in modules:
        module = importlib.import_module(name)
        for attr, value in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value)):
                continue
            doc = " ".join((inspect.getdoc(value) or "").split())
            key = f"{name}.{attr}"
            if len(doc) < 20 or key in seen:
                continue
            seen.add(key)
            rows.append({"id": key, "text": f"{attr}: {doc}"[:chars], "module": name,
                         "kind": "class" if inspect.isclass(value) else "function"})
    return pa.Table.from_pylist(rows)


def text_search(work: str, options: PipelineOptions, log: Callable[[str], None] = print, k: int = 3) -> None:
    """Build an index of the installed docstrings from their text, then answer text queries."""
    docs = installed_docstrings()
    pq.write_table(docs, f"{work}/docstrings.parquet")
    start = time.perf_counter()
    counts = jobs.build(f"{work}/docstrings.parquet", f"{work}/text-index", options,
                        settings=BuildSettings("hash", 200, 1000), embed_column="text")
    log(f"text index: {counts.get('embed_read', 0)} docstrings of {len(DOC_MODULES)} standard-library modules "
        f"embedded by all-MiniLM-L6-v2 and indexed in {time.perf_counter() - start:.1f} s "
        f"({counts.get('items_indexed', 0)} indexed)")
    pq.write_table(pa.table({"query_id": list(range(len(TEXT_QUERIES))), "text": [q for q, _ in TEXT_QUERIES],
                             "predicate": [p for _, p in TEXT_QUERIES]}), f"{work}/text-queries.parquet")
    jobs.query(f"{work}/text-index", f"{work}/text-queries.parquet", f"{work}/text-results", options, k,
               query_text_column="text")
    found = {r["query_id"]: r["neighbors"] for r in _read(f"{work}/text-results/results-*.parquet").to_pylist()}
    for q, (text, predicate) in enumerate(TEXT_QUERIES):
        log(f"  {text!r}" + (f" WHERE {predicate}" if predicate else "") + ": "
            + ", ".join(f"{n['id']} ({n['score']:.2f})" for n in found.get(q, [])))
