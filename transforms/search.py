"""Batch hybrid search as the final join stage of a pipeline, on the search core
(:mod:`beamvec.index.search`) that :meth:`Index.search` runs in-process.

1. Route (where the queries are): each block's predicates are grouped and checked against
   the index's attributes (a predicate that does not fit dead-letters its queries), and each
   query is routed to the shards that can hold a match (zone maps over the shards' rows,
   read once per worker), keyed by shard.
2. Search (per shard): all the queries routed to a shard, in (block, position) order, are
   searched together against the shard, loaded and checked once per worker (at most
   ``max_shards`` kept, least recently used evicted), exactly as :meth:`Index.search`
   searches it; the shard's top-k goes back to each block.
3. Merge (per block): the shards' partials are merged in shard order into each query's top-k.

Blocks travel whole (no stage handles one Python object per query), keyed by their source
file and first row. A query id repeated in another block or file is a dead letter (the first
copy, by file path then row, is answered: :class:`beamvec.transforms.dedupe.DropRepeatedIds`).
"""

from __future__ import annotations

import collections
import dataclasses
import string
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from threadpoolctl import threadpool_limits

from beamvec.index import encoder, exact, versions
from beamvec.index.index import usable_cpus
from beamvec.index.manifest import Manifest
from beamvec.index.plan import plan_from_json
from beamvec.index.predicate import literal_text
from beamvec.index.schema import (
    ID, K, NEIGHBORS, PREDICATE, QUERY_ID, SCORE, VECTOR, Rejection, Validated, results_table, validate_queries,
    vectors_array,
)
from beamvec.index.search import (
    ROW_SPACE, IndexRows, Partial, Router, check_predicates, group_queries, load_shard, merge_partial, plan_shard,
    read_rows, run_shard,
)
from beamvec.index.shard import Shard
from beamvec.transforms.dedupe import DropRepeatedIds
from beamvec.transforms.embed import DEFAULT_BATCH_SIZE, Embed
from beamvec.transforms.io import ToBlocks, absolute
from beamvec.transforms.progress import Progress
from beamvec.transforms.validate import REJECTED, Validate, dead_letters

DEFAULT_MAX_SHARDS = 8


@dataclasses.dataclass(frozen=True)
class QueryBlock:
    """The queries of one block bound for one shard: the block's key, their positions in it,
    vectors, predicates (their texts: cheaper to ship than parsed ones, and parsed once per
    worker) and k each."""

    block: tuple[str, int]
    positions: np.ndarray
    vectors: np.ndarray
    predicates: list
    ks: np.ndarray


class BlockQueries(NamedTuple):
    """What merging a block's partials needs of the block: its query ids and each query's k."""

    query_ids: pa.Array
    ks: np.ndarray


class BlockPartial(NamedTuple):
    """One shard's top-k for some queries of a block (:class:`beamvec.index.search.Partial`), with
    the ids of its handles, flattened row-major (null where there is none)."""

    partial: Partial
    ids: pa.Array


def _block_key(validated: Validated) -> tuple[str, int]:
    return validated.source, int(validated.rows[0])


def _query_k(table: pa.Table, default_k: int) -> np.ndarray:
    if K not in table.column_names:
        return np.full(table.num_rows, default_k, np.int64)
    return np.asarray(table.column(K).fill_null(default_k).to_numpy(zero_copy_only=False), np.int64)


_ROUTERS: dict[tuple, tuple[Router, IndexRows]] = {}
_SHARDS: collections.OrderedDict = collections.OrderedDict()
_LOCK = threading.Lock()


class _WithIndex(beam.DoFn):
    """A DoFn given the index's path as a side input; reads its manifest once per instance."""

    def setup(self):
        self._manifests: dict[str, Manifest] = {}

    def manifest(self, index_path: str) -> Manifest:
        if index_path not in self._manifests:
            self._manifests[index_path] = Manifest.read(index_path)
        return self._manifests[index_path]


