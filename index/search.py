"""The search core: a batch of hybrid queries against an index's shards, step by step.

:meth:`beamvec.index.index.Index.search` runs these steps in one process;
:class:`beamvec.transforms.search.HybridSearch` runs the same functions in Beam stages
(group and route where the queries are, search where a shard is loaded, merge per block
of queries), so both give the same neighbours and scores for the same queries:

1. :func:`group_queries`: each distinct predicate parsed once, with its queries;
2. :func:`check_predicates`: each one validated against the index's attribute schema;
3. :class:`Router`: the shards each query must visit: those whose rows can match its
   predicate (zone maps, :mod:`beamvec.index.zones`), among the partitions a vector-space
   plan probes for it;
4. :func:`plan_shard` (Python-bound: one thread) then :func:`run_shard` (on a pool): one
   shard searched once for all the queries routed to it, grouped by predicate in the
   order of their first query (:func:`shard_groups`; the cost model prices a group by its
   size, so a shard must see the same queries in the same order on every path), giving a
   :class:`Partial`;
5. :func:`merge_partial`: each shard's partial merged into the running top-k, in
   partition order, by handle (partition ordinal * :data:`ROW_SPACE` + row).

Shards load with their checksum and row count checked (:func:`load_shard`; with the index's
codec, :func:`index_codec`, when its vectors are encoded), and share
their index's rows encoded once (:class:`IndexRows`), so each predicate compiles once per batch.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.index import exact, fs
from beamvec.index.codec import Codec
from beamvec.index.columns import Columns
from beamvec.index.manifest import Manifest, ManifestError, check_relative_path, checksum, partition_id
from beamvec.index.plan import PartitionPlan
from beamvec.index.predicate import Predicate, PredicateError
from beamvec.index.shard import GroupPlan, Shard, ShardResult, group_predicates
from beamvec.index.shardfile import ROWS
from beamvec.index.shardspec import SearchParams
from beamvec.index.stats import SearchStats
from beamvec.index.zones import ZoneMaps

ROW_SPACE = 1 << 40
"""Handles in merged results: partition ordinal * ROW_SPACE + row."""


class Queries(NamedTuple):
    """A batch's queries grouped by predicate: ``groups`` maps each distinct predicate, in the order
    of its first query, to its queries' positions; ``group_of`` is each query's group number."""

    groups: dict[Predicate, np.ndarray]
    group_of: np.ndarray

    @property
    def distinct(self) -> list[Predicate]:
        return list(self.groups)


def group_queries(predicates: Sequence[str | Predicate | None]) -> Queries:
    """Group queries by predicate (texts parsed once each; None or '' = no filter); PredicateError
    on a text that does not parse."""
    groups = group_predicates(predicates)
    group_of = np.empty(len(predicates), np.int64)
    for g, members in enumerate(groups.values()):
        group_of[members] = g
    return Queries(groups, group_of)


def check_predicates(predicates: Sequence[Predicate], schema: pa.Schema) -> dict[int, str]:
    """The predicates (by position) that do not fit ``schema``, and why."""
    bad = {}
    for i, p in enumerate(predicates):
        try:
            p.validate(schema)
        except PredicateError as e:
            bad[i] = str(e)
    return bad


def shard_groups(queries: Queries, members: np.ndarray) -> dict[Predicate, np.ndarray]:
    """The queries at positions ``members`` (ascending) of a batch, grouped by predicate in the order
    of their first query there, as positions into ``members``: what a shard is searched with."""
    local = queries.group_of[members]
    order = np.argsort(local, kind="stable")
    ordered = local[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else np.zeros(0, np.int64)
    spans = sorted(zip(starts, np.r_[starts[1:], len(order)]), key=lambda span: order[span[0]])
    distinct = queries.distinct
    return {distinct[ordered[a]]: order[a:b] for a, b in spans}


class IndexRows:
    """An index's rows (ids and attributes), its shards' laid end to end in manifest order and
    encoded once, with zone maps over each shard's (``zones``, what a :class:`Router` reads). A
    shard that :meth:`share` s them evaluates its predicates over its own rows of these columns,
    so a batch compiles each predicate once for all shards, not once per shard."""

    def __init__(self, tables: Sequence[pa.Table], schema: pa.Schema | None = None):
        """``tables``: each shard's rows, in manifest order; ``schema``: theirs when there are none."""
        sizes = [t.num_rows for t in tables]
        self.schema = tables[0].schema if tables else schema
        self.columns = Columns(pa.concat_tables(tables) if tables else None, 0)
        self.starts = np.cumsum([0] + sizes[:-1]).tolist() if tables else []
        self.zones = ZoneMaps([self.columns.segment(a, a + n) for a, n in zip(self.starts, sizes)])

    def share(self, shard: Shard, ordinal: int) -> Shard:
        """``shard`` (partition ``ordinal``), made to evaluate predicates over its rows of these columns."""
        shard.share_columns(self.columns, self.starts[ordinal])
        return shard

    def forget_predicates(self) -> None:
        """Forget the compiled predicates and the zone maps' judgements (the encoded columns stay)."""
        self.columns.forget_programs()
        self.zones.forget_predicates()


