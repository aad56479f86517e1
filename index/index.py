"""An index: a directory of shards, one per partition, and the manifest that names them.

``build_index`` writes one; ``Index.open`` reads one; ``Index.search`` answers a
batch of filtered queries: it routes each query to the partitions whose
description can hold a matching row, searches each such shard once for all its
queries, and merges the per-partition top-k into the global top-k.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from beamvec.index import exact, fs
from beamvec.index.codec import Codec, CodecSpec, fit_sample, save_in_index
from beamvec.index.fingerprint import build_context, partition_fingerprint
from beamvec.index.manifest import Manifest, PartitionEntry, check_relative_path, checksum, partition_id
from beamvec.index.plan import PartitionPlan, SinglePlan, plan_from_json
from beamvec.index.predicate import MATCH_ALL, Predicate
from beamvec.index.search import (
    ROW_SPACE, IndexRows, Router, group_queries, load_shard, merge_partial, plan_shard, run_shard,
)
from beamvec.index.shard import Shard, clear_predicate_caches
from beamvec.index.shardspec import SearchParams
from beamvec.index.stats import SearchStats

if TYPE_CHECKING:
    from beamvec.index.querylog import QueryLog

# Predicates an index remembers as checked against its columns.
_VALIDATED_CACHE = 100_000


def write_shard(index_path: str, partition_id: str, shard: Shard, description: Predicate = MATCH_ALL) -> PartitionEntry:
    """Save ``shard`` under the index directory; return its manifest entry."""
    filesystem = fs.filesystem_for(index_path)
    relative = check_relative_path(f"shards/{partition_id}")
    path = filesystem.join(index_path, relative)
    shard.save(path)
    return PartitionEntry(partition_id, description.to_text(), shard.num_rows, relative, checksum(path))


def id_type_name(ids: pa.Array) -> str:
    """'int64' or 'string': how an index hands ids back."""
    if pa.types.is_integer(ids.type):
        return "int64"
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return "string"
    raise ValueError(f"ids must be strings or integers, got {ids.type}")


def build_index(
    path: str,
    ids: pa.Array | Sequence,
    vectors: np.ndarray,
    attributes: pa.Table | None = None,
    metric: str = "dot_product",
    plan: PartitionPlan | None = None,
    config: str | None = None,
    recall_target: float = 0.95,
    seed: int = 0,
    log: "QueryLog | None" = None,
    codec: Codec | CodecSpec | str | None = None,
    sample_rows: int = 50_000,
) -> Manifest:
    """Build an index in-process: one shard per non-empty partition of ``plan`` (default: one).

    With a workload ``log`` that carries query vectors (:class:`beamvec.index.querylog.QueryLog`),
    each shard calibrates its leaves to search on the log queries the plan routes to it
    (the log's calibration part), and the manifest records the recall@10 the index then
    reaches on the log's held-out part (``heldout_recall``): each shard's search results
    for them, as :meth:`Index.search` gets them, against the exact answer over its rows,
    merged (:func:`beamvec.index.querylog.heldout_partial`; the same as a Beam build). The plan is not fitted here:
    fit it on all the log's predicates (:func:`beamvec.index.plan.fit_plan`).
    ``codec`` (a spec such as ``PCA48,SQ8`` or a fitted :class:`beamvec.index.codec.Codec`):
    the shards store the vectors' codes; a spec is fitted on the ``sample_rows`` items with the
    smallest id hashes, as a Beam build does (OOD also on the log's calibration queries), and
    the codec is saved in the index.
    The index is written as a new version (:mod:`beamvec.index.versions`): shards first, the
    manifest last, then published once every shard matches its checksum, so a reader never sees
    an index whose shards are not all in place. Returns the manifest.
    """
    from beamvec.index import querylog, versions

    ids = ids if isinstance(ids, pa.Array) else pa.array(list(ids))
    vectors = np.asarray(vectors, np.float32)
    attributes = attributes if attributes is not None and attributes.num_columns else pa.table({"id": ids})
    plan = plan or SinglePlan()
    table = attributes if "id" in attributes.column_names else attributes.append_column("id", ids)
    calibration, heldout = querylog.build_parts(log, table.schema, vectors.shape[1])
    routed = querylog.route(plan, calibration) if calibration is not None else None
    assignment = plan.assign(table, vectors)
    descriptions = plan.descriptions()
    name = versions.new_version()
    version = versions.version_path(path, name)
    fs.filesystem_for(path).makedirs(version)
    if isinstance(codec, (str, CodecSpec)):
        codec = fit_sample(codec, ids, vectors, metric, None if calibration is None else calibration.vectors, seed,
                           sample_rows)
    codec_entry = save_in_index(version, codec) if codec is not None else None
    entries, partials = [], []
    plan_json = plan.to_json()
    for ordinal in range(plan.num_partitions):
        rows = np.flatnonzero(assignment == ordinal)
        if len(rows) == 0:
            continue
        taken = pa.array(rows)
        queries = None if routed is None else calibration.vectors[routed[ordinal]]
        part_ids, part_attributes = ids.take(taken), attributes.take(taken)
        codes = codec.encode(exact.prepare(vectors[rows], metric)) if codec is not None else None
        fingerprint = partition_fingerprint(
            part_ids, vectors[rows] if codes is None else codes, part_attributes,
            build_context(metric, config, recall_target, seed, plan_json, ordinal, codec and codec.checksum), queries)
        shard = Shard.build(part_ids, vectors[rows], part_attributes, metric=metric, config=config,
                            recall_target=recall_target, seed=seed, row_order=plan.row_order,
                            calibration_queries=queries, codec=codec, codes=codes)
        entries.append(dataclasses.replace(write_shard(version, partition_id(ordinal), shard, descriptions[ordinal]),
                                           fingerprint=fingerprint))
        if heldout is not None:  # measured while the shard is in memory, as a Beam build does
            partials.append(querylog.heldout_partial(shard, ordinal, plan, heldout))
    manifest = Manifest(metric, vectors.shape[1], id_type_name(ids), tuple(entries), plan_json, codec=codec_entry,
                        build=build_settings(metric, config, recall_target, seed),
                        workload=querylog.save_in_index(version, log))
    if heldout is not None:
        recall = querylog.summarize_partials(partials, len(heldout), querylog.HELDOUT_K, recall_target)
        manifest = dataclasses.replace(manifest, heldout_recall=recall)
    manifest.write(version)
    versions.publish(path, name, kind="build", rebuilt=len(entries), reused=0)
    return manifest


def build_settings(metric: str, config: str | None, recall_target: float, seed: int, **more) -> dict:
    """The manifest's record of how its shards were built (what a reindex rebuilds them with)."""
    return {"metric": metric, "shard_spec": config, "recall_target": recall_target, "seed": seed, **more}


class Index:
    """An opened index. Shards load on first use and stay loaded.

    ``workers`` shards are searched at once, each on one thread (default: the CPUs
    this process may use); results do not depend on it.
    ``stats`` accumulates what searches did (queries per strategy, rows scored);
    ``partitions_searched`` counts (query, partition) pairs searched.
    """

    def __init__(self, path: str, manifest: Manifest, verify: bool = True, workers: int | None = None):
        self.path = path
        self.manifest = manifest
        self.verify = verify
        self.workers = workers or usable_cpus()
        self.stats = SearchStats()
        self.partitions_searched = 0
        self._shards: dict[str, Shard] = {}
        self.plan = plan_from_json(manifest.plan)
        self._entry = {p.id: i for i, p in enumerate(manifest.partitions)}
        self._validated: set[Predicate] = set()
        self._rows: IndexRows | None = None
        self._router: Router | None = None

    @classmethod
    def open(cls, path: str, verify: bool = True, workers: int | None = None) -> "Index":
        """Open the index at ``path``: its published version (:func:`beamvec.index.versions.resolve`,
        read once: a version published later is not seen). With ``verify``, each shard's checksum is
        checked when it loads."""
        from beamvec.index.versions import open_manifest

        return cls(*open_manifest(path), verify, workers)

    @property
    def metric(self) -> str:
        return self.manifest.metric

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    def shard(self, ordinal: int) -> Shard:
        """The shard of partition ``ordinal``, loaded (and checked: :func:`beamvec.index.search.load_shard`) on first use."""
        entry = self.manifest.partitions[ordinal]
        if entry.id not in self._shards:
            self._shards[entry.id] = load_shard(self.path, self.manifest, ordinal, self.verify)
        return self._shards[entry.id]

    def clear_caches(self) -> None:
        """Forget everything learnt from predicates seen so far (parses, validation, routes,
        masks), keeping the shards loaded: the next search costs what a fresh batch costs."""
        self._validated.clear()
        self.plan.clear_caches()
        clear_predicate_caches()
        if self._rows is not None:
            self._rows.forget_predicates()
        for shard in self._shards.values():
            shard.clear_caches()

    def search(
        self,
        vectors: np.ndarray,
        predicates: Sequence[str | Predicate | None] | None = None,
        k: int = 10,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query under its predicate.

        ``vectors`` is (n, d) float32; ``predicates`` n texts or Predicates (None or
        '' = no filter). Returns (ids, scores), each (n, min(k, rows in the index)), best first: ids as given
        at build (int64 padded with -1, or strings in an object array padded with
        None), scores float32 padded with NaN. ``stats`` adds up where the time went
        (:class:`beamvec.index.stats.SearchStats`; ``stats.profile()`` prints it).
        """
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ValueError(f"query vectors have shape {vectors.shape}; the index has dimension {self.dimension}")
        if not np.isfinite(vectors).all():
            bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
            raise ValueError(f"{len(bad)} query vectors hold NaN or infinite values (the first: query {bad[0]})")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(min(k, max(self.manifest.num_rows, 1)))  # no more neighbours than items
        n = len(vectors)
        with self.stats.timed("predicates"):
            if predicates is not None and len(predicates) != n:
                raise ValueError(f"{len(predicates)} predicates for {n} queries")
            queries = group_queries(predicates if predicates is not None else [None] * n)
            self._validate(queries.distinct)
        with self.stats.timed("routing"):
            tasks = [(ordinal, members, self.shard(ordinal))
                     for ordinal, members in self.router().route(queries, vectors)]
        prepared = exact.prepare(vectors, self.metric)
        handles = np.full((n, k), -1, np.int64)
        keys = np.full((n, k), -np.inf, np.float32)

        def start(t: int):
            """Plan a shard's search (runs and masks: Python, so on this thread) and start it."""
            ordinal, members, shard = tasks[t]
            planned = plan_shard(shard, ordinal, queries, members, k, params)
            if pool is None:
                return run_shard(planned, prepared[members], k)
            return pool.submit(run_shard, planned, prepared[members], k, False)

        # One BLAS thread always: products are per shard and small, and their sums then add
        # up in the same order whatever the number of workers, so scores agree to the bit.
        with contextlib.ExitStack() as stack:
            stack.enter_context(threadpool_limits(1, "blas"))
            pool = stack.enter_context(ThreadPoolExecutor(self.workers)) if self.workers > 1 else None
            if pool is not None:  # largest first, each planned while the workers search the ones before it
                by_cost = sorted(range(len(tasks)), key=lambda t: -len(tasks[t][1]) * tasks[t][2].num_rows)
                futures = {t: start(t) for t in by_cost}
                results = (futures[t].result() for t in range(len(tasks)))  # merged in partition order
            else:
                results = map(start, range(len(tasks)))
            for (_, members, _), (partial, stats) in zip(tasks, results):
                self.stats.add(stats)
                self.partitions_searched += len(members)
                with self.stats.timed("merge"):
                    merge_partial(handles, keys, partial)
        return self._ids(handles), exact.finish(keys, self.metric)

    def _validate(self, predicates: list[Predicate]) -> None:
        """Check each predicate once against the index's columns (every shard has the same)."""
        if not self.manifest.partitions:
            return
        schema = self.shard(0).attributes.schema
        for p in predicates:
            if p not in self._validated:
                p.validate(schema)
                if len(self._validated) >= _VALIDATED_CACHE:
                    self._validated.clear()
                self._validated.add(p)

    def rows(self) -> IndexRows:
        """Every shard's rows, laid end to end and encoded once (loading the shards on first use),
        the shards sharing them (:class:`beamvec.index.search.IndexRows`): each predicate then
        compiles once for all shards, and their zone maps route."""
        if self._rows is None:
            shards = [self.shard(o) for o in range(len(self.manifest.partitions))]
            self._rows = IndexRows([s.attributes for s in shards])
            for ordinal, shard in enumerate(shards):
                self._rows.share(shard, ordinal)
        return self._rows

    def router(self) -> Router:
        """Routes queries to shards by the shards' zone maps (see :meth:`rows`) within the plan's probes."""
        if self._router is None:
            self._router = Router(self.plan, [p.id for p in self.manifest.partitions], self.rows().zones)
        return self._router

    def _ids(self, handles: np.ndarray) -> np.ndarray:
        integer = self.manifest.id_type == "int64"
        out = np.full(handles.shape, -1 if integer else None, np.int64 if integer else object)
        ordinal = np.where(handles >= 0, handles // ROW_SPACE, -1)
        for o in np.unique(ordinal[ordinal >= 0]):
            where = ordinal == o
            rows = handles[where] % ROW_SPACE
            out[where] = np.asarray(self.shard(int(o)).ids.take(pa.array(rows)).to_numpy(zero_copy_only=False))
        return out


def usable_cpus() -> int:
    """The CPUs this process may run on (all of them where the OS cannot say)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