def forget_loaded_indexes() -> None:
    """Drop the routers and shards this process keeps between bundles and jobs (they load again
    when next needed): frees their memory in a long-lived process, and makes the next job pay
    for loading as a fresh worker does."""
    with _LOCK:
        _ROUTERS.clear()
        _SHARDS.clear()


def _manifest_key(index_path: str, manifest: Manifest) -> tuple:
    return index_path, tuple(p.checksum for p in manifest.partitions)


def router_of(index_path: str, manifest: Manifest) -> tuple[Router, IndexRows]:
    """The index's router (zone maps over every shard's rows) and its rows
    (:class:`beamvec.index.search.IndexRows`, which the shards share), once per worker."""
    key = _manifest_key(index_path, manifest)
    with _LOCK:
        if key not in _ROUTERS:
            rows = IndexRows([read_rows(index_path, manifest, o) for o in range(len(manifest.partitions))],
                             pa.schema([("id", manifest.id_arrow_type)]))
            _ROUTERS.clear()
            _ROUTERS[key] = (Router(plan_from_json(manifest.plan), [p.id for p in manifest.partitions], rows.zones),
                             rows)
        return _ROUTERS[key]


def shard_of(index_path: str, manifest: Manifest, ordinal: int, max_shards: int) -> Shard:
    """Shard ``ordinal``, loaded and checked (:func:`beamvec.index.search.load_shard`) once per worker
    process and kept (LRU, ``max_shards``), sharing the index's encoded rows as :meth:`Index.rows` does."""
    key = (*_manifest_key(index_path, manifest), ordinal)
    with _LOCK:
        if key in _SHARDS:
            _SHARDS.move_to_end(key)
            return _SHARDS[key]
    shard = router_of(index_path, manifest)[1].share(load_shard(index_path, manifest, ordinal), ordinal)
    with _LOCK:
        _SHARDS[key] = shard
        while len(_SHARDS) > max_shards:
            _SHARDS.popitem(last=False)
    return shard


class _Route(_WithIndex):
    def __init__(self, k: int):
        self.k = k
        self.routed = Metrics.counter("beamvec", "partitions_searched")
        self.rejected = Metrics.counter("beamvec", "queries_rejected")

    def process(self, validated: Validated, index_path: str):
        router, rows = router_of(index_path, self.manifest(index_path))
        n = validated.table.num_rows
        predicates = validated.table.column(PREDICATE).to_pylist() if PREDICATE in validated.table.column_names \
            else [None] * n
        queries = group_queries(predicates)
        bad = check_predicates(queries.distinct, rows.schema)
        if bad:
            failing = np.isin(queries.group_of, list(bad))
            self.rejected.inc(int(failing.sum()))
            ids = validated.table.column(QUERY_ID).to_pylist()
            rejections = tuple(Rejection(int(validated.rows[i]), str(ids[i]),
                                         f"predicate does not fit the index: {bad[queries.group_of[i]]}")
                               for i in np.flatnonzero(failing))
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letters(dataclasses.replace(validated, rejections=rejections),
                                                                  "route queries"))
            keep = np.flatnonzero(~failing)
            if not len(keep):
                return
            validated = dataclasses.replace(validated, table=validated.table.take(pa.array(keep)),
                                            vectors=validated.vectors[keep], rows=validated.rows[keep], rejections=())
            predicates = [predicates[i] for i in keep]
            queries = group_queries(predicates)
        key = _block_key(validated)
        # More neighbours than the index holds are all of them: k is capped (nothing k-sized is allocated).
        ks = np.minimum(_query_k(validated.table, self.k),
                        max(1, self.manifest(index_path).num_rows))
        query_ids = validated.table.column(QUERY_ID).combine_chunks()
        yield beam.pvalue.TaggedOutput("blocks", (key, BlockQueries(query_ids, ks)))
        for ordinal, members in router.route(queries, validated.vectors):
            self.routed.inc(len(members))
            yield ordinal, QueryBlock(key, members, validated.vectors[members], [predicates[i] for i in members],
                                      ks[members])