class Router:
    """Which shards each query of a batch must visit: of the partitions ``plan`` probes for it
    (all of them unless the plan routes by vector), those whose rows can match its predicate
    (``zones``, over the index's shards in manifest order; ``partitions`` their partition ids)."""

    def __init__(self, plan: PartitionPlan, partitions: Sequence[str], zones: ZoneMaps):
        self.plan, self.zones = plan, zones
        self._ordinal = {pid: ordinal for ordinal, pid in enumerate(partitions)}

    def route(self, queries: Queries, vectors: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(shard ordinal, ascending positions of the queries to search in it), in shard order."""
        reach = np.array([self.zones.may_match(p) for p in queries.groups]).reshape(
            len(queries.groups), self.zones.partitions)
        if self.plan.routes_by_vector:
            probed = [(ordinal, members) for part, members in enumerate(self.plan.route(queries.groups, vectors))
                      if (ordinal := self._ordinal.get(partition_id(part))) is not None]
        else:
            everyone = np.arange(len(queries.group_of))
            probed = [(ordinal, everyone) for ordinal in range(self.zones.partitions)]
        out = []
        for ordinal, members in probed:
            members = members[reach[queries.group_of[members], ordinal]]
            if len(members):
                out.append((ordinal, members))
        return out


class Partial(NamedTuple):
    """One shard's top-k for some queries of a batch: their positions, handles (ordinal *
    :data:`ROW_SPACE` + row; -1 none) and ranking keys (-inf none), best first."""

    ordinal: int
    members: np.ndarray
    handles: np.ndarray
    keys: np.ndarray


def partial_of(ordinal: int, members: np.ndarray, result: ShardResult) -> Partial:
    """A shard's search result as a :class:`Partial`."""
    return Partial(ordinal, members, np.where(result.rows >= 0, ordinal * ROW_SPACE + result.rows, -1), result.keys)


class ShardSearch(NamedTuple):
    """One shard's search for the queries ``members`` of a batch, planned (:func:`plan_shard`)."""

    shard: Shard
    ordinal: int
    members: np.ndarray
    plan: GroupPlan
    stats: SearchStats


def plan_shard(shard: Shard, ordinal: int, queries: Queries, members: np.ndarray, k: int,
               params: SearchParams | None = None) -> ShardSearch:
    """Plan shard ``ordinal``'s search for the queries ``members`` (ascending) of a batch: each
    group's run of matching rows, its strategy and its masks. This is the Python-bound part, so
    a caller plans its shards on one thread and runs them (:func:`run_shard`) on many."""
    stats = SearchStats()
    return ShardSearch(shard, ordinal, members, shard.plan_groups(k, shard_groups(queries, members), params, stats),
                       stats)


