"""Batch hybrid search as the final join stage of a pipeline.

Query blocks are routed with the index's plan to the partitions they can match,
keyed by partition, grouped, and searched against that partition's shard (loaded
once per worker and kept, at most ``max_shards`` per worker, least recently used
evicted). Each (block, partition) pair yields a partial top-k; the partials of a
block are merged into its queries' global top-k. Blocks travel whole: no stage
handles one Python object per query.
"""

from __future__ import annotations

import collections
import dataclasses
import string
import threading
from typing import Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from beamvec.index import exact
from beamvec.index.index import partition_id
from beamvec.index.manifest import Manifest, check_relative_path
from beamvec.index.predicate import PredicateError
from beamvec.index.schema import (
    K, PREDICATE, QUERY_ID, VECTOR, Rejection, Validated, results_table, validate_queries, vectors_array,
)
from beamvec.index.shard import ROWS, Shard, group_predicates
from beamvec.transforms.build import cached_plan
from beamvec.transforms.validate import REJECTED, dead_letters

DEFAULT_MAX_SHARDS = 8


@dataclasses.dataclass(frozen=True)
class QueryBlock:
    """Queries of one block bound for one partition: positions in the block, vectors, predicates, k."""

    block: str
    positions: np.ndarray
    vectors: np.ndarray
    predicates: list
    k: int


@dataclasses.dataclass(frozen=True)
class Partial:
    """One partition's top-k for some queries of a block (ids padded with None, keys with -inf)."""

    partition: str
    positions: np.ndarray
    ids: np.ndarray
    keys: np.ndarray


def _block_key(validated: Validated) -> str:
    return f"{validated.rows[0]}:{validated.table.column(QUERY_ID)[0].as_py()!r}"


def _query_k(table: pa.Table, default_k: int) -> np.ndarray:
    if K not in table.column_names:
        return np.full(table.num_rows, default_k, np.int64)
    return np.asarray(table.column(K).fill_null(default_k).to_numpy(zero_copy_only=False), np.int64)


class _Route(beam.DoFn):
    def __init__(self, index_path: str, k: int):
        self.index_path, self.k = index_path, k

    def setup(self):
        self.manifest = Manifest.read(self.index_path)
        self.present = {p.id for p in self.manifest.partitions}
        self.schema = attribute_schema(self.index_path, self.manifest)
        self.routed = Metrics.counter("beamvec", "partitions_searched")
        self.rejected = Metrics.counter("beamvec", "queries_rejected")

    def process(self, validated: Validated):
        predicates = validated.table.column(PREDICATE).to_pylist() if PREDICATE in validated.table.column_names \
            else [None] * validated.table.num_rows
        groups = group_predicates(predicates)
        bad = {}
        for p, members in groups.items():
            try:
                p.validate(self.schema)
            except PredicateError as e:
                bad.update({int(i): f"predicate does not fit the index: {e}" for i in members})
        if bad:
            self.rejected.inc(len(bad))
            ids = validated.table.column(QUERY_ID).to_pylist()
            rejections = [Rejection(int(validated.rows[i]), str(ids[i]), reason) for i, reason in sorted(bad.items())]
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letters(Validated(validated.table, validated.vectors, validated.rows,
                                                                            tuple(rejections)), "queries"))
            keep = np.array(sorted(set(range(validated.table.num_rows)) - set(bad)), np.int64)
            if not len(keep):
                return
            validated = Validated(validated.table.take(pa.array(keep)), validated.vectors[keep], validated.rows[keep], ())
            predicates = [predicates[i] for i in keep]
            groups = group_predicates(predicates)
        key = _block_key(validated)
        yield beam.pvalue.TaggedOutput("blocks", (key, validated))
        parsed = [None] * len(predicates)
        for p, members in groups.items():
            for i in members:
                parsed[i] = p
        ks = _query_k(validated.table, self.k)
        plan = cached_plan(self.manifest.plan or {"kind": "single"})
        for ordinal, members in enumerate(plan.route(groups, validated.vectors)):
            pid = partition_id(ordinal)
            if len(members) and pid in self.present:
                self.routed.inc(len(members))
                yield pid, QueryBlock(key, members, validated.vectors[members], [parsed[i] for i in members],
                                      int(ks[members].max()))


def attribute_schema(index_path: str, manifest: Manifest) -> pa.Schema:
    """The items' attribute schema (with id), read from the first shard's rows file."""
    from beamvec.index import fs

    if not manifest.partitions:
        return pa.schema([("id", pa.int64() if manifest.id_type == "int64" else pa.string())])
    filesystem = fs.filesystem_for(index_path)
    path = filesystem.join(index_path, check_relative_path(manifest.partitions[0].path), ROWS)
    return pq.read_schema(pa.BufferReader(filesystem.read_bytes(path)))


_SHARDS: collections.OrderedDict = collections.OrderedDict()
_SHARDS_LOCK = threading.Lock()


def load_shard(index_path: str, manifest: Manifest, pid: str, max_shards: int) -> Shard:
    """The shard of partition ``pid``, loaded once per worker process and kept (LRU, ``max_shards``)."""
    entry = next(p for p in manifest.partitions if p.id == pid)
    key = (index_path, pid, entry.checksum)
    with _SHARDS_LOCK:
        if key in _SHARDS:
            _SHARDS.move_to_end(key)
            return _SHARDS[key]
    from beamvec.index import fs

    filesystem = fs.filesystem_for(index_path)
    shard = Shard.load(filesystem.join(index_path, check_relative_path(entry.path)), manifest.metric, manifest.dimension)
    with _SHARDS_LOCK:
        _SHARDS[key] = shard
        while len(_SHARDS) > max_shards:
            _SHARDS.popitem(last=False)
    return shard


