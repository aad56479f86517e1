"""A shard: one ScaNN searcher over a set of rows, with their ids and attributes beside it.

Build once (``Shard.build``), save as a directory (``save``), load anywhere
(``Shard.load``), answer batches of filtered queries (``search``). Each query of a
batch gets the strategy its predicate's selectivity calls for:

* pre-filter: exact scores of only the rows a query may return. Rows are stored
  sorted by the workload's filter columns (:mod:`beamvec.index.layout`), so a
  predicate's matches mostly form one run: groups of queries score their run (a
  slice), groups with overlapping runs share one masked matrix product (HQI's
  multi-query optimisation), and very selective groups score their gathered rows;
* post-filter: ScaNN over all rows with an over-fetch sized from the selectivity,
  then the filter; one ``search_batched`` call per fetch size. A query left with
  fewer than min(k, matching rows) results falls back to pre-filter, so every query
  gets min(k, matching rows) results.

A cost model with a tunable ratio (:class:`SearchParams`) picks between the two.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import tempfile
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.index import exact, fs, layout, selection
from beamvec.index.columns import Columns
from beamvec.index.masks import MaskCache
from beamvec.index.predicate import Predicate, clear_reasoning_cache
from beamvec.index.parser import parse_shared
from beamvec.index.stats import SearchStats

FORMAT = "beamvec.shard"
FORMAT_VERSION = 1
HEADER = "shard.json"
ROWS = "rows.parquet"
DATASET = "dataset.npy"
ASSETS = "scann_assets.pbtxt"

# Shards up to this many rows are searched by brute force.
BRUTE_FORCE_ROWS = 4_096
# Seeds and the unbalanced k-means trainer make ScaNN's build deterministic:
# identical input gives identical partitions, codebooks and results.
_DETERMINISTIC_PARTITIONING = "partitioning {\n  clustering_seed: 1\n  balancing_type: DEFAULT_UNBALANCED\n"
# Rows ScaNN trains its 16-centre codebooks on (the tree trains on up to 100k rows: a
# tree fitted to a small sample cost 3 points of recall on unseen queries, measured).
_AH_SAMPLE = 5_000
_CALIBRATION_QUERIES = 128
_CALIBRATION_K = 10
_CALIBRATION_FETCHES = (10, 128, 512)
# Calibrate a little above the target: the sample's rows stand in for unseen queries.
_CALIBRATION_MARGIN = 0.02
# Unfiltered top-10 typically needs a few percent of the leaves: the first guess is 1/16 of them.
_CALIBRATION_FIRST_GUESS = 16
# Estimated cost of each strategy in nanoseconds, measured side by side on a 2-core AVX2
# machine (one thread each); only their ratios matter.
_COST_DENSE_ROW = 8.0  # exact scoring, per query and row of a product shared by many queries
_COST_RUN_ROW = 40.0  # per row of a product, once: reading it (dominates for a few queries)
_COST_RUN_CALL = 60_000.0  # per masked product (mask, top-k and call overhead)
_COST_GATHER_ROW = 10.0  # pre-filter over the gathered matching rows, per query
_COST_GATHER_COPY_ROW = 150.0  # copying a matching row out, once per predicate group
_COST_GATHER_GROUP = 55_000.0  # per predicate group gathered (mask to rows, call overhead)
_COST_SCANN_QUERY = 10_000.0  # post-filter: fixed cost of one ScaNN query
_COST_AH_ROW = 2.0  # post-filter: asymmetric hashing with 16-entry lookup tables
_COST_REORDER_ROW = 29.0  # post-filter: exact re-scoring of fetched candidates, and filtering them


class ShardFormatError(ValueError):
    """A shard directory cannot be loaded: missing files, a bad header, or a mismatch."""


def _scann():
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """How a shard's ScaNN searcher is built, as one spec string that round-trips.

    ``Brute`` is exact brute force. ``Tree1000,AH2,Reorder100`` is a k-means tree of
    1000 leaves, asymmetric hashing with 2 dimensions per block, and exact
    re-scoring of the best 100 candidates.
    """

    num_leaves: int = 0
    dims_per_block: int = 2
    reorder: int = 100

    @property
    def brute_force(self) -> bool:
        return self.num_leaves == 0

    def spec(self) -> str:
        """The spec string, e.g. ``Tree447,AH2,Reorder100`` or ``Brute``."""
        if self.brute_force:
            return "Brute"
        return f"Tree{self.num_leaves},AH{self.dims_per_block},Reorder{self.reorder}"

    @classmethod
    def parse(cls, spec: str) -> "ShardConfig":
        """The config a spec string describes; ValueError naming the expected form otherwise."""
        if spec.strip().lower() == "brute":
            return cls()
        m = re.fullmatch(r"\s*tree(\d+)\s*,\s*ah(\d+)\s*,\s*reorder(\d+)\s*", spec, re.IGNORECASE)
        if not m or int(m[1]) < 1 or int(m[2]) < 1 or int(m[3]) < 1:
            raise ValueError(f"bad shard spec {spec!r}: expected 'Brute' or 'Tree<leaves>,AH<dims>,Reorder<n>'")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    @classmethod
    def for_shape(cls, rows: int, dimension: int) -> "ShardConfig":
        """The default for a shard: brute force when small, else a tree of about sqrt(rows) leaves."""
        if rows <= BRUTE_FORCE_ROWS:
            return cls()
        return cls(num_leaves=max(2, round(math.sqrt(rows))), dims_per_block=2, reorder=100)

    def scann_config(self, vectors: np.ndarray, metric: str) -> str:
        """ScaNN's text config for these vectors (already prepared for ``metric``)."""
        distance = "squared_l2" if metric == "squared_l2" else "dot_product"
        builder = _scann().builder(vectors, _CALIBRATION_K, distance)
        if self.brute_force:
            return builder.score_brute_force().create_config()
        n = len(vectors)
        # Plain (isotropic) AH: encodes faster than anisotropic AH and, with calibrated
        # leaves, matched its queries/s and recall on partitioned data (measured).
        config = (
            builder.tree(self.num_leaves, 1, training_sample_size=min(n, 100_000))
            .score_ah(self.dims_per_block, training_sample_size=min(n, _AH_SAMPLE))
            .reorder(self.reorder)
            .create_config()
        )
        # Seeded, unbalanced, and k-means++ centres: ScaNN's random initialisation ignores the seed,
        # so the same rows gave a different tree on every build (measured); k-means++ gives the same
        # tree in every process and with any number of training threads.
        config = config.replace("RANDOM_INITIALIZATION", "DEFAULT_KMEANS_PLUS_PLUS", 1)
        return config.replace("partitioning {", _DETERMINISTIC_PARTITIONING, 1)


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """Knobs of :meth:`Shard.search`.

    ``prefilter_cost_ratio``: a query is pre-filtered when the pre-filter's estimated
    cost is at most this times the post-filter's (higher favours exact pre-filter).
    ``overfetch``: the post-filter fetches ``overfetch * k / selectivity`` candidates.
    ``leaves_to_search``: overrides the calibrated number of leaves.
    ``leaves_scale``: multiplies the calibrated leaves (trades speed for recall).
    """

    prefilter_cost_ratio: float = 2.0
    overfetch: float = 2.0
    leaves_to_search: int | None = None
    leaves_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Leaves to search, per fetch size, for recall >= target; measured on calibration queries.

    ``leaves`` pairs each fetch size F (10, 128, 512; at most an eighth of the rows) with the fewest leaves
    for which ScaNN's top-F holds at least ``target`` (plus a margin) of the exact top-F. A filter of
    selectivity s needs about the unfiltered top-k/s, so the post-filter looks up
    the leaves for its fetch size here. ``recall`` is the unfiltered recall@10 reached.
    ``queries`` calibration queries were used: ``log_queries`` of them from the
    workload log (queries routed to the shard), the rest the shard's own rows.
    """

    leaves: tuple[tuple[int, int], ...]
    recall: float
    target: float
    queries: int
    log_queries: int = 0

    @property
    def leaves_to_search(self) -> int:
        """Leaves for unfiltered top-10."""
        return self.leaves[0][1] if self.leaves else 0

    def leaves_for(self, fetch: int, num_leaves: int) -> int:
        """Leaves for a fetch size: the entry of the next larger calibrated size, else all."""
        for size, leaves in self.leaves:
            if size >= fetch:
                return leaves
        return num_leaves

    def to_json(self) -> dict:
        return {"leaves": [list(p) for p in self.leaves], "recall": self.recall,
                "target": self.target, "queries": self.queries, "log_queries": self.log_queries}

    @classmethod
    def from_json(cls, obj: dict) -> "Calibration":
        return cls(tuple((int(f), int(l)) for f, l in obj["leaves"]), float(obj["recall"]),
                   float(obj["target"]), int(obj["queries"]), int(obj.get("log_queries", 0)))


class Shard:
    """One ScaNN searcher over rows with ids and attributes. Build with :meth:`build` or :meth:`load`."""

    def __init__(self, ids: pa.Array, attributes: pa.Table, vectors: np.ndarray, metric: str,
                 config: ShardConfig, calibration: Calibration, searcher, scann_config: str,
                 row_order: tuple[str, ...] = ()):
        self.ids = ids
        self.attributes = attributes
        self.vectors = vectors
        self.metric = metric
        self.config = config
        self.calibration = calibration
        self.scann_config = scann_config
        self.row_order = row_order
        self._searcher = searcher
        self._columns = Columns(attributes)  # encoded once, kept by clear_caches
        self._shared: tuple[Columns, int] | None = None
        self._masks = self._new_masks()

    @property
    def num_rows(self) -> int:
        return len(self.vectors)

    @property
    def dimension(self) -> int:
        return self.vectors.shape[1]

    @classmethod
    def build(
        cls,
        ids: pa.Array | Sequence,
        vectors: np.ndarray,
        attributes: pa.Table | None = None,
        metric: str = "dot_product",
        config: ShardConfig | str | None = None,
        recall_target: float = 0.95,
        seed: int = 0,
        row_order: Sequence[str] = (),
        calibration_queries: np.ndarray | None = None,
    ) -> "Shard":
        """Build a shard over ``vectors`` (n, d) with their ``ids`` and ``attributes`` (n rows).

        Rows are stored sorted by the ``row_order`` columns, then by id (see
        :mod:`beamvec.index.layout`), whatever order they come in.
        ``config`` defaults to :meth:`ShardConfig.for_shape`. The leaves to search are
        calibrated so that unfiltered recall on calibration queries reaches
        ``recall_target`` (plus a margin): ``calibration_queries`` (m, d), past queries
        that search this shard (e.g. a workload log's, routed here by the plan), up to
        a cap, topped up with a sample of the shard's own rows when fewer; ``seed``
        picks the samples. The same input gives the same shard.
        """
        exact.check_metric(metric)
        ids = ids if isinstance(ids, pa.Array) else pa.array(list(ids))
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"a shard needs a non-empty (n, d) array of vectors, got shape {vectors.shape}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        attributes = attributes if attributes is not None else pa.table({})
        if attributes.num_columns and attributes.num_rows != len(vectors):
            raise ValueError(f"{attributes.num_rows} attribute rows for {len(vectors)} vectors")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors hold NaN or infinite values; validate items first (beamvec.index.schema)")
        if calibration_queries is not None and np.size(calibration_queries) == 0:
            calibration_queries = None  # none reach this shard
        if calibration_queries is not None:
            calibration_queries = np.asarray(calibration_queries, np.float32)
            if calibration_queries.ndim != 2 or calibration_queries.shape[1] != vectors.shape[1]:
                raise ValueError(f"calibration queries have shape {calibration_queries.shape}; "
                                 f"the vectors have dimension {vectors.shape[1]}")
            if not np.isfinite(calibration_queries).all():
                raise ValueError("calibration queries hold NaN or infinite values")
        attributes = _with_ids(attributes, ids)
        row_order = tuple(c for c in row_order if c in attributes.column_names and c != "id")
        order = layout.row_order(ids, attributes, row_order)
        ids, attributes, vectors = ids.take(order), attributes.take(order), vectors[order]
        prepared = exact.prepare(vectors, metric)
        config = ShardConfig.parse(config) if isinstance(config, str) else config
        config = config or ShardConfig.for_shape(*prepared.shape)
        scann_config = config.scann_config(prepared, metric)
        searcher = _scann().create_searcher(prepared, scann_config, 0)
        shard = cls(ids, attributes, prepared, metric, config, Calibration((), 1.0, recall_target, 0),
                    searcher, scann_config, row_order)
        if not config.brute_force:
            log = None if calibration_queries is None else exact.prepare(calibration_queries, metric)
            shard.calibration = shard._calibrate(recall_target, seed, log)
        return shard

    def _calibrate(self, target: float, seed: int, log: np.ndarray | None = None) -> Calibration:
        """Fewest leaves per fetch size reaching ``target`` + margin on up to :data:`_CALIBRATION_QUERIES`
        queries: the (prepared) ``log`` queries, a seeded sample of them when more, topped up
        with a seeded sample of the shard's own rows (their own row left out of truth and result)."""
        n = self.num_rows
        rng = np.random.default_rng(seed)
        log = np.zeros((0, self.dimension), np.float32) if log is None else log
        if len(log) > _CALIBRATION_QUERIES:
            log = log[np.sort(rng.choice(len(log), _CALIBRATION_QUERIES, replace=False))]
        own = np.sort(rng.choice(n, min(_CALIBRATION_QUERIES - len(log), n), replace=False))
        queries = np.concatenate([log, self.vectors[own]]) if len(log) else self.vectors[own]
        # Per query, the row that is the query itself: none (-2, never a row or padding) for log queries.
        sample = np.concatenate([np.full(len(log), -2, np.int64), own])
        sizes = [f for f in _CALIBRATION_FETCHES if f <= max(_CALIBRATION_K, n // 8)]
        truth_all, _ = exact.search_rows(self.vectors, queries, sizes[-1] + 1, self.metric)

        truth_of: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def measure(fetch: int, leaves: int) -> float:
            if fetch not in truth_of:  # per query, which rows are among its true top-fetch
                truth = _drop_self(truth_all[:, :fetch + 1], sample, fetch)
                member = np.zeros((len(sample), n), bool)
                member[np.nonzero(truth >= 0)[0], truth[truth >= 0]] = True
                truth_of[fetch] = member, np.maximum((truth >= 0).sum(axis=1), 1)
            member, total = truth_of[fetch]
            found = _drop_self(self._scann_search(queries, fetch + 1, leaves)[0], sample, fetch)
            hits = np.take_along_axis(member, np.maximum(found, 0), axis=1) & (found >= 0)
            return float((hits.sum(axis=1) / total).mean())

        recalls: dict[tuple[int, int], float] = {}

        def meets(fetch: int, leaves: int) -> bool:
            if (fetch, leaves) not in recalls:
                recalls[fetch, leaves] = measure(fetch, leaves)
            return recalls[fetch, leaves] >= target + _CALIBRATION_MARGIN

        def fewest_leaves(fetch: int, low: int, guess: int) -> int:
            """Fewest leaves meeting the target, above ``low`` (assumed short): gallop up from ``guess``, then bisect."""
            high = max(low + 1, guess)
            while high < self.config.num_leaves and not meets(fetch, high):
                low, high = high, min(2 * high, self.config.num_leaves)
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (low, mid) if meets(fetch, mid) else (mid, high)
            return high

        table, low, leaves = [], 0, max(1, self.config.num_leaves // _CALIBRATION_FIRST_GUESS)
        for fetch in sizes:  # a larger fetch needs at least the leaves of a smaller one
            leaves = fewest_leaves(fetch, low, leaves)
            table.append((fetch, leaves))
            low = leaves - 1
        meets(sizes[0], table[0][1])  # measured unless the search stopped at all leaves
        return Calibration(tuple(table), recalls[sizes[0], table[0][1]], target, len(sample), len(log))

    def _scann_search(self, queries: np.ndarray, fetch: int, leaves: int,
                      parallel: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """ScaNN top-``fetch`` (rows, keys), -1 / -inf where ScaNN found fewer; ``parallel`` uses ScaNN's threads."""
        fetch = min(fetch, self.num_rows)
        pre = self._reorder_for(fetch)
        if self.config.brute_force:
            idx, dist = self._searcher.search_batched(queries, fetch)
        else:
            search = self._searcher.search_batched_parallel if parallel else self._searcher.search_batched
            idx, dist = search(queries, fetch, pre, leaves)
        rows = np.asarray(idx, np.int64)
        keys = exact.keys_from_scores(np.asarray(dist, np.float32), self.metric)
        missing = np.isnan(keys)
        rows[missing] = -1
        keys[missing] = -np.inf
        return rows, keys

    @property
    def columns(self) -> Columns:
        """The attribute columns, encoded for predicate evaluation (kept across :meth:`clear_caches`)."""
        return self._columns

    def share_columns(self, columns: Columns, start: int) -> None:
        """Evaluate predicates over rows start.. of ``columns``: this shard's rows, encoded with other
        shards' (an index lays its shards' rows end to end, so a predicate compiles once for all)."""
        self._shared = (columns, start)
        self._columns = columns.segment(start, start + self.num_rows)
        self._masks = self._new_masks()

    def _new_masks(self) -> MaskCache:
        if self._shared is None:
            return MaskCache(self._columns, sorted_by=self.row_order)
        columns, start = self._shared
        return MaskCache(columns, sorted_by=self.row_order, rows=(start, start + self.num_rows))

    def clear_caches(self) -> None:
        """Forget the masks, runs and compiled programs of predicates seen so far."""
        (self._shared[0] if self._shared is not None else self._columns).forget_programs()
        self._masks = self._new_masks()

    def mask(self, predicate: Predicate) -> np.ndarray | None:
        """The rows that satisfy ``predicate`` (None for no filter), cached."""
        return self._masks.mask(predicate)

    def _group(self, predicate: Predicate, members: np.ndarray) -> "_Group":
        """The queries ``members`` of ``predicate`` with the run of rows it matches (cached)."""
        return _Group(predicate, members, *self._masks.run(predicate))

    def _post_cost(self, matches: int, k: int, params: SearchParams) -> tuple[float, int, int]:
        """(cost, fetch, leaves) of a post-filter search for a predicate with ``matches`` rows."""
        n = self.num_rows
        fetch = k if matches >= n else _next_pow2(math.ceil(params.overfetch * k * n / max(matches, 1)))
        fetch = min(n, fetch)
        if self.config.brute_force:
            return n * _COST_DENSE_ROW, fetch, 0
        leaves = params.leaves_to_search or self.calibration.leaves_for(fetch, self.config.num_leaves)
        leaves = max(1, min(self.config.num_leaves, round(leaves * params.leaves_scale)))
        scanned = leaves * n / self.config.num_leaves
        return _COST_SCANN_QUERY + scanned * _COST_AH_ROW + self._reorder_for(fetch) * _COST_REORDER_ROW, fetch, leaves

    def search(
        self,
        queries: np.ndarray,
        k: int,
        predicates: Sequence[Predicate | str | None] | None = None,
        params: SearchParams | None = None,
    ) -> "ShardResult":
        """Top-k rows of this shard for each query under its own predicate.

        ``queries`` is (n, d); ``predicates`` holds n predicates or texts (None or ''
        = no filter; default all unfiltered). Predicates are validated against the
        shard's attributes before any search (PredicateError on an unknown column or
        a type mismatch).
        """
        params = params or SearchParams()
        queries = exact.prepare(queries, self.metric)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"queries have shape {queries.shape}; this shard has dimension {self.dimension}")
        n = len(queries)
        groups = group_predicates(predicates if predicates is not None else [None] * n)
        if sum(len(m) for m in groups.values()) != n:
            raise ValueError(f"{sum(len(m) for m in groups.values())} predicates for {n} queries")
        for p in groups:
            p.validate(self.attributes.schema)

        return self.search_groups(queries, k, groups, params)

    def search_groups(self, queries: np.ndarray, k: int, groups: dict[Predicate, np.ndarray],
                      params: SearchParams | None = None, parallel: bool = True) -> "ShardResult":
        """:meth:`search` for prepared, checked ``queries`` whose predicates are already grouped.

        ``groups`` maps each predicate (validated against this shard) to the positions
        of its queries; an index passes its own grouping so texts are parsed once.
        ``parallel=False`` keeps ScaNN on the calling thread (for callers that search
        several shards at once).
        """
        stats = SearchStats()
        plan = self.plan_groups(k, groups, params, stats)
        result = self.execute(queries, k, plan, parallel)
        result.stats.add(stats)
        return result

    def plan_groups(self, k: int, groups: dict[Predicate, np.ndarray], params: SearchParams | None = None,
                    stats: SearchStats | None = None) -> "GroupPlan":
        """How :meth:`execute` will search each group of queries: its run of matching rows and
        its strategy, with every mask it needs built. This is the Python-bound part of a search,
        so an index plans its shards on one thread and executes them on many."""
        params = params or SearchParams()
        stats = stats or SearchStats()
        plan = GroupPlan([], {})
        with stats.timed("masks"):
            for p, members in groups.items():
                group = self._group(p, members)
                if group.matches == 0:
                    continue
                post_cost, fetch, leaves = self._post_cost(group.matches, k, params)
                pre = min(self._pre_costs(group)) <= params.prefilter_cost_ratio * post_cost
                if pre:
                    plan.pre.append(group)
                else:
                    plan.post.setdefault((fetch, leaves), []).append(group)
                if not pre or self._scores_masked_run(group):  # these read packed bits
                    self._masks.excluded_bits(p)
        return plan

    def execute(self, queries: np.ndarray, k: int, plan: "GroupPlan", parallel: bool = True) -> "ShardResult":
        """Search the prepared ``queries`` as ``plan`` (:meth:`plan_groups`) says."""
        result = ShardResult.empty(len(queries), k)
        pre = list(plan.pre)
        for (fetch, leaves), entries in plan.post.items():
            self._post_filter(queries, k, fetch, leaves, entries, result, pre, parallel)
        self._pre_filter(queries, k, pre, result)
        return result

    def _pre_costs(self, group: "_Group") -> tuple[float, float]:
        """Per-query cost of exact scoring: over the run of rows holding the group's matches
        (alone, or at most as in a product shared by many queries), or over its gathered rows."""
        m = len(group.members)
        run = min(_run_cost(group.hi - group.lo, m) / m, self.num_rows * _COST_DENSE_ROW)
        gathered = group.matches * (_COST_GATHER_ROW + _COST_GATHER_COPY_ROW / m) + _COST_GATHER_GROUP / m
        return run, gathered

    def _scores_masked_run(self, group: "_Group") -> bool:
        """Whether a pre-filtered group with a mask scores its whole run (masked), rather than its gathered rows."""
        run, gathered = self._pre_costs(group)
        return not group.whole_run and run <= gathered

    def _pre_filter(self, queries: np.ndarray, k: int, groups: list["_Group"], result: "ShardResult") -> None:
        """Exact scores: each group over its gathered rows, or over the run of rows its matches
        lie in (short when rows are laid out by the columns queries filter on, see
        :mod:`beamvec.index.layout`); groups whose runs overlap share one masked product."""
        runs = []
        for g in groups:
            if g.whole_run or self._scores_masked_run(g):
                runs.append(g)
                continue
            rows = g.lo + np.flatnonzero(g.local)
            result.rows[g.members], result.keys[g.members] = exact.search_rows(
                self.vectors, queries[g.members], k, self.metric, rows, result.stats)
            result.stats.rows_scored += len(g.members) * len(rows)
        for batch in _shared_runs(runs):
            # From a whole byte of the packed masks; rows before a group's run never match it.
            lo, hi = min(g.lo for g in batch) // 8 * 8, max(g.hi for g in batch)
            batch.sort(key=lambda g: not g.whole_run)  # blocks of queries that need only their spans come first
            members = np.concatenate([g.members for g in batch])
            sizes = [len(g.members) for g in batch]
            spans = np.repeat([(g.lo - lo, g.hi - lo) for g in batch], sizes, axis=0)
            with result.stats.timed("masks"):
                bits, group = _mask_stack([None if g.whole_run else self._masks.excluded_bits(g.predicate)[lo // 8:]
                                           for g in batch], sizes, hi - lo)
            pos, keys = exact.search_masked(self.vectors[lo:hi], queries[members], k, self.metric, spans, bits, group,
                                            result.stats)
            result.rows[members], result.keys[members] = np.where(pos >= 0, pos + lo, -1), keys
            result.stats.rows_scored += len(members) * (hi - lo)
        result.stats.prefiltered += sum(len(g.members) for g in groups)

    def _post_filter(self, queries, k, fetch, leaves, entries: list["_Group"], result: "ShardResult",
                     pre: list["_Group"], parallel: bool) -> None:
        """One ScaNN call for all queries of a fetch size, filtered at once; short queries are queued for pre-filter."""
        members = np.concatenate([g.members for g in entries])
        sizes = [len(g.members) for g in entries]
        with result.stats.timed("scann"):
            rows, keys = self._scann_search(queries[members], max(fetch, k), leaves, parallel)
        with result.stats.timed("masks"):
            bits, group = _mask_stack([self._masks.excluded_bits(g.predicate) for g in entries], sizes, self.num_rows)
        with result.stats.timed("selection"):
            pos, best = selection.top_k(keys, k, bits=bits, group=group, rows=rows)
        got = np.take_along_axis(rows, np.maximum(pos, 0), axis=1)
        got[pos < 0] = -1
        need = np.repeat([min(k, g.matches) for g in entries], sizes)
        short = (got >= 0).sum(axis=1) < need
        done = ~short
        result.rows[members[done]], result.keys[members[done]] = got[done], best[done]
        result.stats.postfiltered += int(done.sum())
        result.stats.rows_scored += len(members) * self._rows_scanned(fetch, leaves)
        if short.any():
            result.stats.fallbacks += int(short.sum())
            offsets = np.cumsum([0] + sizes)
            for g, start, stop in zip(entries, offsets[:-1], offsets[1:]):
                if short[start:stop].any():
                    pre.append(g._replace(members=g.members[short[start:stop]]))

    def _reorder_for(self, fetch: int) -> int:
        """Candidates re-scored exactly for a fetch size: the config's reorder per 10 results."""
        return min(self.num_rows, max(self.config.reorder, fetch * self.config.reorder // _CALIBRATION_K))

    def _rows_scanned(self, fetch: int, leaves: int) -> int:
        """Rows a ScaNN search touches: those in the searched leaves (all, for brute force)."""
        if self.config.brute_force:
            return self.num_rows
        return round(leaves * self.num_rows / self.config.num_leaves) + self._reorder_for(fetch)

    def ids_of(self, rows: np.ndarray) -> pa.Array:
        """The ids of row positions (-1 gives null), flattened row-major."""
        flat = np.asarray(rows).reshape(-1)
        return self.ids.take(pa.array(flat, mask=flat < 0))

    def save(self, path: str) -> None:
        """Write the shard as a directory: ScaNN assets, rows.parquet (ids and attributes), shard.json."""
        filesystem = fs.filesystem_for(path)
        with tempfile.TemporaryDirectory(prefix="beamvec-shard-") as tmp:
            self._searcher.serialize(tmp, relative_path=True)
            rows = io.BytesIO()
            pq.write_table(self.attributes, rows)
            with open(os.path.join(tmp, ROWS), "wb") as f:
                f.write(rows.getvalue())
            with open(os.path.join(tmp, HEADER), "w") as f:
                json.dump(self.header(), f, indent=2, sort_keys=True)
            filesystem.upload(tmp, path)

    def header(self) -> dict:
        """The JSON header: format, metric, dimension, rows, config, calibration and row order."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "metric": self.metric,
            "dimension": self.dimension,
            "rows": self.num_rows,
            "spec": self.config.spec(),
            "calibration": self.calibration.to_json(),
            "scann_config": self.scann_config,
            "row_order": list(self.row_order),
        }

    @classmethod
    def load(cls, path: str, metric: str | None = None, dimension: int | None = None) -> "Shard":
        """Load a saved shard; ShardFormatError on any missing file or mismatch.

        ``metric`` and ``dimension``, when given, must match the header (an index
        checks its shards this way).
        """
        filesystem = fs.filesystem_for(path)
        with filesystem.local_copy(path) as local:
            names = set(os.listdir(local))
            if any(name.endswith(".pkl") for name in names):
                raise ShardFormatError(f"{path}: holds a pickle file; beamvec never loads pickles")
            for name in (HEADER, ROWS, DATASET, ASSETS):
                if name not in names:
                    raise ShardFormatError(f"{path}: not a shard, {name} is missing")
            header = _read_header(os.path.join(local, HEADER), path)
            _check(header.get("format") == FORMAT and header.get("version") == FORMAT_VERSION, path,
                   f"format {header.get('format')!r} version {header.get('version')!r}, "
                   f"expected {FORMAT!r} version {FORMAT_VERSION}")
            for key, want in (("metric", metric), ("dimension", dimension)):
                _check(want is None or header.get(key) == want, path, f"{key} {header.get(key)!r}, expected {want!r}")
            _check(header.get("metric") in exact.METRICS, path, f"unknown metric {header.get('metric')!r}")
            try:
                config = ShardConfig.parse(str(header.get("spec")))
                calibration = Calibration.from_json(header["calibration"])
                row_order = tuple(str(c) for c in header.get("row_order", ()))
            except (ValueError, KeyError, TypeError) as e:
                raise ShardFormatError(f"{path}: bad header: {e}") from e
            vectors = np.load(os.path.join(local, DATASET), allow_pickle=False)
            _check(vectors.shape == (header.get("rows"), header.get("dimension")), path,
                   f"vectors have shape {vectors.shape}, header says ({header.get('rows')}, {header.get('dimension')})")
            attributes = pq.read_table(os.path.join(local, ROWS))
            _check(attributes.num_rows == header["rows"], path,
                   f"{attributes.num_rows} rows in {ROWS}, header says {header['rows']}")
            with open(os.path.join(local, ASSETS)) as f:
                searcher = _scann().ScannSearcher(_scann().scann_pybind.ScannNumpy(local, f.read()))
        ids = attributes.column("id").combine_chunks()
        return cls(ids, attributes, vectors, header["metric"], config, calibration, searcher,
                   str(header.get("scann_config", "")), row_order)


@dataclasses.dataclass
class ShardResult:
    """Per query the k best row positions (-1 padding) and ranking keys (-inf padding), best first."""

    rows: np.ndarray
    keys: np.ndarray
    stats: SearchStats

    @classmethod
    def empty(cls, n: int, k: int) -> "ShardResult":
        return cls(np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32), SearchStats())


def _run_cost(rows: int, queries: int) -> float:
    """Estimated cost of one masked product of ``queries`` queries over ``rows`` consecutive rows."""
    return _COST_RUN_CALL + rows * (_COST_RUN_ROW + queries * _COST_DENSE_ROW)


def _shared_runs(groups: list["_Group"]) -> list[list["_Group"]]:
    """Groups batched into shared masked products. In order of where their runs start, a
    group joins the open batch (one still overlapping it, or the newest) where one product
    over the union saves most against two, or starts its own."""
    done: list[list] = []
    batches: list[list] = []  # open: [lo, hi, queries, groups]
    for g in sorted(groups, key=lambda g: (g.lo, g.hi)):
        m = len(g.members)
        done += [b for b in batches[:-1] if b[1] <= g.lo]
        batches = [b for b in batches[:-1] if b[1] > g.lo] + batches[-1:]
        best, saved = None, 0.0
        for b in batches:
            union = max(b[1], g.hi) - min(b[0], g.lo)
            gain = _run_cost(b[1] - b[0], b[2]) + _run_cost(g.hi - g.lo, m) - _run_cost(union, b[2] + m)
            if gain >= saved:
                best, saved = b, gain
        if best is None:
            batches.append([g.lo, g.hi, m, [g]])
        else:
            best[0], best[1], best[2] = min(best[0], g.lo), max(best[1], g.hi), best[2] + m
            best[3].append(g)
    return [b[3] for b in done + batches]


class GroupPlan(NamedTuple):
    """A shard's plan for a batch (:meth:`Shard.plan_groups`): groups to pre-filter, and groups to
    post-filter by (fetch size, leaves)."""

    pre: list["_Group"]
    post: dict[tuple[int, int], list["_Group"]]


class _Group(NamedTuple):
    """Queries sharing a predicate: the predicate, their positions, and where it matches
    (:class:`beamvec.index.masks.Run`): ``matches`` rows within ``lo:hi``, ``local`` the
    mask over that run (None when every row of it matches)."""

    predicate: Predicate
    members: np.ndarray
    matches: int
    lo: int
    hi: int
    local: np.ndarray | None

    @property
    def whole_run(self) -> bool:
        """Whether every row of the run matches (the run alone says which rows are allowed)."""
        return self.local is None


def _mask_stack(bits: Sequence[np.ndarray | None], sizes: Sequence[int],
                n_rows: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The packed exclusion masks of query groups, as :func:`selection.top_k` takes them: (bits, group per query).

    ``bits[g]`` (None = every row allowed; see :meth:`MaskCache.excluded_bits`, at least
    ``n_rows`` bits) applies to the next ``sizes[g]`` queries, in order. (None, None)
    when no group has a mask.
    """
    has_mask = [b is not None for b in bits]
    if not any(has_mask):
        return None, None
    width = (n_rows + 7) // 8
    group = np.repeat(np.where(has_mask, np.cumsum(has_mask) - 1, -1), sizes)
    return np.stack([b[:width] for b in bits if b is not None]), group


def group_predicates(predicates: Sequence[Predicate | str | None]) -> dict[Predicate, np.ndarray]:
    """Queries grouped by predicate: each distinct predicate and the positions that carry it.

    Texts are parsed once each; equal predicates written differently share a group.
    """
    by_object: dict[object, tuple[Predicate | str | None, list[int]]] = {}
    for i, p in enumerate(predicates):
        by_object.setdefault(p if isinstance(p, str) else id(p), (p, []))[1].append(i)
    groups: dict[Predicate, list[int]] = {}
    for p, members in by_object.values():
        parsed = p if isinstance(p, Predicate) else parse_shared(p)
        groups.setdefault(parsed, []).extend(members)
    return {p: np.asarray(sorted(m), np.int64) for p, m in groups.items()}


def clear_predicate_caches() -> None:
    """Forget parsed predicate texts and memoised predicate reasoning (see :meth:`Index.clear_caches`)."""
    parse_shared.cache_clear()
    clear_reasoning_cache()


def _with_ids(attributes: pa.Table, ids: pa.Array) -> pa.Table:
    if "id" in attributes.column_names:
        attributes = attributes.drop_columns(["id"])
    if not attributes.num_columns:
        return pa.table({"id": ids})
    return attributes.add_column(0, "id", ids)


def _drop_self(rows: np.ndarray, sample: np.ndarray, k: int) -> np.ndarray:
    """The first k rows of each result that are not the query's own row (-1 padded)."""
    keep = rows != sample[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(rows, order, axis=1)
    out[~np.take_along_axis(keep, order, axis=1)] = -1
    return out


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _read_header(local: str, path: str) -> dict:
    try:
        with open(local) as f:
            header = json.load(f)
    except (OSError, ValueError) as e:
        raise ShardFormatError(f"{path}: {HEADER} is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise ShardFormatError(f"{path}: {HEADER} is not a JSON object")
    return header


def _check(ok: bool, path: str, problem: str) -> None:
    if not ok:
        raise ShardFormatError(f"{path}: {problem}")