def run_shard(search: ShardSearch, prepared: np.ndarray, k: int, parallel: bool = True) -> tuple[Partial, SearchStats]:
    """Run a planned search; ``prepared``: the member queries' vectors, as :func:`beamvec.index.exact.prepare`
    gives them. Callers hold BLAS at one thread (``threadpool_limits(1, "blas")``): products are
    then summed in the same order on every path, and scores agree to the bit."""
    result = search.shard.execute(prepared, k, search.plan, parallel)
    result.stats.add(search.stats)
    return partial_of(search.ordinal, search.members, result), result.stats


def search_shard(shard: Shard, ordinal: int, queries: Queries, members: np.ndarray, prepared: np.ndarray, k: int,
                 params: SearchParams | None = None, parallel: bool = True) -> tuple[Partial, SearchStats]:
    """:func:`plan_shard` then :func:`run_shard`, with one BLAS thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        return run_shard(plan_shard(shard, ordinal, queries, members, k, params), prepared, k, parallel)


def merge_partial(handles: np.ndarray, keys: np.ndarray, partial: Partial) -> None:
    """Merge ``partial`` into the running top-k (``handles``, ``keys``: (n, k), in place). Merge a
    batch's partials in partition order: ties go to the earlier."""
    m = partial.members
    handles[m], keys[m] = exact.merge([(handles[m], keys[m]), (partial.handles, partial.keys)], handles.shape[1])


def shard_path(index_path: str, manifest: Manifest, ordinal: int) -> str:
    entry = manifest.partitions[ordinal]
    return fs.filesystem_for(index_path).join(index_path, check_relative_path(entry.path))


def load_shard(index_path: str, manifest: Manifest, ordinal: int, verify: bool = True) -> Shard:
    """Shard ``ordinal`` of the index at ``index_path``, checked: its checksum (with ``verify``),
    metric, dimension and row count against the manifest (ManifestError naming the shard)."""
    entry = manifest.partitions[ordinal]
    path = shard_path(index_path, manifest, ordinal)
    if verify and checksum(path) != entry.checksum:
        raise ManifestError(f"shard {entry.id} at {path} does not match its checksum in the manifest")
    shard = Shard.load(path, metric=manifest.metric, dimension=manifest.dimension, codec=index_codec(index_path, manifest))
    if shard.num_rows != entry.rows:
        raise ManifestError(f"shard {entry.id} holds {shard.num_rows} rows, the manifest says {entry.rows}")
    return shard


_CODECS: dict[tuple[str, str], Codec] = {}


def index_codec(index_path: str, manifest: Manifest) -> Codec | None:
    """The codec the index's shards are encoded with (None for none), loaded once per process and
    checked against the manifest (ManifestError when it does not match)."""
    if manifest.codec is None:
        return None
    key = (index_path, manifest.codec["checksum"])
    if key not in _CODECS:
        codec = load_codec(index_path, manifest)
        _CODECS.clear()
        _CODECS[key] = codec
    return _CODECS[key]


def load_codec(index_path: str, manifest: Manifest) -> Codec:
    """The index's codec (which it must have) read from storage now and checked against the manifest."""
    path = fs.filesystem_for(index_path).join(index_path, check_relative_path(manifest.codec["path"]))
    codec = Codec.load(path)
    if codec.checksum != manifest.codec["checksum"] or codec.dimension != manifest.dimension \
            or codec.metric != manifest.metric:
        raise ManifestError(f"the codec at {path} ({codec.spec.text()}, {codec.checksum}) is not the one the "
                            f"manifest names ({manifest.codec['spec']}, {manifest.codec['checksum']})")
    return codec


def read_rows(index_path: str, manifest: Manifest, ordinal: int) -> pa.Table:
    """Shard ``ordinal``'s rows (ids and attributes) only, its row count checked: what routing reads."""
    entry = manifest.partitions[ordinal]
    path = fs.filesystem_for(index_path).join(shard_path(index_path, manifest, ordinal), ROWS)
    rows = pq.read_table(pa.BufferReader(fs.filesystem_for(index_path).read_bytes(path)))
    if rows.num_rows != entry.rows:
        raise ManifestError(f"shard {entry.id} holds {rows.num_rows} rows, the manifest says {entry.rows}")
    return rows