class _Search(_WithIndex):
    """All the queries routed to one shard, searched together as :meth:`Index.search` searches it.

    A bundle's shards are taken largest first; each is loaded and planned on the DoFn's thread
    (:func:`beamvec.index.search.plan_shard`) and run on a pool of threads, one per CPU, while the
    next is planned (ScaNN on one thread and one-thread BLAS, as :meth:`Index.search` does: the
    same answers to the bit). Their partials leave when the bundle finishes."""

    def __init__(self, max_shards: int):
        self.max_shards = max_shards

    def setup(self):
        super().setup()
        self.workers = usable_cpus()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="beamvec-search")

    def teardown(self):
        self.pool.shutdown()

    def start_bundle(self):
        self.pending: list[tuple[int, list[QueryBlock]]] = []
        self.index_path = None

    def process(self, element, index_path: str) -> None:
        ordinal, blocks = element
        self.index_path = index_path
        self.pending.append((ordinal, sorted(blocks, key=lambda b: b.block)))

    def finish_bundle(self):
        if not self.pending:
            return
        manifest = self.manifest(self.index_path)
        rows = [p.rows for p in manifest.partitions]
        tasks = sorted(self.pending, key=lambda t: -sum(len(b.positions) for b in t[1]) * rows[t[0]])
        self.pending = []
        with threadpool_limits(1, "blas"):  # held while any search runs: each one's own limit then restores to one
            started = [(ordinal, blocks, self._start(manifest, ordinal, blocks)) for ordinal, blocks in tasks]
            for ordinal, blocks, (shard, future) in started:
                partial, _ = future.result()
                for key, block_partial in _per_block(shard, blocks, partial):
                    yield WindowedValue((key, block_partial), MIN_TIMESTAMP, [GlobalWindow()])

    def _start(self, manifest: Manifest, ordinal: int, blocks: list[QueryBlock]):
        """Load and plan shard ``ordinal``'s search for ``blocks`` (in block order) as one batch, and start it."""
        shard = shard_of(self.index_path, manifest, ordinal, self.max_shards)
        vectors = np.concatenate([b.vectors for b in blocks])
        queries = group_queries([p for b in blocks for p in b.predicates])
        k = int(max(int(b.ks.max()) for b in blocks))
        planned = plan_shard(shard, ordinal, queries, np.arange(len(vectors)), k)
        return shard, self.pool.submit(run_shard, planned, exact.prepare(vectors, manifest.metric), k,
                                       self.workers == 1)


def _per_block(shard: Shard, blocks: list[QueryBlock], partial: Partial) -> list[tuple[tuple[str, int], BlockPartial]]:
    """A shard's top-k for the queries of ``blocks`` (searched as one batch, in block order), back per block."""
    out, start = [], 0
    for b in blocks:
        stop = start + len(b.positions)
        handles = partial.handles[start:stop]
        ids = shard.ids_of(np.where(handles >= 0, handles % ROW_SPACE, -1))
        out.append((b.block, BlockPartial(Partial(partial.ordinal, b.positions, handles, partial.keys[start:stop]), ids)))
        start = stop
    return out


class _Merge(_WithIndex):
    def __init__(self, k: int):
        self.k = k
        self.answered = Metrics.counter("beamvec", "queries_answered")

    def setup(self):
        super().setup()
        self.progress = Progress("queries answered")

    def process(self, element, index_path: str):
        _, values = element
        manifest = self.manifest(index_path)
        block = next(v for v in values if isinstance(v, BlockQueries))
        partials = sorted((v for v in values if isinstance(v, BlockPartial)), key=lambda p: p.partial.ordinal)
        n = len(block.query_ids)
        handles = np.full((n, int(block.ks.max())), -1, np.int64)
        keys = np.full(handles.shape, -np.inf, np.float32)
        for p in partials:
            merge_partial(handles, keys, p.partial)
        self.answered.inc(n)
        self.progress.add(n)
        yield results_table(block.query_ids, _ids_of(handles, partials, manifest.id_arrow_type),
                            exact.finish(keys, manifest.metric), np.minimum((handles >= 0).sum(axis=1), block.ks))


