"""`beamvec bench --suite compare`: beamvec beside what users would pick instead, in one run.

Methods, each on the same queries and swept over a few settings:
beamvec with the workload-aware, hash, attribute and kmeans partitioners; one
global ScaNN index with post-filtering (over-fetch, then filter); faiss
IndexIVFFlat with pre-filtering (queries grouped by predicate, one
IDSelectorBitmap per group); exact brute force with pre-filtering (the oracle).
Figures per method and setting: recall@k against the exact answer (mean, and
over the 10% most selective queries), queries/second, build seconds, index
bytes and rows scored per query. Written as JSON, Markdown and a PNG plot.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.index import Index, build_index, exact, synthetic
from beamvec.index.plan import fit_plan
from beamvec.index.predicate import parse
from beamvec.index.schema import PREDICATE, validate_items, validate_queries
from beamvec.index.shard import SearchParams, ShardConfig
from beamvec.pipelines.bench import median_time


@dataclasses.dataclass
class Measurement:
    """One method at one setting."""

    method: str
    setting: str
    recall: float
    recall_selective: float
    qps: float
    build_seconds: float
    index_bytes: int
    rows_scored: float

    def markdown(self) -> str:
        return (f"| {self.method} | {self.setting} | {self.recall:.4f} | {self.recall_selective:.4f} | {self.qps:,.0f} | "
                f"{self.build_seconds:.1f} | {self.index_bytes / 2**20:,.1f} | {self.rows_scored:,.0f} |")


HEADER = ("| method | setting | recall@10 | recall@10, most selective 10% | queries/s | build s | index MiB | "
          "rows scored / query |\n|---|---|---|---|---|---|---|---|")


@dataclasses.dataclass
class Workbench:
    """Items, queries, masks and the exact answer every method is scored against."""

    ids: np.ndarray
    vectors: np.ndarray
    attributes: pa.Table
    queries: np.ndarray
    predicates: list[str | None]
    workload: list[str | None]
    masks: dict
    truth: np.ndarray
    selective: np.ndarray
    k: int

    def score(self, found_ids: np.ndarray) -> tuple[float, float]:
        recall = exact.recall(found_ids, self.truth)
        return float(recall.mean()), float(recall[self.selective].mean())


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def workbench(items: pa.Table, queries: pa.Table, workload: list[str | None], k: int, log) -> tuple[Workbench, Measurement]:
    """Validate the inputs, compute the exact answer (timed: that is the oracle's own row)."""
    valid = validate_items(items)
    dimension = valid.vectors.shape[1]
    checked = validate_queries(queries, dimension)
    predicates = checked.table.column(PREDICATE).to_pylist() if PREDICATE in checked.table.column_names \
        else [None] * checked.table.num_rows
    masks = {p: parse(p).evaluate(valid.table) if p else None for p in set(predicates)}
    matches = np.array([len(valid.vectors) if masks[p] is None else int(masks[p].sum()) for p in predicates])
    seconds, (rows, _) = median_time(lambda: exact.search(valid.vectors, checked.vectors, k, "dot_product",
                                                     [masks[p] for p in predicates]), 1)
    ids = valid.table.column("id").to_numpy(zero_copy_only=False)
    truth = exact.ids_of_rows(ids, rows)
    bench = Workbench(ids, valid.vectors, valid.table.drop_columns(["vector"]), checked.vectors, predicates,
                      workload or predicates, masks, truth, matches <= np.quantile(matches, 0.1), k)
    oracle = Measurement("exact pre-filter", "numpy, grouped by predicate", 1.0, 1.0, len(predicates) / seconds,
                         0.0, valid.vectors.nbytes, float(matches.mean()))
    log(oracle.markdown())
    return bench, oracle


def beamvec_methods(bench: Workbench, attribute: str, partition_rows: tuple[int, int], repeats: int, log,
                    sample_rows: int = 50_000) -> list[Measurement]:
    out = []
    n = len(bench.vectors)
    sample = np.sort(np.random.default_rng(0).choice(n, min(sample_rows, n), replace=False))
    count = None
    for spec in ("workload", "hash", f"attribute:{attribute}", "kmeans"):
        with tempfile.TemporaryDirectory(prefix="beamvec-compare-") as path:
            start = time.perf_counter()
            plan = fit_plan(spec, bench.attributes.take(pa.array(sample)), bench.vectors[sample], bench.workload,
                            *partition_rows, total_rows=n, partitions=count)
            count = count or plan.num_partitions
            build_index(path, pa.array(bench.ids), bench.vectors, bench.attributes, plan=plan)
            build_seconds = time.perf_counter() - start
            index = Index.open(path)
            index.search(bench.queries[:200], bench.predicates[:200], bench.k)  # load shards
            if spec == "kmeans":
                probes = plan.num_partitions
                settings = [(f"probes {p}/{probes}", p, SearchParams()) for p in
                            sorted({max(1, probes // 8), max(1, probes // 4), max(1, probes // 2)})]
            else:
                settings = [(f"leaves x{s}", None, SearchParams(leaves_scale=s)) for s in (0.5, 1.0, 2.0)]
            for label, probes, params in settings:
                if probes is not None:
                    index.plan.probes = probes
                before = index.stats.rows_scored
                seconds, (ids, _) = median_time(lambda: index.search(bench.queries, bench.predicates, bench.k, params), repeats)
                recall, selective = bench.score(ids)
                m = Measurement(f"beamvec {spec}", f"{plan.num_partitions} partitions, {label}", recall, selective,
                                len(bench.queries) / seconds, build_seconds, _dir_bytes(path),
                                (index.stats.rows_scored - before) / repeats / len(bench.queries))
                log(m.markdown())
                out.append(m)
    return out


def scann_post_filter(bench: Workbench, repeats: int, log) -> list[Measurement]:
    """One global ScaNN index; each query fetches 2k/selectivity candidates, then filters (no fallback)."""
    from scann.scann_ops.py import scann_ops_pybind as sp

    n = len(bench.vectors)
    config = ShardConfig(num_leaves=max(2, round(math.sqrt(n))))  # a tree even when beamvec would brute-force
    start = time.perf_counter()
    searcher = sp.create_searcher(bench.vectors, config.scann_config(bench.vectors, "dot_product"), 0)
    build_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        searcher.serialize(tmp, relative_path=True)
        size = _dir_bytes(tmp)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(bench.predicates):
        matches = n if bench.masks[p] is None else int(bench.masks[p].sum())
        fetch = min(n, 1 << max(0, math.ceil(math.log2(max(1, 2 * bench.k * n / max(1, matches))))))
        groups.setdefault(fetch, []).append(i)
    out = []
    for leaves in (max(1, config.num_leaves // 64), max(1, config.num_leaves // 16), max(1, config.num_leaves // 4)):
        def run():
            ids = np.full((len(bench.queries), bench.k), -1, np.int64)
            for fetch, members in groups.items():
                rows, _ = searcher.search_batched_parallel(bench.queries[members], fetch, max(100, 10 * fetch), leaves)
                for row, q in zip(rows, members):
                    mask = bench.masks[bench.predicates[q]]
                    kept = row if mask is None else row[mask[row]]
                    kept = kept[: bench.k]
                    ids[q, : len(kept)] = bench.ids[kept]
            return ids
        seconds, ids = median_time(run, repeats)
        recall, selective = bench.score(ids)
        scanned = np.mean([leaves * n / config.num_leaves + max(100, 10 * f) for f, m in groups.items() for _ in m])
        m = Measurement("ScaNN global post-filter", f"{config.spec()}, {leaves} leaves", recall, selective,
                        len(bench.queries) / seconds, build_seconds, size, float(scanned))
        log(m.markdown())
        out.append(m)
    return out


def faiss_pre_filter(bench: Workbench, repeats: int, log) -> list[Measurement]:
    """faiss IndexIVFFlat (inner product), queries grouped by predicate, one IDSelectorBitmap per group."""
    import faiss

    n, d = bench.vectors.shape
    nlist = max(1, int(4 * math.sqrt(n)))
    start = time.perf_counter()
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    train = bench.vectors[np.random.default_rng(0).choice(n, min(n, 50 * nlist), replace=False)]
    index.train(train)
    index.add(bench.vectors)
    build_seconds = time.perf_counter() - start
    size = len(faiss.serialize_index(index))
    groups: dict = {}
    for i, p in enumerate(bench.predicates):
        groups.setdefault(p, []).append(i)
    bitmaps = {p: None if bench.masks[p] is None else np.packbits(bench.masks[p], bitorder="little") for p in groups}
    out = []
    for nprobe in (8, 32, 128, 512):
        def run():
            ids = np.full((len(bench.queries), bench.k), -1, np.int64)
            for p, members in groups.items():
                if bitmaps[p] is None:
                    params = faiss.SearchParametersIVF(nprobe=nprobe)
                else:
                    params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmaps[p])),
                                                       nprobe=nprobe)
                _, rows = index.search(bench.queries[members], bench.k, params=params)
                ids[members] = np.where(rows >= 0, bench.ids[np.maximum(rows, 0)], -1)
            return ids
        seconds, ids = median_time(run, repeats)
        recall, selective = bench.score(ids)
        m = Measurement("faiss IVFFlat pre-filter", f"nlist {nlist}, nprobe {nprobe}", recall, selective,
                        len(bench.queries) / seconds, build_seconds, size, nprobe * n / nlist)
        log(m.markdown())
        out.append(m)
    return out


def plot(measurements: Sequence[Measurement], path: str) -> None:
    """Recall against queries/second, one line per method (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for method in dict.fromkeys(m.method for m in measurements):
        points = sorted((m.qps, m.recall) for m in measurements if m.method == method)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("queries/second (log)")
    ax.set_ylabel("recall@10")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(output: str, items_path: str | None = None, queries_path: str | None = None, workload_path: str | None = None,
        num_items: int = 200_000, dimension: int = 96, num_queries: int = 5_000, k: int = 10,
        attribute: str = "category", partition_rows: tuple[int, int] = (5_000, 50_000), repeats: int = 3,
        seed: int = 0, log: Callable[[str], None] = print) -> list[Measurement]:
    """Run every method; write ``output``.json, .md and .png."""
    from beamvec.pipelines.jobs import read_workload

    if items_path:
        items = pq.read_table(items_path)
        queries = pq.read_table(queries_path) if queries_path else None
        if queries is None:
            raise ValueError("--items needs --queries")
    else:
        items = synthetic.make_items(num_items, dimension, seed)
        queries = synthetic.make_queries(num_queries, dimension, seed)
    workload = read_workload(workload_path) if workload_path else (
        None if items_path else synthetic.random_predicates(num_queries, seed + 1))
    log(f"{items.num_rows} items, {queries.num_rows} queries, k={k}")
    log(HEADER)
    bench, oracle = workbench(items, queries, workload, k, log)
    measurements = [oracle]
    measurements += beamvec_methods(bench, attribute, partition_rows, repeats, log)
    measurements += scann_post_filter(bench, repeats, log)
    measurements += faiss_pre_filter(bench, repeats, log)
    with open(f"{output}.json", "w") as f:
        json.dump([dataclasses.asdict(m) for m in measurements], f, indent=2)
    with open(f"{output}.md", "w") as f:
        f.write(HEADER + "\n" + "\n".join(m.markdown() for m in measurements) + "\n")
    plot(measurements, f"{output}.png")
    log(f"wrote {output}.json, {output}.md, {output}.png")
    return measurements
