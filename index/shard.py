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

A cost model with a tunable ratio (:class:`SearchParams`) picks between the two
(:mod:`beamvec.index.costs`). The spec, knobs and calibration are :mod:`beamvec.index.shardspec`;
the directory a shard is saved as, :mod:`beamvec.index.shardfile`.

With a codec (:mod:`beamvec.index.codec`) a shard keeps its rows' codes, not their vectors:
the pre-filter scores the codes (:class:`beamvec.index.codes.CodeMatrix`), ScaNN's tree and
asymmetric hashing are trained on the decoded vectors and its candidates are re-scored from the
codes; queries are reduced to the code space by the codec. A codec that re-ranks has each
shard find ``rerank_factor * k`` candidates from its codes and re-score them with the full-precision
vectors (read lazily from their own file).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from beamvec.index import costs, exact, layout, selection, shardfile
from beamvec.index.codec import Codec, npy_bytes
from beamvec.index.codes import CodeMatrix
from beamvec.index.columns import Columns
from beamvec.index.masks import MaskCache
from beamvec.index.boxes import clear_reasoning_cache
from beamvec.index.predicate import Predicate
from beamvec.index.parser import parse_shared
from beamvec.index.shardspec import CALIBRATION_K, Calibration, SearchParams, ShardConfig, scann
from beamvec.index.stats import SearchStats

_CALIBRATION_QUERIES = 128
_CALIBRATION_FETCHES = (10, 128, 512)
# Calibrate a little above the target: the sample's rows stand in for unseen queries.
_CALIBRATION_MARGIN = 0.02
# Unfiltered top-10 typically needs a few percent of the leaves: the first guess is 1/16 of them.
_CALIBRATION_FIRST_GUESS = 16
# Queries re-ranked at once: bounds their gathered full-precision candidates.
_RERANK_QUERIES = 256
# Scores of gathered rows held at once when groups of queries are scored together (16 MB).
_GATHERED_SCORES = 1 << 22



