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

A batch job sees each batch of queries once, so every timed run is a *fresh batch*
(:class:`Run`, :func:`clock`): beamvec's caches of everything learnt from predicates
(parses, validation, routes, masks) are cleared before it, outside the clock
(:meth:`beamvec.index.Index.clear_caches`; shards stay loaded), and the peers parse
and evaluate every distinct predicate of the batch inside the clock, with the faster
of the evaluators available to them (:func:`pick_evaluator`: pyarrow compute over the
table, or beamvec's own). The sweep and bisection pick settings by fresh timings.
For each method's chosen setting the head-to-head also times the *repeated batch*
(the same batch again: beamvec with its caches warm, the peers with their masks
precomputed outside the clock), so both figures come from the same interleaved rounds.

Items, queries and the workload log come from a generator (``catalog`` or
``tenants``, :data:`beamvec.pipelines.synthetic.GENERATORS`) or from an items file. The
log is drawn independently of the queries and carries query vectors: every beamvec
index calibrates on them, and reports its recall on the log's held-out part
(``heldout_recall`` in its manifest).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
import time
from typing import Callable, NamedTuple, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from beamvec.index import Index, build_index, exact
from beamvec.pipelines import synthetic
from beamvec.index.columns import Columns, list_elements
from beamvec.index.masks import MaskCache
from beamvec.index.plan import fit_plan
from beamvec.index.predicate import And, Between, BoolColumn, Compare, Contains, IsNull, Not, Or
from beamvec.index.parser import parse
from beamvec.index.querylog import QueryLog
from beamvec.index.schema import PREDICATE, validate_items, validate_queries
from beamvec.index.shard import clear_predicate_caches
from beamvec.index.shardspec import SearchParams

T = TypeVar("T")
# Leaves scales beamvec is swept over (the calibrated leaves times these).
LEAVES_SCALES = (0.25, 0.5, 1.0, 2.0)
# What --methods can name: the beamvec partitioners, then the peers.
BEAMVEC_METHODS = ("workload", "hash", "attribute", "kmeans")
METHODS = BEAMVEC_METHODS + ("scann", "faiss", "exact")
OURS = "beamvec workload"


def _nothing() -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Run:
    """One timed search of a method's whole query batch at one setting.

    ``reset`` runs first, outside the clock (a fresh batch: beamvec clears its
    caches, a peer its parsed predicates); then ``search`` runs, timed. ``fresh``
    says which of the two batches it is; ``index`` is beamvec's opened index (None
    for the peers).
    """

    method: str
    fresh: bool
    search: Callable[[], object]
    reset: Callable[[], None] = _nothing
    index: Index | None = None


def clock(run: Run) -> tuple[float, object]:
    """``run.reset()`` untimed, then the wall seconds of ``run.search()`` and its result."""
    run.reset()
    start = time.perf_counter()
    out = run.search()
    return time.perf_counter() - start, out


def timed(run: Run, repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` clocked runs (each reset first), and the last run's result."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        seconds, out = clock(run)
        times.append(seconds)
    return float(np.median(times)), out


@dataclasses.dataclass
class Measurement:
    """One method at one setting. ``qps`` is on a fresh batch; ``repeated_qps`` (the chosen
    settings only, from the head-to-head) on the same batch run again."""

    method: str
    setting: str
    recall: float
    recall_selective: float
    qps: float
    build_seconds: float
    index_bytes: int
    rows_scored: float
    repeated_qps: float | None = None
    # The setting's whole query batch as a fresh and as a repeated batch (for the interleaved head-to-head).
    fresh_run: Run | None = dataclasses.field(default=None, repr=False, compare=False)
    repeated_run: Run | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("fresh_run", "repeated_run")}

    def markdown(self) -> str:
        return (f"| {self.method} | {self.setting} | {self.recall:.4f} | {self.recall_selective:.4f} | {self.qps:,.0f} | "
                f"{self.build_seconds:.1f} | {self.index_bytes / 2**20:,.1f} | {self.rows_scored:,.0f} |")


HEADER = ("| method | setting | recall@10 | recall@10, most selective 10% | queries/s, fresh batch | build s | "
          "index MiB | rows scored / query |\n|---|---|---|---|---|---|---|---|")

Evaluator = Callable[[Sequence[str]], dict]
"""Masks of predicate texts over the items: {text: bool row mask, or None for every row}."""


_ARROW_OPS = {"=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
              ">=": pc.greater_equal}


def pyarrow_evaluator(table: pa.Table) -> Evaluator:
    """Each text parsed and evaluated with pyarrow compute over ``table``, as a user without beamvec
    would filter a table: one compute call per atom, Kleene AND/OR/NOT, nulls as not true. (Literals
    are compared as given: exact for the benchmark's data, whose literals match their columns' types.)"""
    def node(p):
        if isinstance(p, Not):
            return pc.invert(node(p.part))
        if isinstance(p, (And, Or)):
            return functools.reduce(pc.and_kleene if isinstance(p, And) else pc.or_kleene, map(node, p.parts))
        column = table.column(p.column)
        if isinstance(p, IsNull):
            return pc.is_valid(column) if p.negated else pc.is_null(column)
        if isinstance(p, BoolColumn):
            return column
        if isinstance(p, Compare):
            return _ARROW_OPS[p.op](column, p.value)
        if isinstance(p, Contains):  # per value, the rows of the elements equal to it
            parents, elements = list_elements(column.combine_chunks())
            held = [np.bincount(parents[np.asarray(pc.fill_null(pc.equal(elements, v), False))],
                                minlength=len(column)) > 0 for v in p.values]
            found = np.logical_and.reduce(held) if p.mode == "all" else np.logical_or.reduce(held)
            inside = pc.if_else(pc.is_null(column), pa.scalar(None, pa.bool_()), pa.array(found))
        elif isinstance(p, Between):
            inside = pc.and_kleene(pc.greater_equal(column, p.low), pc.less_equal(column, p.high))
        else:  # In
            inside = pc.if_else(pc.is_null(column), pa.scalar(None, pa.bool_()),
                                pc.is_in(column, value_set=pa.array(list(p.values), column.type)))
        return pc.invert(inside) if p.negated else inside

    def evaluate(texts: Sequence[str]) -> dict:
        return {t: np.asarray(pc.fill_null(node(parse(t)), False).to_numpy(zero_copy_only=False), bool)
                for t in texts}
    return evaluate


def beamvec_evaluator(table: pa.Table) -> Evaluator:
    """Each text parsed and evaluated by beamvec's own evaluator, a fresh :class:`MaskCache` per call
    over the table's columns, encoded on first use and kept, as a loaded shard keeps its encoded
    columns; predicates are compiled again on every call, as on a fresh batch."""
    columns = Columns(table)

    def evaluate(texts: Sequence[str]) -> dict:
        columns.forget_programs()
        cache = MaskCache(columns)
        return {t: cache.mask(parse(t)) for t in texts}
    return evaluate


@dataclasses.dataclass
class Workbench:
    """Items, queries, masks and the exact answer every method is scored against.

    ``masks`` maps each predicate text of the batch (None and '' to None: no filter)
    to its mask, computed once: the repeated batch's masks. :meth:`fresh_masks`
    computes them again with ``evaluate``, the peers' evaluator: the fresh batch's.
    """

    ids: np.ndarray
    vectors: np.ndarray
    attributes: pa.Table
    queries: np.ndarray
    predicates: list[str | None]
    log: QueryLog
    masks: dict
    truth: np.ndarray
    selective: np.ndarray
    k: int
    evaluate: Evaluator | None = None
    evaluator: str = "pyarrow"

    @property
    def workload(self) -> list[str | None]:
        """The workload log's predicates (what the partitioners are fitted on)."""
        return self.log.predicates

    @property
    def distinct(self) -> list[str]:
        """The batch's distinct predicate texts that filter (not None or '')."""
        return [p for p in self.masks if p]

    def fresh_masks(self) -> dict:
        """Every predicate of the batch parsed and evaluated again, as a fresh batch must."""
        out = {p: None for p in self.masks if not p}
        out.update((self.evaluate or pyarrow_evaluator(self.attributes))(self.distinct))
        return out

    def no_ids(self) -> np.ndarray:
        """A (queries, k) id array of the items' id type, -1 (no result) everywhere."""
        return np.full((len(self.queries), self.k), -1, self.ids.dtype)

    def score(self, found_ids: np.ndarray) -> tuple[float, float]:
        recall = exact.recall(found_ids, self.truth)
        return float(recall.mean()), float(recall[self.selective].mean())


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _differing(a: dict, b: dict, rows: int) -> list[str]:
    """The texts whose masks differ (None standing for every row)."""
    everything = np.ones(rows, bool)
    return [t for t in a if not np.array_equal(everything if a[t] is None else a[t],
                                               everything if b[t] is None else b[t])]


def pick_evaluator(table: pa.Table, texts: Sequence[str], log) -> tuple[str, Evaluator, dict, dict]:
    """Time pyarrow's and beamvec's evaluators on ``texts`` (each once, fresh) and pick the faster for
    the peers. Returns (its name, it, pyarrow's masks: the reference, the two timings in seconds).
    beamvec's is timed after one untimed call that encodes the columns (kept, as in a loaded shard);
    if it disagrees with pyarrow on any text, the peers use pyarrow."""
    arrow, ours = pyarrow_evaluator(table), beamvec_evaluator(table)
    clear_predicate_caches()
    start = time.perf_counter()
    reference = arrow(texts)
    seconds = {"pyarrow": time.perf_counter() - start}
    clear_predicate_caches()
    start = time.perf_counter()
    ours(texts)  # encodes the columns the predicates read
    encoding = time.perf_counter() - start
    clear_predicate_caches()
    start = time.perf_counter()
    mine = ours(texts)
    seconds["beamvec"] = time.perf_counter() - start
    differ = _differing(reference, mine, table.num_rows)
    name = "beamvec" if seconds["beamvec"] < seconds["pyarrow"] and not differ else "pyarrow"
    log(f"peers' predicate evaluator: {name} ({len(texts)} distinct predicates: pyarrow compute "
        f"{seconds['pyarrow']:.3f} s, beamvec MaskCache {seconds['beamvec']:.3f} s, "
        f"its first call with column encoding {encoding:.3f} s)")
    if differ:
        log(f"WARNING: beamvec's evaluator disagrees with pyarrow on {len(differ)} predicates, "
            f"e.g. {differ[0]!r}; the peers use pyarrow")
    return name, arrow if name == "pyarrow" else ours, reference, {**seconds, "beamvec_first_call": encoding}


def workbench(items: pa.Table, queries: pa.Table, log_queries: QueryLog | Sequence[str | None] | None, k: int, log,
              time_oracle: bool = True, repeats: int = 1, peers: bool = True) -> tuple[Workbench, Measurement | None]:
    """Validate the inputs, pick the peers' evaluator (with ``peers`` or ``time_oracle``; else pyarrow's,
    unused), compute the exact answer; with ``time_oracle``, timed on a fresh batch (that is the
    oracle's own row)."""
    valid = validate_items(items)
    dimension = valid.vectors.shape[1]
    checked = validate_queries(queries, dimension)
    predicates = checked.table.column(PREDICATE).to_pylist() if PREDICATE in checked.table.column_names \
        else [None] * checked.table.num_rows
    if log_queries is None or not len(log_queries):
        log_queries = QueryLog(predicates)  # no log: the queries' own predicates (no vectors)
    elif not isinstance(log_queries, QueryLog):
        log_queries = QueryLog(list(log_queries))
    attributes = valid.table.drop_columns(["vector"])
    texts = list(dict.fromkeys(p for p in predicates if p))
    if peers or time_oracle:
        name, evaluate, reference, _ = pick_evaluator(attributes, texts, log)
    else:  # no peer to time: masks for the exact answer only
        name, evaluate = "pyarrow", pyarrow_evaluator(attributes)
        reference = evaluate(texts)
    masks = {p: None for p in dict.fromkeys(predicates) if not p}
    masks.update(reference)
    matches = np.array([len(valid.vectors) if masks[p] is None else int(masks[p].sum()) for p in predicates])
    ids = valid.table.column("id").to_numpy(zero_copy_only=False)
    bench = Workbench(ids, valid.vectors, attributes, checked.vectors, predicates, log_queries, masks,
                      np.zeros(0), np.zeros(0, bool), k, evaluate, name)

    def oracle(masks_of: Callable[[], dict]) -> Callable[[], object]:
        def search():
            batch = masks_of()
            return exact.search(bench.vectors, bench.queries, k, "dot_product", [batch[p] for p in predicates])
        return search

    method = "exact pre-filter"
    fresh = Run(method, True, oracle(bench.fresh_masks), clear_predicate_caches)
    repeated = Run(method, False, oracle(lambda: bench.masks))
    if time_oracle:
        seconds, (rows, _) = timed(fresh, repeats)
    else:
        rows, _ = repeated.search()
    bench.truth = exact.ids_of_rows(ids, rows)
    bench.selective = matches <= np.quantile(matches, 0.1)
    if not time_oracle:
        return bench, None
    measured = Measurement(method, f"numpy, grouped by predicate, {name} masks", 1.0, 1.0, len(predicates) / seconds,
                           0.0, valid.vectors.nbytes, float(matches.mean()), fresh_run=fresh, repeated_run=repeated)
    log(measured.markdown())
    return bench, measured


def _heldout_text(heldout: dict | None) -> str:
    if not heldout or not heldout.get("queries"):
        return "no held-out log queries (the log carries no vectors)"
    return (f"held-out recall@{heldout['k']} on {heldout['queries']} log queries: mean {heldout['mean']:.4f}, "
            f"most selective 10% {heldout['selective']:.4f}")


def beamvec_methods(bench: Workbench, attribute: str, partition_rows: tuple[int, int], repeats: int, log,
                    sample_rows: int = 50_000, target: float = 0.95,
                    methods: Sequence[str] = BEAMVEC_METHODS) -> tuple[list[Measurement], dict]:
    """beamvec with each partitioner in ``methods``, swept over the leaves searched (kmeans: over the
    partitions probed). As for the peers, the lowest setting reaching ``target`` recall is then
    searched for by bisection (see :func:`lowest_reaching`). Every index is built with the workload
    log (its shards calibrate on the log's query vectors). Returns the measurements and, per
    method, the manifest's held-out recall."""
    out, heldout = [], {}
    n = len(bench.vectors)
    sample = np.sort(np.random.default_rng(0).choice(n, min(sample_rows, n), replace=False))
    count = None
    for spec in (s if s != "attribute" else f"attribute:{attribute}" for s in BEAMVEC_METHODS if s in methods):
        with tempfile.TemporaryDirectory(prefix="beamvec-compare-") as path:
            start = time.perf_counter()
            plan = fit_plan(spec, bench.attributes.take(pa.array(sample)), bench.vectors[sample], bench.workload,
                            *partition_rows, total_rows=n, partitions=count)
            count = count or plan.num_partitions
            manifest = build_index(path, pa.array(bench.ids), bench.vectors, bench.attributes, plan=plan,
                                   log=bench.log)
            build_seconds = time.perf_counter() - start
            heldout[f"beamvec {spec}"] = manifest.heldout_recall
            log(f"beamvec {spec}: built in {build_seconds:.1f} s; {_heldout_text(manifest.heldout_recall)}")
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
                fresh, repeated = _index_runs(f"beamvec {spec}", index, bench, params, probes)
                before = index.stats.rows_scored
                seconds, (ids, _) = timed(fresh, repeats)
                recall, selective = bench.score(ids)
                m = Measurement(f"beamvec {spec}", f"{plan.num_partitions} partitions, {label}", recall, selective,
                                len(bench.queries) / seconds, build_seconds, _dir_bytes(path),
                                (index.stats.rows_scored - before) / max(1, repeats) / len(bench.queries),
                                fresh_run=fresh, repeated_run=repeated)
                log(m.markdown())
                return m

            def reaches(knob) -> bool:
                _, probes, params = setting(knob)
                ids, _ = _index_runs(f"beamvec {spec}", index, bench, params, probes)[1].search()
                return min(bench.score(ids)) >= target

            mine = [measure(*setting(knob)) for knob in knobs]

            def measure_lowest(knob) -> Measurement:
                label, probes, params = setting(knob)
                return measure(f"{label} (lowest reaching {target})", probes, params)

            add_lowest_reaching(mine, knobs, reaches, midpoint, measure_lowest, target)
            out += mine
    return out, heldout


def _index_runs(method: str, index: Index, bench: Workbench, params: SearchParams,
                probes: int | None) -> tuple[Run, Run]:
    """(fresh, repeated) searches of the whole batch at one setting (shards stay loaded after the
    first). The fresh one clears every cache learnt from predicates first, outside the clock."""
    def search():
        if probes is not None:
            index.plan.probes = probes
        return index.search(bench.queries, bench.predicates, bench.k, params)
    return Run(method, True, search, index.clear_caches, index), Run(method, False, search, index=index)


def _phase_seconds(stats) -> dict[str, float]:
    """Seconds per search phase in ``stats``: its ``seconds`` dict, or its ``seconds_*`` fields."""
    out = {}
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if f.name == "seconds" and isinstance(value, dict):
            out.update((str(phase), float(v)) for phase, v in value.items())
        elif f.name.startswith("seconds_"):
            out[f.name[len("seconds_"):]] = float(value)
    return out


def search_profile(run: Run) -> dict[str, float] | None:
    """Where one run of the batch (``run``, reset first) spent its time: the seconds per phase the
    index's :class:`SearchStats` add up over it, and its wall seconds (``wall``); None when the
    stats time no phases."""
    index = run.index
    if index is None or not _phase_seconds(index.stats):
        return None
    before = _phase_seconds(index.stats)
    seconds, _ = clock(run)
    after = _phase_seconds(index.stats)
    return {**{phase: after[phase] - before.get(phase, 0.0) for phase in after}, "wall": seconds}


def profile_text(method: str, profile: dict[str, float]) -> str:
    wall = profile["wall"]
    parts = ", ".join(f"{phase} {value:.3f} s ({value / wall:.0%})" for phase, value in profile.items()
                      if phase != "wall")
    return (f"{method} search profile, one fresh batch, {wall:.3f} s wall (per-shard phases sum over "
            f"workers, so they may add up to more): {parts}")


def global_scann(vectors: np.ndarray):
    """One ScaNN searcher over all ``vectors`` (dot product), configured as ScaNN recommends:
    a tree of about sqrt(n) leaves, anisotropic AH (threshold 0.2), exact re-ordering."""
    from beamvec.index.shardspec import scann

    sp = scann()
    n = len(vectors)
    leaves = max(2, round(math.sqrt(n)))
    return (sp.builder(vectors, 10, "dot_product").tree(leaves, 1, training_sample_size=min(n, 100_000))
            .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(100).build()), leaves


def _matches(masks: dict, n: int) -> dict:
    return {p: n if m is None else int(m.sum()) for p, m in masks.items()}


def scann_post_filter(bench: Workbench, repeats: int, log, target: float = 0.95) -> list[Measurement]:
    """One global ScaNN index; each query fetches overfetch * k / selectivity candidates, then filters.

    Swept over the over-fetch and the leaves searched, up to settings that reach
    high recall; then, at the first over-fetch reaching ``target``, the fewest leaves
    that still reach it are searched for, so the peer is compared at its best.
    A fresh batch evaluates its masks (and so each query's selectivity) inside the clock.
    """
    n = len(bench.vectors)
    start = time.perf_counter()
    searcher, num_leaves = global_scann(bench.vectors)
    build_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        searcher.serialize(tmp, relative_path=True)
        size = _dir_bytes(tmp)
    method = "ScaNN global post-filter"

    def fetch_groups(overfetch: int, matches: dict) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(bench.predicates):
            fetch = min(n, 1 << max(0, math.ceil(math.log2(max(1, overfetch * bench.k * n / max(1, matches[p]))))))
            groups.setdefault(fetch, []).append(i)
        return groups

    repeated_groups = functools.cache(lambda overfetch: fetch_groups(overfetch, _matches(bench.masks, n)))

    def run(overfetch: int, leaves: int, fresh: bool) -> np.ndarray:
        if fresh:
            masks = bench.fresh_masks()
            groups = fetch_groups(overfetch, _matches(masks, n))
        else:
            masks, groups = bench.masks, repeated_groups(overfetch)
        ids = bench.no_ids()
        for fetch, members in groups.items():
            rows, _ = searcher.search_batched_parallel(bench.queries[members], fetch, min(n, max(100, 10 * fetch)),
                                                       leaves)
            for row, q in zip(rows, members):
                mask = masks[bench.predicates[q]]
                kept = row[row >= 0]
                kept = (kept if mask is None else kept[mask[kept]])[: bench.k]
                ids[q, : len(kept)] = bench.ids[kept]
        return ids

    def measure(overfetch: int, leaves: int, label: str = "") -> Measurement:
        fresh = Run(method, True, functools.partial(run, overfetch, leaves, True), clear_predicate_caches)
        seconds, ids = timed(fresh, repeats)
        recall, selective = bench.score(ids)
        scanned = np.mean([leaves * n / num_leaves + min(n, max(100, 10 * f))
                           for f, m in repeated_groups(overfetch).items() for _ in m])
        m = Measurement(method, f"{num_leaves} leaves, search {leaves}, over-fetch {overfetch}x{label}", recall,
                        selective, len(bench.queries) / seconds, build_seconds, size, float(scanned),
                        fresh_run=fresh, repeated_run=Run(method, False, functools.partial(run, overfetch, leaves, False)))
        log(m.markdown())
        return m

    settings = [(overfetch, max(1, num_leaves // share)) for overfetch, share in ((2, 16), (8, 8), (32, 4), (64, 2))]
    out = [measure(*setting) for setting in settings]
    # The fewest leaves reaching the target at the over-fetch of the first setting that reaches it.
    add_lowest_reaching(out, settings, lambda setting: min(bench.score(run(*setting, False))) >= target,
                        lambda low, high: (high[0], (low[1] + high[1]) // 2) if high[1] - low[1] > max(1, low[1] // 8)
                        else None,
                        lambda setting: measure(*setting, f" (fewest leaves reaching {target})"), target)
    return out


def faiss_pre_filter(bench: Workbench, repeats: int, log, nprobes: Sequence[int] = (32, 128, 512, 1024),
                     target: float = 0.95) -> list[Measurement]:
    """faiss IndexIVFFlat (inner product), queries grouped by predicate, one IDSelectorBitmap per group,
    each group threaded over its queries or, when it has few, over its inverted lists.

    Past ``nprobes``, nprobe doubles up to every list (exhaustive: the bitmap filters every row)
    until the target is reached. Then the lowest nprobe that reaches ``target`` recall (mean and most
    selective decile) is searched for between the settings around it, so the peer is
    compared at its fastest setting that meets the target, not at a coarse grid point.
    A fresh batch groups its queries, evaluates the masks and packs the bitmaps inside the clock.
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
    method = "faiss IVFFlat pre-filter"

    def grouped(masks: dict) -> tuple[dict, dict]:
        groups: dict = {}
        for i, p in enumerate(bench.predicates):
            groups.setdefault(p, []).append(i)
        return groups, {p: None if masks[p] is None else np.packbits(masks[p], bitorder="little") for p in groups}

    repeated_groups, repeated_bitmaps = grouped(bench.masks)
    threads = faiss.omp_get_max_threads()

    def run(nprobe: int, fresh: bool) -> np.ndarray:
        groups, bitmaps = grouped(bench.fresh_masks()) if fresh else (repeated_groups, repeated_bitmaps)
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
        fresh = Run(method, True, functools.partial(run, nprobe, True), clear_predicate_caches)
        seconds, ids = timed(fresh, repeats)
        recall, selective = bench.score(ids)
        m = Measurement(method, f"nlist {nlist}, nprobe {nprobe}{label}", recall, selective,
                        len(bench.queries) / seconds, build_seconds, size, nprobe * n / nlist,
                        fresh_run=fresh, repeated_run=Run(method, False, functools.partial(run, nprobe, False)))
        log(m.markdown())
        return m

    # Past the sweep, nprobe doubles up to every list (exhaustive, bitmap-filtered) until one reaches the target.
    knobs = sorted({min(p, nlist) for p in nprobes})
    while knobs[-1] < nlist:
        knobs.append(min(2 * knobs[-1], nlist))
    out: list[Measurement] = []
    for nprobe in knobs:
        out.append(measure(nprobe))
        if nprobe >= max(nprobes) and min(out[-1].recall, out[-1].recall_selective) >= target:
            break
    add_lowest_reaching(out, knobs, lambda nprobe: min(bench.score(run(nprobe, False))) >= target,
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


class Speeds(NamedTuple):
    """Queries/second of one chosen setting in the head-to-head: fresh batch, repeated batch."""

    fresh: float
    repeated: float | None = None


SUMMARY_HEADER = ("| method | fastest setting with recall@10 >= {t} (mean and most selective 10%) | queries/s, "
                  "fresh batch | queries/s, repeated batch | fresh / repeated | beamvec workload is faster by "
                  "(fresh) |\n|---|---|---|---|---|---|")


def fastest_reaching(measurements: Sequence[Measurement], target: float = 0.95) -> dict[str, tuple[Measurement, bool]]:
    """Per method, its fastest setting (fresh batch) with recall >= ``target`` on average and over the
    most selective decile, with True; or, when none does, its most accurate setting, with False."""
    out = {}
    for method in dict.fromkeys(m.method for m in measurements):
        mine = [m for m in measurements if m.method == method]
        reaching = [m for m in mine if m.recall >= target and m.recall_selective >= target]
        out[method] = ((max(reaching, key=lambda m: m.qps), True) if reaching
                       else (max(mine, key=lambda m: (min(m.recall, m.recall_selective), m.qps)), False))
    return out


def head_to_head(chosen: dict[str, tuple[Measurement, bool]], num_queries: int, rounds: int, log) -> dict[str, Speeds]:
    """Queries/second of each chosen setting on a fresh and on a repeated batch, re-run in turn
    ``rounds`` times (median): on a shared machine whose speed drifts over minutes, methods measured
    minutes apart are not compared fairly, interleaved runs are. Each method's repeated run follows
    its fresh one (beamvec's caches are then warm with this very batch). Sets each chosen
    measurement's ``repeated_qps``."""
    seconds: dict[str, dict[bool, list[float]]] = {
        method: {True: [], False: []} for method, (m, _) in chosen.items() if m.fresh_run is not None}
    for r in range(rounds):
        log(f"head-to-head round {r + 1}/{rounds}")
        for method in seconds:
            m = chosen[method][0]
            for run in (m.fresh_run, m.repeated_run):
                if run is not None:
                    seconds[method][run.fresh].append(clock(run)[0])
    out = {}
    for method, times in seconds.items():
        repeated = num_queries / float(np.median(times[False])) if times[False] else None
        out[method] = Speeds(num_queries / float(np.median(times[True])), repeated)
        chosen[method][0].repeated_qps = repeated
    return out


def summary(chosen: dict[str, tuple[Measurement, bool]], speeds: dict[str, Speeds], target: float = 0.95,
            ours: str = OURS) -> str:
    """Markdown: per method, its chosen setting (see :func:`fastest_reaching`), its interleaved
    queries/second on a fresh and on a repeated batch, their ratio, and how many times faster
    ``ours`` is on a fresh batch. For a method that never reaches the target the ratio is a lower
    bound: reaching it would only slow the method down."""
    lines = [SUMMARY_HEADER.format(t=target)]
    for method, (m, reached) in chosen.items():
        accuracy = f"({m.recall:.4f} / {m.recall_selective:.4f})"
        setting = f"{m.setting} {accuracy}" if reached else f"not reached; most accurate: {m.setting} {accuracy}"
        speed = speeds.get(method, Speeds(m.qps, m.repeated_qps))
        repeated = f"{speed.repeated:,.0f}" if speed.repeated else ""
        share = f"{speed.fresh / speed.repeated:.2f}" if speed.repeated else ""
        ratio = ""
        if method != ours and ours in speeds and chosen[ours][1] and method in speeds:
            ratio = f"{'' if reached else '> '}{speeds[ours].fresh / speeds[method].fresh:.1f}x"
        lines.append(f"| {method} | {setting} | {speed.fresh:,.0f} | {repeated} | {share} | {ratio} |")
    return "\n".join(lines)


def plot(measurements: Sequence[Measurement], path: str) -> None:
    """Recall against queries/second on a fresh batch, one line per method (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for method in dict.fromkeys(m.method for m in measurements):
        points = sorted((m.qps, m.recall) for m in measurements if m.method == method)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("queries/second, fresh batch (log)")
    ax.set_ylabel("recall@10")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_of(table: pa.Table) -> QueryLog:
    """A workload log of a queries table: its predicates and vectors."""
    vectors = table.column("vector").combine_chunks()
    dimension = len(vectors[0]) if len(vectors) else 0
    return QueryLog(table.column(PREDICATE).to_pylist(),
                    vectors.flatten().to_numpy(zero_copy_only=False).reshape(-1, dimension))


def generated(generator: str, num_items: int, dimension: int, num_queries: int,
              seed: int) -> tuple[pa.Table, pa.Table, QueryLog]:
    """Items, queries and a workload log with vectors (:func:`beamvec.pipelines.synthetic.generate`)."""
    items, queries, log = synthetic.generate(generator, num_items, dimension, num_queries, seed)
    return items, queries, log_of(log)


def run(output: str, items_path: str | None = None, queries_path: str | None = None, workload_path: str | None = None,
        num_items: int = 200_000, dimension: int = 96, num_queries: int = 5_000, k: int = 10,
        attribute: str | None = None, partition_rows: tuple[int, int] = (10_000, 100_000), repeats: int = 3,
        seed: int = 0, log: Callable[[str], None] = print, generator: str = "catalog",
        methods: Sequence[str] = METHODS) -> list[Measurement]:
    """Run every method in ``methods`` (see :data:`METHODS`); write ``output``.json, .md and .png.

    ``attribute`` (for the attribute partitioner) defaults to the generator's main column
    (catalog: category, tenants: tenant).
    """
    from beamvec.index.querylog import read_workload

    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; expected some of {', '.join(METHODS)}")
    if items_path:
        items = pq.read_table(items_path)
        source = items_path
        if queries_path:
            queries, workload = pq.read_table(queries_path), None
        else:  # queries from the items themselves; the workload from a second, independent draw
            queries = synthetic.queries_from_items(items, num_queries, seed)
            workload = log_of(synthetic.queries_from_items(items, num_queries, seed + 1))
    else:
        source = f"generator {generator}"
        items, queries, workload = generated(generator, num_items, dimension, num_queries, seed)
    if workload_path:
        workload = read_workload(workload_path, validate_items(items.slice(0, 1)).vectors.shape[1])
    if attribute is None and not items_path and generator == "tags":  # no scalar column to partition by
        methods = [m for m in methods if m != "attribute"]
    attribute = attribute or ("tenant" if not items_path and generator == "tenants" else "category")
    log(f"{items.num_rows} items ({source}), {queries.num_rows} queries, k={k}; workload log: "
        f"{len(workload) if workload is not None else 0} queries, "
        f"{len(workload.vectors) if isinstance(workload, QueryLog) and workload.has_vectors else 0} with vectors; "
        f"methods: {', '.join(m for m in METHODS if m in methods)}")
    log("every timed run is a fresh batch (caches cleared, masks evaluated inside the clock); "
        "repeated-batch figures (same batch again, caches warm / masks precomputed) are in the head-to-head")
    log(HEADER)
    if "attribute" in methods and attribute not in items.column_names:
        raise ValueError(f"the attribute partitioner's column {attribute!r} is not among the items' columns "
                         f"{items.column_names}: pass --attribute, or leave attribute out of --methods")
    bench, oracle = workbench(items, queries, workload, k, log, time_oracle="exact" in methods,
                              peers=bool({"scann", "faiss"} & set(methods)))
    measurements = [oracle] if oracle else []
    ours, heldout = beamvec_methods(bench, attribute, partition_rows, repeats, log, methods=methods)
    measurements += ours
    if "scann" in methods:
        measurements += scann_post_filter(bench, repeats, log)
    if "faiss" in methods:
        measurements += faiss_pre_filter(bench, repeats, log)
    chosen = fastest_reaching(measurements)
    speeds = head_to_head(chosen, len(bench.queries), repeats, log)
    profile = search_profile(chosen[OURS][0].fresh_run) if OURS in chosen else None
    if profile:
        log(profile_text(OURS, profile))
    table = summary(chosen, speeds)
    log(table)
    for method, recall in heldout.items():
        log(f"{method}: {_heldout_text(recall)}")
    with open(f"{output}.json", "w") as f:
        json.dump({"generator": None if items_path else generator, "items": items.num_rows,
                   "queries": len(bench.queries), "evaluator": bench.evaluator,
                   "measurements": [m.to_json() for m in measurements],
                   "head_to_head": [{"method": method, "setting": m.setting, "reaches_target": reached,
                                     "qps": speeds[method].fresh if method in speeds else None,
                                     "fresh_qps": speeds[method].fresh if method in speeds else None,
                                     "repeated_qps": speeds[method].repeated if method in speeds else None}
                                    for method, (m, reached) in chosen.items()],
                   "heldout_recall": heldout, "search_profile": profile}, f, indent=2)
    with open(f"{output}.md", "w") as f:
        f.write(HEADER + "\n" + "\n".join(m.markdown() for m in measurements) + "\n\n" + table + "\n")
    plot(measurements, f"{output}.png")
    log(f"wrote {output}.json, {output}.md, {output}.png")
    return measurements