def _ids_of(handles: np.ndarray, partials: list[BlockPartial], id_type: pa.DataType) -> pa.Array:
    """The ids of merged ``handles``, flattened row-major (null where none), looked up in the partials'."""
    flat = handles.reshape(-1)
    if not partials:
        return pa.nulls(len(flat), id_type)
    known = np.concatenate([p.partial.handles.reshape(-1) for p in partials])
    order = np.argsort(known, kind="stable")
    where = np.full(len(flat), -1, np.int64)
    found = flat >= 0
    where[found] = order[np.searchsorted(known[order], flat[found])]
    return pa.concat_arrays([p.ids for p in partials]).take(pa.array(where, mask=where < 0))


class SearchResult(NamedTuple):
    """What :class:`HybridSearch` and :class:`RelatedItems` emit: ``results``, Arrow tables of
    (query_id, neighbors: list of (id, score), best first), one per block of queries (write them
    with :class:`WriteTables`, or turn them into one :class:`Neighbors` record per query with
    :class:`AsNeighbors`); ``rejected``, dead-letter tables of the queries left unanswered, with
    the reason. Metrics reconcile: ``queries_read`` = ``queries_answered`` + ``queries_rejected``."""

    results: beam.PCollection
    rejected: beam.PCollection


class Neighbors(NamedTuple):
    """One query's answer: its id and its neighbours' ids and scores, best first."""

    query_id: object
    ids: list
    scores: list


def _neighbors(table: pa.Table) -> Iterable[Neighbors]:
    for row in table.to_pylist():
        found = row[NEIGHBORS]
        yield Neighbors(row[QUERY_ID], [n[ID] for n in found], [n[SCORE] for n in found])


class AsNeighbors(beam.PTransform):
    """Results tables (:class:`SearchResult` ``.results``) -> one :class:`Neighbors` per query."""

    def expand(self, results):
        return results | beam.FlatMap(_neighbors)


def as_index(pipeline: beam.Pipeline, index, label: str) -> beam.PCollection:
    """An index given as a path or as :class:`BuildIndex`'s ``index`` output, as a singleton PCollection
    of the directory of the version to read. A path is resolved now, once: the whole job reads the
    version published when it was made, whatever is published meanwhile."""
    if isinstance(index, str):
        return pipeline | label >> beam.Create([versions.resolve(absolute(index))])
    if isinstance(index, beam.PCollection):
        return index
    raise TypeError(f"index must be a path or the index output of BuildIndex, got {type(index).__name__}")


class _SearchValidated(beam.PTransform):
    """Validated query blocks -> :class:`SearchResult` (the stages of :class:`HybridSearch` after validation)."""

    def __init__(self, index: beam.PCollection, k: int, max_shards: int):
        super().__init__()
        self.index, self.k, self.max_shards = index, k, max_shards

    def expand(self, queries):
        path = beam.pvalue.AsSingleton(self.index)
        routed = queries | "Route" >> beam.ParDo(_Route(self.k), path).with_outputs("blocks", REJECTED, main="routed")
        partials = (
            routed.routed
            | "ByShard" >> beam.GroupByKey()
            | "Search" >> beam.ParDo(_Search(self.max_shards), path)
        )
        results = (
            (routed.blocks, partials)
            | "Join" >> beam.Flatten()
            | "ByBlock" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(_Merge(self.k), path)
        )
        return SearchResult(results, routed[REJECTED])


def _dimension(index_path: str) -> int:
    return Manifest.read(index_path).dimension


def _metric(index_path: str) -> str:
    return Manifest.read(index_path).metric