class Shard:
    """One ScaNN searcher over rows with ids and attributes. Build with :meth:`build` or :meth:`load`."""

    def __init__(self, ids: pa.Array, attributes: pa.Table, vectors: np.ndarray | CodeMatrix, metric: str,
                 config: ShardConfig, calibration: Calibration, searcher, scann_config: str,
                 row_order: tuple[str, ...] = (), codec: Codec | None = None,
                 full: np.ndarray | shardfile.FullVectors | None = None):
        self.ids = ids
        self.codec = codec
        self.full = full  # full-precision prepared rows: kept for re-ranking, or in memory at build
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
        """The dimension of the vectors (and queries); a codec's codes may have fewer."""
        return self.codec.dimension if self.codec is not None else self.vectors.shape[1]

    @property
    def reranks(self) -> bool:
        return self.codec is not None and self.codec.spec.rerank

    def exact_rows(self) -> np.ndarray:
        """The rows' full-precision vectors, prepared: what exact answers are measured against
        (ValueError for a shard with a codec whose full vectors it neither kept nor saved)."""
        if self.codec is None:
            return self.vectors
        if self.full is None:
            raise ValueError("this shard keeps only its codes: exact answers need the full vectors "
                             "(build with them, or with a codec that re-ranks)")
        return self.full.rows() if isinstance(self.full, shardfile.FullVectors) else self.full

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
        codec: Codec | None = None,
        codes: np.ndarray | None = None,
    ) -> "Shard":
        """Build a shard over ``vectors`` (n, d) with their ``ids`` and ``attributes`` (n rows).

        With a ``codec`` the shard stores the vectors' codes (``codes``, when already encoded,
        e.g. by :class:`beamvec.transforms.Encode`; ``vectors`` may then be None, unless the
        codec re-ranks, which keeps the full-precision vectors).

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
        codes, vectors = _checked_inputs(codec, codes, vectors, metric)
        n = len(vectors) if vectors is not None else len(codes)
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} vectors")
        attributes = attributes if attributes is not None else pa.table({})
        if attributes.num_columns and attributes.num_rows != n:
            raise ValueError(f"{attributes.num_rows} attribute rows for {n} vectors")
        dimension = codec.dimension if codec is not None else vectors.shape[1]
        if calibration_queries is not None and np.size(calibration_queries) == 0:
            calibration_queries = None  # none reach this shard
        if calibration_queries is not None:
            calibration_queries = np.asarray(calibration_queries, np.float32)
            if calibration_queries.ndim != 2 or calibration_queries.shape[1] != dimension:
                raise ValueError(f"calibration queries have shape {calibration_queries.shape}; "
                                 f"the vectors have dimension {dimension}")
            if not np.isfinite(calibration_queries).all():
                raise ValueError("calibration queries hold NaN or infinite values")
        attributes = _with_ids(attributes, ids)
        row_order = tuple(c for c in row_order if c in attributes.column_names and c != "id")
        order = layout.row_order(ids, attributes, row_order)
        ids, attributes = ids.take(order), attributes.take(order)
        prepared = None if vectors is None else exact.prepare(vectors[order], metric)
        if codec is None:
            searched = scanned = prepared
        else:
            codes = codec.encode(prepared) if codes is None else codes[order]
            searched, scanned = CodeMatrix(codes, codec), codec.decode(codes)
        config = ShardConfig.parse(config) if isinstance(config, str) else config
        config = config or ShardConfig.for_shape(*scanned.shape)
        scann_config = config.scann_config(scanned, metric, reorder=codec is None)
        # With a codec a brute-force shard needs no ScaNN: every query is pre-filtered over the codes.
        searcher = None if codec is not None and config.brute_force else \
            scann().create_searcher(scanned, scann_config, 0)
        shard = cls(ids, attributes, searched, metric, config, Calibration((), 1.0, recall_target, 0),
                    searcher, scann_config, row_order, codec, prepared if codec is not None else None)
        if not config.brute_force:
            log = None if calibration_queries is None else shard._code_space(exact.prepare(calibration_queries, metric))
            shard.calibration = shard._calibrate(recall_target, seed, log)
        return shard

    def _code_space(self, prepared: np.ndarray) -> np.ndarray:
        """Prepared queries as this shard's search compares them: reduced by its codec, if any."""
        return prepared if self.codec is None else self.codec.reduce_queries(prepared, prepared=True)

    def _calibrate(self, target: float, seed: int, log: np.ndarray | None = None) -> Calibration:
        """Fewest leaves per fetch size reaching ``target`` + margin on up to :data:`_CALIBRATION_QUERIES`
        queries: the (prepared) ``log`` queries, a seeded sample of them when more, topped up
        with a seeded sample of the shard's own rows (their own row left out of truth and result)."""
        n = self.num_rows
        rng = np.random.default_rng(seed)
        log = np.zeros((0, self.vectors.shape[1]), np.float32) if log is None else log
        if len(log) > _CALIBRATION_QUERIES:
            log = log[np.sort(rng.choice(len(log), _CALIBRATION_QUERIES, replace=False))]
        own = np.sort(rng.choice(n, min(_CALIBRATION_QUERIES - len(log), n), replace=False))
        queries = np.concatenate([log, self.vectors[own]]) if len(log) else self.vectors[own]
        # Per query, the row that is the query itself: none (-2, never a row or padding) for log queries.
        sample = np.concatenate([np.full(len(log), -2, np.int64), own])
        sizes = [f for f in _CALIBRATION_FETCHES if f <= max(CALIBRATION_K, n // 8)]
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
        pre = costs.reorder_for(self.num_rows, self.config, fetch)
        if self.codec is not None:  # ScaNN's hashing candidates, re-scored from the codes
            search = self._searcher.search_batched_parallel if parallel else self._searcher.search_batched
            idx, _ = search(queries, max(pre, fetch), max(pre, fetch), leaves)
            candidates = np.asarray(idx, np.int64)
            pos, keys = selection.top_k(self._code_keys(queries, candidates), fetch)
            rows = np.take_along_axis(candidates, np.maximum(pos, 0), axis=1)
            rows[pos < 0] = -1
            return rows, keys
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

    def _code_keys(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Ranking keys of each code-space query's candidate ``rows`` (-1: none, key -inf), from the codes."""
        dots = self.vectors.rescore(queries, rows)
        if self.metric != "squared_l2":
            return dots
        norms = self.vectors.norms()[np.maximum(rows, 0)]
        keys = 2 * dots - norms - np.einsum("ij,ij->i", queries, queries)[:, None]
        keys[rows < 0] = -np.inf
        return keys.astype(np.float32)

    def _rerank(self, queries: np.ndarray, found: "ShardResult", k: int) -> "ShardResult":
        """The top ``k`` of each query's candidates (``found``), re-scored with the full-precision vectors."""
        rows = found.rows
        keys = np.empty(rows.shape, np.float32)
        full = self.exact_rows()
        with found.stats.timed("rerank"):
            for lo in range(0, len(rows), _RERANK_QUERIES):  # bounds the gathered vectors
                block, q = rows[lo:lo + _RERANK_QUERIES], queries[lo:lo + _RERANK_QUERIES]
                vectors = full[np.maximum(block, 0).reshape(-1)].reshape(*block.shape, -1)
                dots = np.einsum("ijk,ik->ij", vectors, q)
                if self.metric == "squared_l2":
                    dots = 2 * dots - np.einsum("ijk,ijk->ij", vectors, vectors) - np.einsum("ij,ij->i", q, q)[:, None]
                keys[lo:lo + len(block)] = np.where(block >= 0, dots, -np.inf)
            pos, best = selection.top_k(keys, k)
        out = np.take_along_axis(rows, np.maximum(pos, 0), axis=1)
        out[pos < 0] = -1
        found.stats.reranked += int((rows >= 0).sum())
        return ShardResult(out, best, found.stats)

    def candidates(self, k: int, params: SearchParams | None = None) -> int:
        """Results each query needs from the codes: ``k``, or ``rerank_factor * k`` to re-rank."""
        if not self.reranks:
            return k
        return max(k, int(np.ceil((params or SearchParams()).rerank_factor * k)))

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
        pre_groups, post_groups = [], {}
        k = self.candidates(k, params)
        with stats.timed("masks"):
            for p, members in groups.items():
                group = self._group(p, members)
                if group.matches == 0:
                    continue
                post_cost, fetch, leaves = costs.post_cost(self.num_rows, self.config, self.calibration, group.matches,
                                                           k, params)
                run_cost, gathered_cost = self._pre_costs(group)
                pre_cost = min(run_cost, gathered_cost)
                pre = self._searcher is None or pre_cost <= params.prefilter_cost_ratio * post_cost
                if pre:
                    pre_groups.append(group)
                else:
                    post_groups.setdefault((fetch, leaves), []).append(group)
                if not pre or (not group.whole_run and run_cost <= gathered_cost):  # these read packed bits
                    self._masks.excluded_bits(p)
        return GroupPlan(pre_groups, post_groups, k)

    def execute(self, queries: np.ndarray, k: int, plan: "GroupPlan", parallel: bool = True) -> "ShardResult":
        """Search the prepared ``queries`` as ``plan`` (:meth:`plan_groups`) says."""
        coded = self._code_space(queries)
        result = ShardResult.empty(len(queries), plan.k)
        pre = list(plan.pre)
        for (fetch, leaves), entries in plan.post.items():
            self._post_filter(coded, plan.k, fetch, leaves, entries, result, pre, parallel)
        self._pre_filter(coded, plan.k, pre, result)
        return self._rerank(queries, result, k) if self.reranks else result

    def _pre_costs(self, group: "_Group") -> tuple[float, float]:
        return costs.pre_costs(self.num_rows, group.hi - group.lo, group.matches, len(group.members))

    def _scores_run(self, group: "_Group") -> bool:
        """Whether a pre-filtered group scores its whole run (masked, unless every row of it matches),
        rather than its gathered rows."""
        run, gathered = self._pre_costs(group)
        return run <= gathered

    def _pre_filter(self, queries: np.ndarray, k: int, groups: list["_Group"], result: "ShardResult") -> None:
        """Exact scores: each group over its gathered rows, or over the run of rows its matches
        lie in (short when rows are laid out by the columns queries filter on, see
        :mod:`beamvec.index.layout`); groups whose runs overlap share one masked product."""
        runs, gathered = [], []
        for g in groups:
            (runs if self._scores_run(g) else gathered).append(g)
        for batch in _gathered_batches(gathered):
            members = np.concatenate([g.members for g in batch])
            rows = [g.rows if g.rows is not None else np.arange(g.lo, g.hi) if g.local is None
                    else g.lo + np.flatnonzero(g.local) for g in batch]
            if len(batch) == 1:
                found = exact.search_rows(self.vectors, queries[members], k, self.metric, rows[0], result.stats)
            else:
                found = exact.search_gathered(self.vectors, queries[members], k, self.metric, rows,
                                              [len(g.members) for g in batch], result.stats)
            result.rows[members], result.keys[members] = found
            result.stats.rows_scored += sum(len(g.members) * g.matches for g in batch)
        for batch in costs.shared_runs(runs):
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
        result.stats.rows_scored += len(members) * costs.rows_scanned(self.num_rows, self.config, fetch, leaves)
        if short.any():
            result.stats.fallbacks += int(short.sum())
            offsets = np.cumsum([0] + sizes)
            for g, start, stop in zip(entries, offsets[:-1], offsets[1:]):
                if short[start:stop].any():
                    pre.append(g._replace(members=g.members[short[start:stop]]))

    def ids_of(self, rows: np.ndarray) -> pa.Array:
        """The ids of row positions (-1 gives null), flattened row-major."""
        flat = np.asarray(rows).reshape(-1)
        return self.ids.take(pa.array(flat, mask=flat < 0))

    def save(self, path: str) -> None:
        """Write the shard as a directory (:mod:`beamvec.index.shardfile`); with a codec that
        re-ranks, its full-precision vectors beside it."""
        full = npy_bytes(np.ascontiguousarray(self.exact_rows(), np.float32)) if self.reranks else None
        shardfile.write(path, self._searcher, self.attributes,
                        self.header(None if full is None else hashlib.sha256(full).hexdigest()),
                        codes=self.vectors.codes if self.codec is not None else None, full=full)

    def header(self, full_sha256: str | None = None) -> dict:
        """The JSON header: format, metric, dimension, rows, config, calibration, row order and codec."""
        return shardfile.header(self.metric, self.dimension, self.num_rows, self.config, self.calibration,
                                self.scann_config, self.row_order, self.codec, full_sha256)

    @classmethod
    def load(cls, path: str, metric: str | None = None, dimension: int | None = None,
             codec: Codec | None = None) -> "Shard":
        """Load a saved shard; ShardFormatError on any missing file or mismatch.

        ``metric`` and ``dimension``, when given, must match the header (an index
        checks its shards this way); a shard with a codec loads only with that ``codec``.
        """
        return cls(*shardfile.read(path, metric, dimension, codec))


@dataclasses.dataclass
class ShardResult:
    """Per query the k best row positions (-1 padding) and ranking keys (-inf padding), best first."""

    rows: np.ndarray
    keys: np.ndarray
    stats: SearchStats

    @classmethod
    def empty(cls, n: int, k: int) -> "ShardResult":
        return cls(np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32), SearchStats())


class GroupPlan(NamedTuple):
    """A shard's plan for a batch (:meth:`Shard.plan_groups`): groups to pre-filter, and groups to
    post-filter by (fetch size, leaves)."""

    pre: list["_Group"]
    post: dict[tuple[int, int], list["_Group"]]
    k: int  # results per query searched for (more than asked when re-ranking)


class _Group(NamedTuple):
    """Queries sharing a predicate: the predicate, their positions, and where it matches
    (:class:`beamvec.index.masks.Run`): ``matches`` rows within ``lo:hi``: ``rows``, when known,
    else those ``local`` marks over the run (None when every row of it matches)."""

    predicate: Predicate
    members: np.ndarray
    matches: int
    lo: int
    hi: int
    local: np.ndarray | None
    rows: np.ndarray | None = None

    @property
    def whole_run(self) -> bool:
        """Whether every row of the run matches (the run alone says which rows are allowed)."""
        return self.matches == self.hi - self.lo


def _gathered_batches(groups: list["_Group"]) -> list[list["_Group"]]:
    """Gathered groups scored together: in order of their matches, each batch's groups within a factor
    of two of each other's matches (a batch's score matrix pads every group to its most) and its score
    matrix (its queries by its most matches) at most :data:`_GATHERED_SCORES`; a group larger than that alone."""
    batches: list[list[_Group]] = []
    queries = 0
    for g in sorted(groups, key=lambda g: g.matches):
        if (not batches or g.matches > 2 * batches[-1][0].matches
                or (queries + len(g.members)) * g.matches > _GATHERED_SCORES):
            batches.append([])
            queries = 0
        batches[-1].append(g)
        queries += len(g.members)
    return batches


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


def _checked_inputs(codec: Codec | None, codes: np.ndarray | None, vectors: np.ndarray | None,
                    metric: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(codes, vectors) for :meth:`Shard.build`, checked; ValueError naming what does not fit."""
    if codes is not None and codec is None:
        raise ValueError("codes without the codec that made them")
    if vectors is None and codes is None:
        raise ValueError("a shard needs vectors, or a codec's codes")
    if vectors is None and codec is not None and codec.spec.rerank:
        raise ValueError(f"codec {codec.spec.text()} re-ranks with the full-precision vectors: give them too")
    if codec is not None and codec.metric != metric:
        raise ValueError(f"codec {codec.spec.text()} was fitted for {codec.metric}, the shard is {metric}")
    if codes is not None:
        codes = np.asarray(codes)
        if codes.ndim != 2 or not len(codes) or codes.shape[1] != codec.code_width or codes.dtype != codec.code_dtype:
            raise ValueError(f"codes of {codec.spec.text()} are non-empty {codec.code_dtype} (n, {codec.code_width}), "
                             f"got {codes.dtype} {codes.shape}")
    if vectors is not None:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"a shard needs a non-empty (n, d) array of vectors, got shape {vectors.shape}")
        if codec is not None and vectors.shape[1] != codec.dimension:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, the codec {codec.dimension}")
        if codes is not None and len(codes) != len(vectors):
            raise ValueError(f"{len(codes)} codes for {len(vectors)} vectors")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors hold NaN or infinite values; validate items first (beamvec.index.schema)")
    return codes, vectors


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
