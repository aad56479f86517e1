"""`beamvec bench --suite compare`: beamvec beside what users would pick instead, in one run.

Methods, each on the same queries and swept over a few settings, then bisected to
the lowest setting reaching the target recall (:func:`lowest_reaching`):
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
import functools
import json
import math
import os
import tempfile
import time
from typing import Callable, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.index import Index, build_index, exact, synthetic
from beamvec.index.plan import fit_plan
from beamvec.index.predicate import parse
from beamvec.index.schema import PREDICATE, validate_items, validate_queries
from beamvec.index.shard import SearchParams
from beamvec.pipelines.bench import median_time

T = TypeVar("T")
# Leaves scales beamvec is swept over (the calibrated leaves times these).
LEAVES_SCALES = (0.25, 0.5, 1.0, 2.0)


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
    # Runs the setting's whole query batch once more (for the interleaved head-to-head).
    rerun: Callable[[], object] | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rerun"}

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

    def no_ids(self) -> np.ndarray:
        """A (queries, k) id array of the items' id type, -1 (no result) everywhere."""
        return np.full((len(self.queries), self.k), -1, self.ids.dtype)

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
    def oracle_run():
        return exact.search(valid.vectors, checked.vectors, k, "dot_product", [masks[p] for p in predicates])

    seconds, (rows, _) = median_time(oracle_run, 1)
    ids = valid.table.column("id").to_numpy(zero_copy_only=False)
    truth = exact.ids_of_rows(ids, rows)
    bench = Workbench(ids, valid.vectors, valid.table.drop_columns(["vector"]), checked.vectors, predicates,
                      workload or predicates, masks, truth, matches <= np.quantile(matches, 0.1), k)
    oracle = Measurement("exact pre-filter", "numpy, grouped by predicate", 1.0, 1.0, len(predicates) / seconds,
                         0.0, valid.vectors.nbytes, float(matches.mean()), oracle_run)
    log(oracle.markdown())
    return bench, oracle