class HybridSearch(beam.PTransform):
    """Queries -> :class:`SearchResult`: each query's ``k`` nearest items that satisfy its predicate.

    Consumes queries as :class:`ReadQueries` gives them (or anything it reads: dicts, ``beam.Row`` s,
    Arrow tables) with ``query_id``, ``vector``, and optionally ``predicate`` (None: no filter) and
    ``k`` (default ``k``). ``index`` is an index's path, or :class:`BuildIndex`'s ``index`` output to
    query in the pipeline that builds it. With ``query_text_column``, the queries carry texts, not
    vectors: :class:`Embed` embeds them with ``model`` (default: the model the index records), and
    a model whose identity differs from the index's fails the job. Every query gets a result row (no neighbours when nothing
    matches its predicate) or a dead letter with the reason (bad vector, a predicate that does not
    parse or does not fit the index's columns). The neighbours and scores are those
    :meth:`Index.search` gives for the same queries; shards load once per worker (at most
    ``max_shards`` kept) and are checked against the manifest first.

    Example::

        with beam.Pipeline() as p:
            found = p | ReadQueries("queries.parquet") | HybridSearch("/tmp/index", k=10)
            found.results | "Results" >> WriteTables("/tmp/out/results")
            found.rejected | "Rejected" >> WriteTables("/tmp/out/rejected")
    """

    def __init__(self, index, k: int = 10, max_shards: int = DEFAULT_MAX_SHARDS, *,
                 query_text_column: str | None = None, model: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.index, self.k, self.max_shards = index, k, max_shards
        self.query_text_column, self.batch_size = query_text_column, batch_size
        self.model, self.identity = model, None
        if query_text_column is not None:
            if model is None and not isinstance(index, str):
                raise ValueError("query_text_column with an index built in this pipeline: give model= (the "
                                 "model BuildIndex embedded with)")
            self.model = model or _index_model(absolute(index)).name
            self.identity = encoder.identity(self.model).to_json()
            if isinstance(index, str):  # refused now; an index built in the pipeline is checked when it is written
                _check_model(absolute(index), self.identity)

    def expand(self, queries):
        index = as_index(queries.pipeline, self.index, "Index")
        blocks = queries | "AsBlocks" >> ToBlocks()
        embedded_rejected = ()
        if self.query_text_column is not None:
            index = index | "CheckModel" >> beam.Map(_check_model, self.identity)
            embedded = blocks | "Embed" >> Embed(self.model, self.query_text_column, batch_size=self.batch_size)
            blocks, embedded_rejected = embedded.embedded, (embedded.rejected,)
        dimension = index | "Dimension" >> beam.Map(_dimension)
        metric = index | "Metric" >> beam.Map(_metric)
        checked = blocks | "Validate" >> Validate("queries", beam.pvalue.AsSingleton(dimension),
                                                  beam.pvalue.AsSingleton(metric))
        unique = checked.valid | "DropRepeatedIds" >> DropRepeatedIds("queries")  # across blocks and files
        found = unique.valid | "Search" >> _SearchValidated(index, self.k, self.max_shards)
        return SearchResult(found.results, (*embedded_rejected, checked[REJECTED], unique[REJECTED], found.rejected)
                            | "Rejected" >> beam.Flatten())


def _index_model(index_path: str) -> encoder.ModelIdentity:
    manifest = Manifest.read(versions.resolve(index_path))
    if manifest.model is None:
        raise encoder.ModelError(f"{index_path}: its items came with vectors, not from a model: text queries need "
                                 "an index built from text (BuildIndex embed_column / beamvec build --embed-column)")
    return encoder.ModelIdentity.from_json(manifest.model)


def _check_model(index_path: str, identity: dict) -> str:
    """The index's path, once the model that embeds the queries is the one that embedded its items."""
    built, given = _index_model(index_path), encoder.ModelIdentity.from_json(identity)
    if not built.same_model(given):
        raise encoder.ModelError(f"{index_path} was built with model {built.name} (dimension {built.dimension}, "
                                 f"checksum {built.checksum[:12]}); the queries would be embedded with {given.name} "
                                 f"(dimension {given.dimension}, checksum {given.checksum[:12]}): refused")
    return index_path


class _Literals(dict):
    """Row values rendered as predicate literals for a template."""

    def __missing__(self, name):
        raise ValueError(f"the predicate template names {{{name}}}, which is not a column of the items")


def template_columns(template: str, columns: Iterable[str] | None = None) -> list[str]:
    """The columns a predicate template names, in order; ValueError for a template that does not
    parse, or (given the items' ``columns``) that names one they lack."""
    try:
        names = list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f))
    except ValueError as e:
        raise ValueError(f"the predicate template {template!r} does not parse: {e}") from None
    if columns is not None:
        columns = list(columns)
        for name in names:
            if name not in columns:
                raise ValueError(f"the predicate template names {{{name}}}, which is not a column of the items; "
                                 f"columns are {', '.join(columns)}")
    return names


