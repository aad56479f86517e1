"""`beamvec bench`: recall and throughput measured side by side, in one run.

Suite ``selectivity``: one index of generated items in a single shard; for each
predicate selectivity, the same queries through ``Index.search`` and through the
exact oracle (numpy matrix products, queries grouped by predicate), timed back to
back; recall@k of the index against the oracle.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Callable, Sequence

import numpy as np

from beamvec.index import Index, build_index, exact
from beamvec.pipelines import synthetic
from beamvec.index.columns import masks_of
from beamvec.index.schema import validate_items


@dataclasses.dataclass
class SelectivityRow:
    """One selectivity's figures."""

    selectivity: float
    recall: float
    short_results: int
    index_qps: float
    oracle_qps: float
    prefiltered: int
    postfiltered: int
    fallbacks: int

    def markdown(self) -> str:
        return (f"| {self.selectivity:.1%} | {self.recall:.4f} | {self.short_results} | {self.index_qps:,.0f} | "
                f"{self.oracle_qps:,.0f} | {self.index_qps / self.oracle_qps:.1f}x | "
                f"{self.prefiltered}/{self.postfiltered}/{self.fallbacks} |")


SELECTIVITY_HEADER = ("| selectivity | recall@10 | short | Index.search q/s | oracle q/s | speed-up | pre/post/fallback |\n"
                      "|---|---|---|---|---|---|---|")