def beamvec_methods(bench: Workbench, attribute: str, partition_rows: tuple[int, int], repeats: int, log,
                    sample_rows: int = 50_000, target: float = 0.95) -> list[Measurement]:
    """beamvec with each partitioner, swept over the leaves searched (kmeans: over the partitions
    probed). As for the peers, the lowest setting reaching ``target`` recall is then
    searched for by bisection (see :func:`lowest_reaching`)."""
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
            if spec == "kmeans":  # the knob is the partitions probed; all of them is exhaustive
                total = plan.num_partitions
                knobs = sorted({max(1, total // 8), max(1, total // 4), max(1, total // 2), total})
                setting = lambda probes: (f"probes {probes}/{total}", probes, SearchParams())
                midpoint = lambda low, high: (low + high) // 2 if high - low > 1 else None
            else:  # the knob scales the leaves each shard searches
                knobs = LEAVES_SCALES
                setting = lambda scale: (f"leaves x{scale}", None, SearchParams(leaves_scale=scale))
                midpoint = lambda low, high: round((low + high) / 2, 4) if high > low * 1.0625 else None

            def measure(label: str, probes: int | None, params: SearchParams) -> Measurement:
                run = _index_run(index, bench, params, probes)
                before = index.stats.rows_scored
                seconds, (ids, _) = median_time(run, repeats)
                recall, selective = bench.score(ids)
                m = Measurement(f"beamvec {spec}", f"{plan.num_partitions} partitions, {label}", recall, selective,
                                len(bench.queries) / seconds, build_seconds, _dir_bytes(path),
                                (index.stats.rows_scored - before) / repeats / len(bench.queries), run)
                log(m.markdown())
                return m

            def reaches(knob) -> bool:
                _, probes, params = setting(knob)
                ids, _ = _index_run(index, bench, params, probes)()
                return min(bench.score(ids)) >= target

            mine = [measure(*setting(knob)) for knob in knobs]
            def measure_lowest(knob) -> Measurement:
                label, probes, params = setting(knob)
                return measure(f"{label} (lowest reaching {target})", probes, params)

            add_lowest_reaching(mine, knobs, reaches, midpoint, measure_lowest, target)
            out += mine
    return out


def _index_run(index: Index, bench: Workbench, params: SearchParams, probes: int | None) -> Callable[[], object]:
    """One search of the whole batch at one setting (its shards stay loaded after the first)."""
    def run():
        if probes is not None:
            index.plan.probes = probes
        return index.search(bench.queries, bench.predicates, bench.k, params)
    return run


def global_scann(vectors: np.ndarray):
    """One ScaNN searcher over all ``vectors`` (dot product), configured as ScaNN recommends:
    a tree of about sqrt(n) leaves, anisotropic AH (threshold 0.2), exact re-ordering."""
    from scann.scann_ops.py import scann_ops_pybind as sp

    n = len(vectors)
    leaves = max(2, round(math.sqrt(n)))
    return (sp.builder(vectors, 10, "dot_product").tree(leaves, 1, training_sample_size=min(n, 100_000))
            .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(100).build()), leaves


def scann_post_filter(bench: Workbench, repeats: int, log, target: float = 0.95) -> list[Measurement]:
    """One global ScaNN index; each query fetches overfetch * k / selectivity candidates, then filters.

    Swept over the over-fetch and the leaves searched, up to settings that reach
    high recall; then, at the first over-fetch reaching ``target``, the fewest leaves
    that still reach it are searched for, so the peer is compared at its best.
    """
    n = len(bench.vectors)
    start = time.perf_counter()
    searcher, num_leaves = global_scann(bench.vectors)
    build_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        searcher.serialize(tmp, relative_path=True)
        size = _dir_bytes(tmp)
    matches = {p: n if m is None else int(m.sum()) for p, m in bench.masks.items()}

    @functools.cache
    def fetch_groups(overfetch: int) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(bench.predicates):
            fetch = min(n, 1 << max(0, math.ceil(math.log2(max(1, overfetch * bench.k * n / max(1, matches[p]))))))
            groups.setdefault(fetch, []).append(i)
        return groups

    def run(overfetch: int, leaves: int) -> np.ndarray:
        ids = bench.no_ids()
        for fetch, members in fetch_groups(overfetch).items():
            rows, _ = searcher.search_batched_parallel(bench.queries[members], fetch, min(n, max(100, 10 * fetch)),
                                                       leaves)
            for row, q in zip(rows, members):
                mask = bench.masks[bench.predicates[q]]
                kept = row[row >= 0]
                kept = (kept if mask is None else kept[mask[kept]])[: bench.k]
                ids[q, : len(kept)] = bench.ids[kept]
        return ids

    def measure(overfetch: int, leaves: int, label: str = "") -> Measurement:
        seconds, ids = median_time(lambda: run(overfetch, leaves), repeats)
        recall, selective = bench.score(ids)
        scanned = np.mean([leaves * n / num_leaves + min(n, max(100, 10 * f))
                           for f, m in fetch_groups(overfetch).items() for _ in m])
        m = Measurement("ScaNN global post-filter",
                        f"{num_leaves} leaves, search {leaves}, over-fetch {overfetch}x{label}", recall, selective,
                        len(bench.queries) / seconds, build_seconds, size, float(scanned),
                        functools.partial(run, overfetch, leaves))
        log(m.markdown())
        return m

    settings = [(overfetch, max(1, num_leaves // share)) for overfetch, share in ((2, 16), (8, 8), (32, 4), (64, 2))]
    out = [measure(*setting) for setting in settings]
    # The fewest leaves reaching the target at the over-fetch of the first setting that reaches it.
    add_lowest_reaching(out, settings, lambda setting: min(bench.score(run(*setting))) >= target,
                        lambda low, high: (high[0], (low[1] + high[1]) // 2) if high[1] - low[1] > max(1, low[1] // 8)
                        else None,
                        lambda setting: measure(*setting, f" (fewest leaves reaching {target})"), target)
    return out


def faiss_pre_filter(bench: Workbench, repeats: int, log, nprobes: Sequence[int] = (32, 128, 512, 1024),
                     target: float = 0.95) -> list[Measurement]:
    """faiss IndexIVFFlat (inner product), queries grouped by predicate, one IDSelectorBitmap per group,
    each group threaded over its queries or, when it has few, over its inverted lists.

    After the sweep, the lowest nprobe that reaches ``target`` recall (mean and most
    selective decile) is searched for between the settings around it, so the peer is
    compared at its fastest setting that meets the target, not at a coarse grid point.
    """
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

    threads = faiss.omp_get_max_threads()

    def run(nprobe: int) -> np.ndarray:
        ids = bench.no_ids()
        for p, members in groups.items():
            # faiss threads over queries; a group with fewer queries than threads is faster
            # threaded over its inverted lists instead (parallel_mode 1).
            index.parallel_mode = 0 if len(members) >= 2 * threads else 1
            if bitmaps[p] is None:
                params = faiss.SearchParametersIVF(nprobe=nprobe)
            else:
                params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmaps[p])),
                                                   nprobe=nprobe)
            _, rows = index.search(bench.queries[members], bench.k, params=params)
            ids[members] = np.where(rows >= 0, bench.ids[np.maximum(rows, 0)], -1)
        return ids

    def measure(nprobe: int, label: str = "") -> Measurement:
        seconds, ids = median_time(lambda: run(nprobe), repeats)
        recall, selective = bench.score(ids)
        m = Measurement("faiss IVFFlat pre-filter", f"nlist {nlist}, nprobe {nprobe}{label}", recall, selective,
                        len(bench.queries) / seconds, build_seconds, size, nprobe * n / nlist,
                        functools.partial(run, nprobe))
        log(m.markdown())
        return m

    out = [measure(nprobe) for nprobe in nprobes]
    add_lowest_reaching(out, nprobes, lambda nprobe: min(bench.score(run(nprobe))) >= target,
                        lambda low, high: (low + high) // 2 if high - low > max(8, low // 16) else None,
                        lambda nprobe: measure(nprobe, f" (lowest reaching {target})"), target)
    return out


def add_lowest_reaching(swept: list[Measurement], knobs: Sequence[T], reaches: Callable[[T], bool],
                        midpoint: Callable[[T, T], T | None], measure_at: Callable[[T], Measurement],
                        target: float) -> None:
    """After a sweep (``swept[i]`` measured at ``knobs[i]``), append the measurement at the lowest
    setting reaching ``target`` recall (mean and most selective decile), bisected between the last
    swept knob short of it and the first that reaches it. Nothing is added when the first knob
    already reaches it, none does, or the bisection ends at the swept knob."""
    first = next((i for i, m in enumerate(swept) if min(m.recall, m.recall_selective) >= target), None)
    if first:
        knob = lowest_reaching(reaches, knobs[first - 1], knobs[first], midpoint)
        if knob != knobs[first]:
            swept.append(measure_at(knob))


def lowest_reaching(reaches: Callable[[T], bool], low: T, high: T, midpoint: Callable[[T, T], T | None]) -> T:
    """The lowest setting between ``low`` (short of the target) and ``high`` (reaching it), by
    bisection: every method is compared at its fastest setting that meets the target, not at a
    coarse grid point. ``midpoint`` gives None once ``low`` and ``high`` are close enough."""
    while (mid := midpoint(low, high)) is not None:
        low, high = (low, mid) if reaches(mid) else (mid, high)
    return high


SUMMARY_HEADER = ("| method | fastest setting with recall@10 >= {t} (mean and most selective 10%) | queries/s, "
                  "interleaved | beamvec workload is faster by |\n|---|---|---|---|")


def fastest_reaching(measurements: Sequence[Measurement], target: float = 0.95) -> dict[str, tuple[Measurement, bool]]:
    """Per method, its fastest setting with recall >= ``target`` on average and over the most
    selective decile, with True; or, when none does, its most accurate setting, with False."""
    out = {}
    for method in dict.fromkeys(m.method for m in measurements):
        mine = [m for m in measurements if m.method == method]
        reaching = [m for m in mine if m.recall >= target and m.recall_selective >= target]
        out[method] = ((max(reaching, key=lambda m: m.qps), True) if reaching
                       else (max(mine, key=lambda m: (min(m.recall, m.recall_selective), m.qps)), False))
    return out


def head_to_head(chosen: dict[str, tuple[Measurement, bool]], num_queries: int, rounds: int, log) -> dict[str, float]:
    """Queries/second of each chosen setting, re-run in turn ``rounds`` times (median): on a
    shared machine whose speed drifts over minutes, methods measured minutes apart are not
    compared fairly, interleaved runs are."""
    seconds: dict[str, list[float]] = {method: [] for method, (m, _) in chosen.items() if m.rerun is not None}
    for r in range(rounds):
        log(f"head-to-head round {r + 1}/{rounds}")
        for method in seconds:
            start = time.perf_counter()
            chosen[method][0].rerun()
            seconds[method].append(time.perf_counter() - start)
    return {method: num_queries / float(np.median(ts)) for method, ts in seconds.items()}


def summary(chosen: dict[str, tuple[Measurement, bool]], qps: dict[str, float], target: float = 0.95,
            ours: str = "beamvec workload") -> str:
    """Markdown: per method, its chosen setting (see :func:`fastest_reaching`), its interleaved
    queries/second, and how many times faster ``ours`` is. For a method that never reaches the
    target the ratio is a lower bound: reaching it would only slow the method down."""
    lines = [SUMMARY_HEADER.format(t=target)]
    for method, (m, reached) in chosen.items():
        accuracy = f"({m.recall:.4f} / {m.recall_selective:.4f})"
        setting = f"{m.setting} {accuracy}" if reached else f"not reached; most accurate: {m.setting} {accuracy}"
        ratio = ""
        if method != ours and ours in qps and chosen[ours][1] and method in qps:
            ratio = f"{'' if reached else '> '}{qps[ours] / qps[method]:.1f}x"
        lines.append(f"| {method} | {setting} | {qps.get(method, m.qps):,.0f} | {ratio} |")
    return "\n".join(lines)


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
        attribute: str = "category", partition_rows: tuple[int, int] = (10_000, 100_000), repeats: int = 3,
        seed: int = 0, log: Callable[[str], None] = print) -> list[Measurement]:
    """Run every method; write ``output``.json, .md and .png."""
    from beamvec.pipelines.jobs import read_workload

    if items_path:
        items = pq.read_table(items_path)
        if queries_path:
            queries, workload = pq.read_table(queries_path), None
        else:  # queries from the items themselves; the workload from a second, independent draw
            queries = synthetic.queries_from_items(items, num_queries, seed)
            workload = synthetic.queries_from_items(items, num_queries, seed + 1).column(PREDICATE).to_pylist()
    else:
        items = synthetic.make_items(num_items, dimension, seed)
        queries = synthetic.make_queries(num_queries, dimension, seed)
        workload = synthetic.random_predicates(num_queries, seed + 1)
    if workload_path:
        workload = read_workload(workload_path)
    log(f"{items.num_rows} items, {queries.num_rows} queries, k={k}")
    log(HEADER)
    bench, oracle = workbench(items, queries, workload, k, log)
    measurements = [oracle]
    measurements += beamvec_methods(bench, attribute, partition_rows, repeats, log)
    measurements += scann_post_filter(bench, repeats, log)
    measurements += faiss_pre_filter(bench, repeats, log)
    chosen = fastest_reaching(measurements)
    qps = head_to_head(chosen, len(bench.queries), repeats, log)
    table = summary(chosen, qps)
    log(table)
    with open(f"{output}.json", "w") as f:
        json.dump({"measurements": [m.to_json() for m in measurements],
                   "head_to_head": [{"method": method, "setting": m.setting, "reaches_target": reached,
                                     "qps": qps.get(method)} for method, (m, reached) in chosen.items()]}, f, indent=2)
    with open(f"{output}.md", "w") as f:
        f.write(HEADER + "\n" + "\n".join(m.markdown() for m in measurements) + "\n\n" + table + "\n")
    plot(measurements, f"{output}.png")
    log(f"wrote {output}.json, {output}.md, {output}.png")
    return measurements