class _Search(beam.DoFn):
    def __init__(self, index_path: str, batch_size: int, max_shards: int):
        self.index_path, self.batch_size, self.max_shards = index_path, batch_size, max_shards

    def setup(self):
        self.manifest = Manifest.read(self.index_path)

    def process(self, element) -> Iterable[tuple[str, Partial]]:
        pid, blocks = element
        shard = load_shard(self.index_path, self.manifest, pid, self.max_shards)
        for block in sorted(blocks, key=lambda b: b.block):
            for lo in range(0, len(block.positions), self.batch_size):
                hi = lo + self.batch_size
                result = shard.search(block.vectors[lo:hi], block.k, block.predicates[lo:hi])
                ids = np.asarray(shard.ids_of(result.rows).to_pylist(), dtype=object).reshape(result.rows.shape)
                yield block.block, Partial(pid, block.positions[lo:hi], ids, result.keys)


class _Merge(beam.DoFn):
    def __init__(self, metric: str, id_type: pa.DataType, k: int):
        self.metric, self.id_type, self.k = metric, id_type, k
        self.answered = Metrics.counter("beamvec", "queries_answered")

    def process(self, element):
        _, values = element
        validated = next(v for v in values if isinstance(v, Validated))
        partials = sorted((v for v in values if isinstance(v, Partial)), key=lambda p: p.partition)
        n = validated.table.num_rows
        ks = _query_k(validated.table, self.k)
        width = int(ks.max())
        ids = [np.full((n, width), None, object)]
        keys = [np.full((n, width), -np.inf, np.float32)]
        for partial in partials:
            found = partial.keys.shape[1]
            ids.append(np.full((n, width), None, object))
            keys.append(np.full((n, width), -np.inf, np.float32))
            ids[-1][partial.positions, :found] = partial.ids
            keys[-1][partial.positions, :found] = partial.keys
        ids, keys = np.concatenate(ids, axis=1), np.concatenate(keys, axis=1)
        pos, best = exact.top_k(keys, width)
        best_ids = np.take_along_axis(ids, np.maximum(pos, 0), axis=1)
        best_ids[pos < 0] = None
        found = np.minimum((pos >= 0).sum(axis=1), ks)
        self.answered.inc(n)
        yield results_table(validated.table.column(QUERY_ID), pa.array(best_ids.reshape(-1).tolist(), self.id_type),
                            exact.finish(best, self.metric), found)


class HybridSearch(beam.PTransform):
    """Validated query blocks -> ``{"results": results tables, "rejected": dead-letter tables}``.

    Results hold (query_id, neighbors best first), one table per block; ``k`` is the
    default where a query has no ``k`` of its own. Every query gets a result row (no
    neighbors when nothing matches its predicate) or, when its predicate names an
    unknown column or mismatches a type, a dead letter.
    """

    def __init__(self, index_path: str, k: int = 10, batch_size: int = 4096, max_shards: int = DEFAULT_MAX_SHARDS):
        super().__init__()
        self.index_path, self.k, self.batch_size, self.max_shards = index_path, k, batch_size, max_shards
        self.manifest = Manifest.read(index_path)

    def expand(self, queries):
        routed = queries | "Route" >> beam.ParDo(_Route(self.index_path, self.k)).with_outputs(
            "blocks", REJECTED, main="routed")
        partials = (
            routed.routed
            | "ByPartition" >> beam.GroupByKey()
            | "Search" >> beam.ParDo(_Search(self.index_path, self.batch_size, self.max_shards))
        )
        id_type = pa.int64() if self.manifest.id_type == "int64" else pa.string()
        results = (
            (routed.blocks, partials)
            | "Join" >> beam.Flatten()
            | "ByBlock" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(_Merge(self.manifest.metric, id_type, self.k))
        )
        return {"results": results, REJECTED: routed[REJECTED]}


class _Literals(dict):
    """Row values rendered as predicate literals for a template."""

    def __missing__(self, name):
        raise KeyError(f"the predicate template names {{{name}}}, which is not a column of the items")


def _literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value) + "'"


def render_predicates(template: str, table: pa.Table) -> list[str]:
    """The template filled from each row: ``category = {category} AND id != {id}``."""
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    columns = {n: table.column(n).to_pylist() for n in dict.fromkeys(names) if n in table.column_names}
    out = []
    for i in range(table.num_rows):
        out.append(template.format_map(_Literals({n: _literal(v[i]) for n, v in columns.items()})))
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
        yield beam.pvalue.TaggedOutput(REJECTED, dead_letters(
            Validated(checked.table, checked.vectors, checked.rows, rejections), "related items"))
    if checked.table.num_rows:
        yield Validated(checked.table, checked.vectors, validated.rows[checked.rows], ())


class RelatedItems(beam.PTransform):
    """Validated item blocks -> ``{"results", "rejected"}`` as :class:`HybridSearch`: each item's
    top-k related items under a predicate template filled from its own attributes
    (e.g. ``category = {category} AND id != {id}``)."""

    def __init__(self, index_path: str, template: str, k: int = 10, batch_size: int = 4096,
                 max_shards: int = DEFAULT_MAX_SHARDS):
        super().__init__()
        self.template, self.k = template, k
        self.search = HybridSearch(index_path, k, batch_size, max_shards)

    def expand(self, items):
        queries = items | "AsQueries" >> beam.FlatMap(_as_queries, self.template, self.k).with_outputs(
            REJECTED, main="queries")
        found = queries.queries | "Search" >> self.search
        rejected = (queries[REJECTED], found[REJECTED]) | "Rejected" >> beam.Flatten()
        return {"results": found["results"], REJECTED: rejected}