def render_predicates(template: str, table: pa.Table) -> list[str]:
    """The template filled from each row: ``category = {category} AND id != {id}``."""
    names = template_columns(template)
    columns = {n: table.column(n).to_pylist() for n in dict.fromkeys(names) if n in table.column_names}
    out = []
    for i in range(table.num_rows):
        out.append(template.format_map(_Literals({n: literal_text(v[i]) for n, v in columns.items()})))
    return out


def _as_queries(validated: Validated, template: str, k: int):
    """Items as query blocks; an item whose filled template does not parse becomes a dead letter."""
    table = validated.table
    queries = pa.table({
        QUERY_ID: table.column("id"),
        VECTOR: vectors_array(validated.vectors),
        PREDICATE: pa.array(render_predicates(template, table), pa.string()),
        K: pa.array(np.full(table.num_rows, k, np.int64)),
    })
    checked = validate_queries(queries, validated.vectors.shape[1])
    rejections = tuple(dataclasses.replace(r, row=int(validated.rows[r.row])) for r in checked.rejections)
    if rejections:
        Metrics.counter("beamvec", "queries_rejected").inc(len(rejections))
        yield beam.pvalue.TaggedOutput(REJECTED, dead_letters(dataclasses.replace(checked, rejections=rejections),
                                                              "related items template", validated.source))
    if checked.table.num_rows:
        yield dataclasses.replace(checked, rows=validated.rows[checked.rows], rejections=(), source=validated.source)


class RelatedItems(beam.PTransform):
    """Items -> :class:`SearchResult`: each item's ``k`` most similar items under a predicate
    ``template`` filled from the item's own attributes (``{column}`` is replaced by the item's value
    as a literal), for offline related-item generation.

    Consumes items as :class:`ReadItems` gives them; ``index`` as for :class:`HybridSearch`. Results
    are keyed by the item's id (``query_id``). An item whose filled template does not parse, or a
    bad row, is a dead letter.

    Example::

        related = p | ReadItems("items.parquet") | RelatedItems(
            "/tmp/index", "category = {category} AND id != {id}", k=5)
    """

    def __init__(self, index, template: str, k: int = 10, max_shards: int = DEFAULT_MAX_SHARDS):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        template_columns(template)
        self.index, self.template, self.k, self.max_shards = index, template, k, max_shards

    def expand(self, items):
        index = as_index(items.pipeline, self.index, "Index")
        blocks = items | "AsBlocks" >> ToBlocks()
        dimension = index | "Dimension" >> beam.Map(_dimension)
        metric = index | "Metric" >> beam.Map(_metric)
        checked = blocks | "Validate" >> Validate("items", beam.pvalue.AsSingleton(dimension),
                                                  beam.pvalue.AsSingleton(metric))
        unique = checked.valid | "DropRepeatedIds" >> DropRepeatedIds("items")  # an item's id is its query's
        queries = unique.valid | "AsQueries" >> beam.FlatMap(_as_queries, self.template, self.k).with_outputs(
            REJECTED, main="queries")
        found = queries.queries | "Search" >> _SearchValidated(index, self.k, self.max_shards)
        rejected = (checked[REJECTED], unique[REJECTED], queries[REJECTED], found.rejected) | "Rejected" >> beam.Flatten()
        return SearchResult(found.results, rejected)
