"""`beamvec bench --suite codecs`: what each codec costs and keeps, side by side in one run.

For each data set (generated items with their workload, and any Parquet given) and each codec
(none, F16, SQ8, PQ d/4, PCA to d/2 and d/4 with and without SQ8 and re-rank), one index is
built with the same partition plan and workload log. Build and query each run in a fresh
process of their own, so that their peak resident memory is theirs. Then all the indexes are
searched from this process on fresh batches (caches cleared, predicates evaluated inside the
clock), interleaved round by round; the figures are medians. Recall@10 is against the exact
answer (mean, and over the most selective 10% of queries).

The out-of-distribution rows search a query set that differs from the items: the queries seen
through one fixed linear map that stretches some directions and shrinks others (as text queries
differ from the image vectors they search), built with a workload log drawn the same way, so the
OOD projection is fitted on such queries; PCA and OOD are compared at equal size.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import resource
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from beamvec.index import Index, build_index
from beamvec.index.plan import fit_plan, plan_from_json
from beamvec.index.querylog import QueryLog
from beamvec.pipelines.compare import workbench


def codecs_for(dimension: int) -> list[str]:
    """The suite's codecs for vectors of ``dimension`` ('none' first)."""
    out = ["none", "F16", "SQ8", f"PQ{dimension // 4}"]
    for d in (dimension // 2, dimension // 4):
        out += [f"PCA{d}", f"PCA{d},SQ8", f"PCA{d},Rerank", f"PCA{d},SQ8,Rerank"]
    return out


def ood_codecs_for(dimension: int) -> list[str]:
    """PCA against OOD at equal size, for the differing queries."""
    d = dimension // 4
    return [f"PCA{d},SQ8", f"OOD{d},SQ8", f"PCA{d},SQ8,Rerank", f"OOD{d},SQ8,Rerank"]


@dataclasses.dataclass
class CodecRow:
    """One codec's figures on one data set and query set."""

    dataset: str
    queries: str
    codec: str
    index_bytes: int
    rerank_bytes: int
    bytes_per_vector: float
    build_seconds: float
    build_peak_mib: float
    query_peak_mib: float
    recall: float
    selective: float
    qps: float
    qps_ratio: float = 1.0

    def markdown(self) -> str:
        rerank = f"{self.rerank_bytes / 2**20:,.1f}" if self.rerank_bytes else "-"
        return (f"| {self.dataset} | {self.queries} | {self.codec} | {self.index_bytes / 2**20:,.1f} | {rerank} | "
                f"{self.bytes_per_vector:,.1f} | {self.build_seconds:.1f} | {self.build_peak_mib:,.0f} | "
                f"{self.query_peak_mib:,.0f} | {self.recall:.4f} | {self.selective:.4f} | {self.qps:,.0f} | "
                f"{self.qps_ratio:.2f}x |")


HEADER = ("| data | queries | codec | index MiB | re-rank file MiB | bytes/vector | build s | build peak MiB | "
          "query peak MiB | recall@10 | most selective 10% | fresh q/s | q/s vs none |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def differing(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """``vectors`` through one fixed linear map (stretching random directions 16:1) and re-normalised:
    queries from another distribution than the items', near the same items."""
    dimension = vectors.shape[1]
    basis = np.linalg.qr(np.random.default_rng([seed, 91]).standard_normal((dimension, dimension)))[0]
    warp = (basis * np.geomspace(4, 0.25, dimension)) @ basis.T
    out = np.asarray(vectors, np.float32) @ warp.astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _peak_mib() -> float:
    """This process's peak resident memory: Linux's VmHWM (``ru_maxrss`` would also count the
    parent's memory at the fork that started it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(path: str, ids: pa.Array, vectors: np.ndarray, attributes: pa.Table, plan_json: dict, log: QueryLog,
           codec: str | None) -> tuple[float, float]:
    """In a fresh process: build the index; (seconds, peak MiB)."""
    start = time.perf_counter()
    build_index(path, ids, vectors, attributes, plan=plan_from_json(plan_json), log=log, codec=codec)
    return time.perf_counter() - start, _peak_mib()


def _query(path: str, queries: np.ndarray, predicates: list) -> float:
    """In a fresh process: open the index and answer one fresh batch; peak MiB."""
    Index.open(path).search(queries, predicates, 10)
    return _peak_mib()


def _in_fresh_process(function, *args):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def _bytes(path: str) -> tuple[int, int]:
    """(bytes searched: the index without re-rank files, bytes of the re-rank files)."""
    searched = rerank = 0
    for folder, _, files in os.walk(path):
        for name in files:
            size = os.path.getsize(os.path.join(folder, name))
            if name.endswith(".full.npy"):
                rerank += size
            else:
                searched += size
    return searched, rerank


def run_dataset(name: str, items: pa.Table, queries: pa.Table, log: QueryLog, repeats: int, work: str,
                say: Callable[[str], None], codecs: Sequence[str] | None = None,
                seed: int = 0) -> list[CodecRow]:
    """Every codec on one data set, with its regular queries and (OOD rows) the differing ones."""
    bench, _ = workbench(items, queries, log, 10, say, time_oracle=False, peers=False)
    n, dimension = bench.vectors.shape
    ids = pa.array(bench.ids)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(50_000, n), replace=False))
    plan = fit_plan("workload", bench.attributes.take(pa.array(sample)), bench.vectors[sample], log.predicates,
                    total_rows=n, seed=seed).to_json()
    shifted = queries.set_column(queries.column_names.index("vector"), "vector",
                                 pa.FixedSizeListArray.from_arrays(pa.array(differing(bench.queries, seed).reshape(-1)),
                                                                   dimension))
    ood_bench, _ = workbench(items, shifted, log, 10, say, time_oracle=False, peers=False)
    ood_log = QueryLog(log.predicates, differing(log.vectors, seed), log.vector_rows) if log.has_vectors else log
    say(f"{name}: {n:,} items x {dimension}-d, {len(bench.queries):,} queries, "
        f"{plan_from_json(plan).num_partitions} partitions")
    runs = [("regular", spec, bench, log) for spec in (codecs or codecs_for(dimension))]
    runs += [("differing", spec, ood_bench, ood_log) for spec in ood_codecs_for(dimension)]
    built = []
    for i, (kind, spec, b, workload) in enumerate(runs):
        path = os.path.join(work, f"{name}-{i}")
        seconds, build_peak = _in_fresh_process(_build, path, ids, bench.vectors, bench.attributes, plan, workload,
                                                None if spec == "none" else spec)
        query_peak = _in_fresh_process(_query, path, b.queries, b.predicates)
        built.append((kind, spec, b, path, seconds, build_peak, query_peak))
        say(f"  {name} {spec} ({kind} queries): built in {seconds:.1f} s, peak {build_peak:,.0f} MiB; "
            f"query peak {query_peak:,.0f} MiB")
    indexes = [Index.open(path) for *_, path, _, _, _ in built]
    for index, (_, _, b, *_) in zip(indexes, built):
        index.search(b.queries[:100], b.predicates[:100], 10)  # loads the shards
    times: list[list[float]] = [[] for _ in built]
    found: list = [None] * len(built)
    for _ in range(repeats):  # interleaved: every codec sees the same machine in each round
        for j, (index, (_, _, b, *_)) in enumerate(zip(indexes, built)):
            index.clear_caches()
            start = time.perf_counter()
            found[j], _ = index.search(b.queries, b.predicates, 10)
            times[j].append(time.perf_counter() - start)
    rows = []
    for j, (kind, spec, b, path, seconds, build_peak, query_peak) in enumerate(built):
        searched, rerank = _bytes(path)
        recall, selective = b.score(found[j])
        rows.append(CodecRow(name, kind, spec, searched, rerank, searched / n, seconds, build_peak, query_peak,
                             recall, selective, len(b.queries) / float(np.median(times[j]))))
    base = next((r for r in rows if r.codec == "none"), None)
    for r, t in zip(rows, times):
        if base is not None:  # per round, against none's time in the same round
            r.qps_ratio = float(np.median(np.array(times[rows.index(base)]) / np.array(t)))
    return rows


def suite(datasets: Sequence[tuple[str, pa.Table, pa.Table, QueryLog]], repeats: int = 3,
          say: Callable[[str], None] = print, output: str | None = None,
          codecs: Sequence[str] | None = None) -> list[CodecRow]:
    """Run every data set; print (and with ``output``, write ``output``.md and .json) the table."""
    import json

    rows: list[CodecRow] = []
    with tempfile.TemporaryDirectory(prefix="beamvec-codecs-") as work:
        for name, items, queries, log in datasets:
            rows += run_dataset(name, items, queries, log, repeats, work, say, codecs)
    table = HEADER + "\n" + "\n".join(r.markdown() for r in rows)
    say(table)
    if output:
        with open(f"{output}.md", "w") as f:
            f.write(table + "\n")
        with open(f"{output}.json", "w") as f:
            json.dump([dataclasses.asdict(r) for r in rows], f, indent=2)
        say(f"wrote {output}.md, {output}.json")
    return rows