def median_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` runs, and the last run's result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def selectivity_suite(num_items: int, dimension: int, num_queries: int, selectivities: Sequence[float],
                      k: int = 10, repeats: int = 3, seed: int = 0, log: Callable[[str], None] = print) -> list[SelectivityRow]:
    """Build one single-shard index, then measure each selectivity (median of ``repeats`` runs)."""
    items = validate_items(synthetic.make_items(num_items, dimension, seed))
    queries = synthetic.make_queries(num_queries, dimension, seed)
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, dimension)
    rows = []
    with tempfile.TemporaryDirectory(prefix="beamvec-bench-") as path:
        start = time.perf_counter()
        build_index(path, items.table.column("id").combine_chunks(), items.vectors,
                    items.table.drop_columns(["vector"]), seed=seed)
        log(f"built {num_items} x {dimension} in {time.perf_counter() - start:.1f} s")
        index = Index.open(path)
        shard = index.shard(0)
        log(f"shard {shard.config.spec()}, calibration {shard.calibration.leaves}")
        ids_column = items.table.column("id").to_numpy()
        for s in selectivities:
            text = synthetic.selectivity_predicate(s)
            predicates = [text] * num_queries
            index.search(vectors[:100], predicates[:100], k)  # warm-up: loads, caches the mask
            before = dataclasses.replace(index.stats)
            index_seconds, (ids, _) = median_time(lambda: index.search(vectors, predicates, k), repeats)
            mask = masks_of(items.table, [text])[text]
            oracle_seconds, (truth, _) = median_time(
                lambda: exact.search(items.vectors, vectors, k, index.metric, [mask] * num_queries), repeats)
            truth_ids = exact.ids_of_rows(ids_column, truth)
            delta = {f.name: (getattr(index.stats, f.name) - getattr(before, f.name)) // repeats
                     for f in dataclasses.fields(index.stats) if isinstance(getattr(before, f.name), int)}
            row = SelectivityRow(s, float(exact.recall(ids, truth_ids).mean()),
                                 int(((ids != -1).sum(axis=1) < (truth != -1).sum(axis=1)).sum()),
                                 num_queries / index_seconds, num_queries / oracle_seconds,
                                 delta["prefiltered"], delta["postfiltered"], delta["fallbacks"])
            log(row.markdown())
            rows.append(row)
    return rows


@dataclasses.dataclass
class PartitionRow:
    """One partitioner's figures on held-out queries."""

    partitioner: str
    partitions: int
    min_size: int
    median_size: int
    max_size: int
    rows_scanned: float
    lower_bound: float

    def markdown(self) -> str:
        return (f"| {self.partitioner} | {self.partitions} | {self.min_size:,} / {self.median_size:,} / {self.max_size:,} | "
                f"{self.rows_scanned:,.0f} | {self.lower_bound:,.0f} | {self.rows_scanned / self.lower_bound:.1f}x |")


PARTITION_HEADER = ("| partitioner | partitions | size min / median / max | rows scanned per query | "
                    "lower bound (matching rows) | ratio |\n|---|---|---|---|---|---|")


def partition_suite(num_items: int, dimension: int, num_queries: int, min_rows: int, max_rows: int,
                    k: int = 10, repeats: int = 3, seed: int = 0, sample_rows: int = 50_000,
                    log: Callable[[str], None] = print) -> tuple[list[PartitionRow], dict]:
    """Fit each partitioner on half of a skewed workload; measure on the other half.

    Returns the per-partitioner rows and, for the workload-aware plan against one
    shard holding everything, ``Index.search`` queries/second and recall@k.
    """
    from beamvec.index.plan import fit_plan, rows_scanned

    items = validate_items(synthetic.make_items(num_items, dimension, seed))
    workload = synthetic.random_predicates(num_queries, seed)
    fit_half, test_half = workload[::2], workload[1::2]
    queries = synthetic.make_queries(len(test_half), dimension, seed, predicates=test_half)
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, dimension)
    attributes = items.table.drop_columns(["vector"])
    sample = np.sort(np.random.default_rng(seed).choice(num_items, min(sample_rows, num_items), replace=False))
    masks = masks_of(items.table, test_half)
    lower = float(np.mean([num_items if masks[p] is None else masks[p].sum() for p in test_half]))
    rows, plans = [], {}
    for spec in ("workload", "hash", "attribute:category", "kmeans"):
        start = time.perf_counter()
        count = plans["workload"].num_partitions if plans else None
        plan = fit_plan(spec, attributes.take(sample), items.vectors[sample], fit_half, min_rows, max_rows,
                        total_rows=num_items, partitions=count, seed=seed)
        plans[spec] = plan
        sizes = np.bincount(plan.assign(attributes, items.vectors), minlength=plan.num_partitions)
        scanned = float(rows_scanned(plan, sizes, test_half, vectors).mean())
        row = PartitionRow(spec, plan.num_partitions, int(sizes.min()), int(np.median(sizes)), int(sizes.max()),
                           scanned, lower)
        log(f"{row.markdown()}  (fitted in {time.perf_counter() - start:.1f} s)")
        rows.append(row)
    truth, _ = exact.search(items.vectors, vectors, k, "dot_product", [masks[p] for p in test_half])
    truth_ids = exact.ids_of_rows(items.table.column("id").to_numpy(), truth)
    searched = {}
    with tempfile.TemporaryDirectory(prefix="beamvec-bench-") as tmp:
        indexes = {}
        for name, plan in (("workload", plans["workload"]), ("single shard", None)):
            start = time.perf_counter()
            build_index(f"{tmp}/{name}", items.table.column("id").combine_chunks(), items.vectors, attributes,
                        plan=plan, seed=seed)
            log(f"built {name} index in {time.perf_counter() - start:.1f} s")
            indexes[name] = Index.open(f"{tmp}/{name}")
            indexes[name].search(vectors, test_half, k)  # warm-up: loads shards, caches masks
        for _ in range(repeats):  # alternate, so both see the same machine load
            for name, index in indexes.items():
                start = time.perf_counter()
                ids, _ = index.search(vectors, test_half, k)
                searched.setdefault(name, []).append(time.perf_counter() - start)
                searched[name + " recall"] = float(exact.recall(ids, truth_ids).mean())
    figures = {name: {"qps": len(test_half) / float(np.median(searched[name])), "recall": searched[name + " recall"]}
               for name in indexes}
    for name, f in figures.items():
        log(f"Index.search, {name}: {f['qps']:,.0f} queries/s, recall@{k} {f['recall']:.4f}")
    return rows, figures


def beam_suite(num_items: int, dimension: int, num_queries: int, min_rows: int, max_rows: int, k: int = 10,
               repeats: int = 3, seed: int = 0, beam_args: Sequence[str] = (),
               log: Callable[[str], None] = print, generator: str = "catalog") -> dict:
    """``beamvec build`` (with the ``generator``'s workload log) and ``beamvec query`` on a Beam
    runner, beside ``Index.search`` in-process.

    The query job and a fresh in-process search that opens the index and loads its shards run
    ``repeats`` times, interleaved; the figures are medians. Each job starts with no shard loaded
    in this process (:func:`beamvec.transforms.search.forget_loaded_indexes`), as a fresh worker."""
    import glob
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.options.pipeline_options import PipelineOptions

    from beamvec.pipelines import jobs
    from beamvec.transforms import BuildSettings
    from beamvec.transforms.search import forget_loaded_indexes

    options = PipelineOptions(list(beam_args))
    items, queries, workload = synthetic.generate(generator, num_items, dimension, num_queries, seed)
    predicates = queries.column("predicate").to_pylist()
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, dimension)
    figures = {}
    times: dict[str, list[float]] = {"query": [], "fresh_load_and_search": [], "fresh_search": []}
    with tempfile.TemporaryDirectory(prefix="beamvec-bench-") as work:
        bounds = np.linspace(0, num_items, 5).astype(int)
        for part, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            pq.write_table(items.slice(lo, hi - lo), f"{work}/items-{part}.parquet")
        pq.write_table(queries, f"{work}/queries.parquet")
        pq.write_table(workload, f"{work}/workload.parquet")
        start = time.perf_counter()
        counts = jobs.build(f"{work}/items-*.parquet", f"{work}/index", options, f"{work}/workload.parquet",
                            BuildSettings("workload", min_rows, max_rows, seed=seed))
        figures["build_seconds"] = time.perf_counter() - start
        log(f"beamvec build: {figures['build_seconds']:.1f} s, {counts}")
        for _ in range(repeats):
            forget_loaded_indexes()
            shutil.rmtree(f"{work}/out", ignore_errors=True)
            start = time.perf_counter()
            counts = jobs.query(f"{work}/index", f"{work}/queries.parquet", f"{work}/out", options, k)
            times["query"].append(time.perf_counter() - start)
            log(f"beamvec query: {times['query'][-1]:.1f} s, {counts}")
            results = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(f"{work}/out/results-*.parquet"))])
            forget_loaded_indexes()
            start = time.perf_counter()  # what a batch job in one process pays: open, load and check shards, search
            index = Index.open(f"{work}/index")
            index.search(vectors, predicates, k)
            times["fresh_load_and_search"].append(time.perf_counter() - start)
            index.clear_caches()
            start = time.perf_counter()
            ids, scores = index.search(vectors, predicates, k)
            times["fresh_search"].append(time.perf_counter() - start)
            del index
    for name, seconds in times.items():
        figures[f"{name}_seconds"] = float(np.median(seconds))
    valid = validate_items(items)
    masks = masks_of(valid.table, predicates)
    truth, _ = exact.search(valid.vectors, vectors, k, "dot_product", [masks[p] for p in predicates])
    by_query = {r["query_id"]: r["neighbors"] for r in results.to_pylist()}
    order = queries.column("query_id").to_pylist()
    beam_ids = np.array([([n["id"] for n in by_query[q]] + [-1] * k)[:k] for q in order])
    beam_scores = np.array([([n["score"] for n in by_query[q]] + [np.nan] * k)[:k] for q in order], np.float32)
    figures["beam_recall"] = float(exact.recall(beam_ids, truth).mean())
    figures["search_recall"] = float(exact.recall(ids, truth).mean())
    same = (beam_ids == ids).all(axis=1) & ((beam_scores == scores) | (np.isnan(beam_scores) & np.isnan(scores))).all(axis=1)
    figures["identical_share"] = float(same.mean())
    ratios = np.array(times["fresh_load_and_search"]) / np.array(times["query"])
    figures["beam_over_in_process"] = float(np.median(ratios))
    log(f"beamvec query (Beam job), median of {repeats}: {figures['query_seconds']:.2f} s, "
        f"{num_queries / figures['query_seconds']:,.0f} queries/s; Index.search on a fresh Index (opening it, loading "
        f"and checking its shards): {figures['fresh_load_and_search_seconds']:.2f} s, "
        f"{num_queries / figures['fresh_load_and_search_seconds']:,.0f} queries/s "
        f"({figures['fresh_search_seconds']:.2f} s for a fresh batch once loaded)")
    log(f"Beam job throughput / in-process (with loading), per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
        f"median {figures['beam_over_in_process']:.2f} (target >= 0.5)")
    log(f"recall@{k}: beamvec query {figures['beam_recall']:.4f}, Index.search {figures['search_recall']:.4f}; "
        f"queries with identical neighbours and scores on both paths: {figures['identical_share']:.2%}")
    return figures


def embed_suite(items: str, num_items: int, models: Sequence[str], batch_size: int, seed: int = 0,
                beam_args: Sequence[str] = (), log: Callable[[str], None] = print) -> list[dict]:
    """``beamvec embed`` (a Beam job: read Parquet, RunInference, write Parquet) on the ``text`` column
    of ``items``, for each of ``models``: texts per second of the whole job and this process's peak
    memory; where ``items`` also holds reference vectors (``vector``, as the docstrings set does),
    the cosine similarity of each embedding with its reference. ``num_items`` texts drawn at random
    (``seed``; all of them when 0 or more than there are)."""
    import glob
    import resource

    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.options.pipeline_options import PipelineOptions

    from beamvec.pipelines import jobs

    table = pq.read_table(items)
    if 0 < num_items < table.num_rows:
        table = table.take(np.sort(np.random.default_rng(seed).choice(table.num_rows, num_items, replace=False)))
    table = table.append_column("__row", pa.array(np.arange(table.num_rows)))
    reference = None
    if "vector" in table.column_names:
        values = table.column("vector").combine_chunks()
        reference = np.asarray(values.values.to_numpy(zero_copy_only=False), np.float32).reshape(table.num_rows, -1)
        table = table.drop_columns(["vector"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="beamvec-bench-embed-") as work:
        pq.write_table(table, f"{work}/texts.parquet")
        for model in models:
            start = time.perf_counter()
            counts = jobs.embed(f"{work}/texts.parquet", "text", f"{work}/{len(rows)}", PipelineOptions(list(beam_args)),
                                model, batch_size)
            seconds = time.perf_counter() - start
            row = {"model": model, "texts": table.num_rows, "seconds": seconds, "texts_per_second": table.num_rows / seconds,
                   "batch_size": batch_size, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "counts": counts}
            if reference is not None:
                out = pa.concat_tables([pq.read_table(f) for f in glob.glob(f"{work}/{len(rows)}/embedded-*.parquet")])
                got = out.column("vector").combine_chunks().values.to_numpy().reshape(out.num_rows, -1)
                want = reference[out.column("__row").to_numpy()]
                cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
                row.update(cos_min=float(cos.min()), cos_p1=float(np.percentile(cos, 1)), cos_median=float(np.median(cos)),
                           share_at_least_0999=float((cos >= 0.999).mean()))
            rows.append(row)
            log(f"{model}: {row['texts']:,} texts in {seconds:.1f} s, {row['texts_per_second']:.1f} texts/s "
                f"(batch {batch_size}; peak RSS so far {row['peak_rss_mib']:,.0f} MiB); {counts}")
            if reference is not None:
                log(f"  cosine with the reference vectors: min {row['cos_min']:.5f}, 1st percentile {row['cos_p1']:.5f}, "
                    f"median {row['cos_median']:.5f}; rows >= 0.999: {row['share_at_least_0999']:.2%}")
    return rows
