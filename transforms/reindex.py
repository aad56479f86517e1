"""Incremental re-indexing as a Beam transform: :class:`Reindex`.

A reindex derives a new version of an index from its published one. It keeps the version's plan
(unless the workload drifted: :mod:`beamvec.index.drift`), codec and build settings, so a
partition whose content did not change (its fingerprint, :mod:`beamvec.index.fingerprint`) would
be rebuilt into the very same shard: its shard is copied instead (hard links on a local disk,
server-side copies on object stores). The new version is published only if no other version
was published since the reindex began (:class:`beamvec.index.versions.VersionConflict`).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from beamvec.index import drift, fs, querylog, versions
from beamvec.index.codec import Codec
from beamvec.index.manifest import PartitionEntry, partition_ordinal
from beamvec.index.plan import fit_plan, plan_from_json
from beamvec.index.querylog import QueryLog, read_workload
from beamvec.index.schema import ID, VECTOR, validate_items, vectors_array
from beamvec.index.search import index_codec
from beamvec.index.shard import Shard
from beamvec.index.shardfile import ROWS
from beamvec.transforms.build import HELDOUT, BuildIndex, Shape, copy_shard, reused_partial
from beamvec.transforms.io import absolute


def _decide(sample: pa.Table, total: int, shape: Shape, base_plan: dict, logs: tuple, partitioner: str,
            min_rows: int, max_rows: int, seed: int, threshold: float) -> tuple[dict, dict]:
    """(the plan to build with, the decision as JSON): the base's plan unless the new workload log
    (``logs``: the base's, the new one or None) fits a refitted plan so much better that the fit
    falls below ``threshold``."""
    log = logs[1]
    if log is None or not any(log.predicates):
        return base_plan, {"replan": False, "why": "no new workload given: the plan is kept"}
    valid = validate_items(sample, shape.dimension)
    attributes = valid.table.drop_columns([VECTOR])
    refitted = fit_plan(partitioner, attributes, valid.vectors, log.predicates, min_rows, max_rows,
                        total_rows=total, seed=seed)
    decision = drift.decide(plan_from_json(base_plan), refitted, attributes, valid.vectors, log.queries()
                            if log.has_vectors else log, total, threshold)
    return (refitted.to_json() if decision.replan else base_plan), decision.to_json()


class _BaseRows(beam.DoFn):
    """For upserts: each partition of the base version either changes (an upsert is assigned to it, or
    it holds an upserted or deleted id), and then its remaining rows are emitted to be rebuilt with
    the upserts, or it does not, and its shard is copied into the new version (output ``kept``; its
    held-out share in output ``heldout``)."""

    def __init__(self, base: str, version: str, metric: str):
        self.base, self.version, self.metric = base, version, metric
        self.read = Metrics.counter("beamvec", "base_items_read")
        self.replaced = Metrics.counter("beamvec", "items_replaced")
        self.deleted = Metrics.counter("beamvec", "items_deleted")
        self.indexed = Metrics.counter("beamvec", "items_indexed")
        self.reused = Metrics.counter("beamvec", "shards_reused")

    def process(self, element: tuple[int, PartitionEntry], upserted: set, deleted: set, touched: list,
                plan_json: dict, parts: tuple, codec: Codec | None) -> Iterable:
        ordinal, entry = element
        filesystem = fs.filesystem_for(self.base)
        path = filesystem.join(self.base, entry.path)
        heldout = parts[1]
        rows = pq.read_table(pa.BufferReader(filesystem.read_bytes(filesystem.join(path, ROWS))), columns=[ID])
        ids = rows.column(ID).to_pylist()
        gone_upserted = [i for i in ids if i in upserted]
        gone_deleted = [i for i in ids if i in deleted and i not in upserted]
        self.read.inc(len(ids))
        if ordinal not in set(touched) and not gone_upserted and not gone_deleted:
            copy_shard(self.base, entry, self.version)
            self.indexed.inc(entry.rows)
            self.reused.inc()
            if heldout is not None and len(heldout):
                yield beam.pvalue.TaggedOutput(HELDOUT, reused_partial(self.base, self.version, entry, ordinal,
                                                                       plan_json, heldout, self.metric, codec))
            yield beam.pvalue.TaggedOutput("kept", entry)
            return
        self.replaced.inc(len(gone_upserted))
        self.deleted.inc(len(gone_deleted))
        shard = Shard.load(path, self.metric, codec=codec)
        table = shard.attributes
        keep = pa.array([i not in upserted and i not in deleted for i in table.column(ID).to_pylist()], pa.bool_())
        vectors = shard.exact_rows()[np.asarray(keep)]
        table = table.filter(keep)
        if ID not in table.column_names:
            table = table.append_column(ID, shard.ids.filter(keep))
        yield ordinal, table.append_column(VECTOR, vectors_array(vectors))


def _lineage(decision: dict, mode: str, checksums: dict) -> dict:
    """What the pointer's history records of a reindex: its mode, whether it re-planned and why, and
    (when it kept the plan) its base's shard checksums, by which reused shards are counted."""
    return {"kind": "reindex", "mode": mode, "replanned": decision["replan"], "why": decision["why"],
            "base_checksums": {} if decision["replan"] else checksums}


class Reindex(BuildIndex):
    """Items -> a new version of the index at ``index``, published: a :class:`BuildResult`.

    Consumes items as :class:`BuildIndex` does. By default they are a full snapshot: every item the
    index should now hold. With ``upserts=True`` they are new or changed items (by id), and
    ``deletes`` lists the ids to remove; the other items stay as the published version holds them
    (its shards must keep the full vectors: no codec, or a codec that re-ranks). Only the partitions
    an upsert or a delete touches are read and rebuilt.

    The published version's plan, codec and build settings are kept, so a partition whose content
    did not change is not rebuilt: its shard is copied. With a new ``workload`` log, the plan is
    first measured against it (:func:`beamvec.index.drift.decide`): when its fit falls below
    ``drift_threshold``, the plan is refitted on the items' sample and every partition is rebuilt
    (with the new log, which the new version then keeps); otherwise the log the version was built
    with stays in use. The pointer's history records which, and why. The result gives the same
    answers as a full build of the same final items with the same plan and codec.

    Counters: ``shards_built``, ``shards_reused``; with upserts also ``base_items_read``,
    ``items_replaced`` and ``items_deleted``, so that ``items_read`` + ``base_items_read`` =
    ``items_indexed`` + ``items_rejected`` + ``items_replaced`` + ``items_deleted``.
    """

    def __init__(self, index: str, *, workload: QueryLog | str | None = None, upserts: bool = False,
                 deletes: Sequence | None = None, drift_threshold: float = drift.DEFAULT_THRESHOLD,
                 log: Callable[[str], None] = logging.getLogger(__name__).info):
        root = absolute(index)
        pointer = versions.read_pointer(root)
        if pointer is None:
            raise ValueError(f"{root}: no published version to reindex: build it first (beamvec build)")
        base_path, manifest = versions.open_manifest(root)
        settings = manifest.build
        if not settings or "partitioner" not in settings:
            raise ValueError(f"{root}: its version {pointer.current} does not record its build settings (built by "
                             "an older beamvec): build it again")
        if upserts and manifest.codec is not None:
            codec = index_codec(base_path, manifest)
            if not codec.spec.rerank:
                raise ValueError(f"{root}: its shards keep only {codec.spec.text()} codes, not the vectors that "
                                 "upserts would rebuild them from: reindex from a full snapshot")
        if not 0 < drift_threshold <= 1:
            raise ValueError(f"drift_threshold must be in (0, 1], got {drift_threshold}")
        base_log = querylog.read_from_index(base_path, manifest.workload, manifest.dimension)
        super().__init__(root, workload=base_log, partitioner=settings["partitioner"], metric=manifest.metric,
                         shard_spec=settings["shard_spec"], recall_target=settings["recall_target"],
                         min_partition_rows=settings["min_partition_rows"],
                         max_partition_rows=settings["max_partition_rows"], sample_rows=settings["sample_rows"],
                         dimension=manifest.dimension, seed=settings["seed"],
                         codec=manifest.codec["spec"] if manifest.codec else None, log=log)
        self.new_log = workload if isinstance(workload, QueryLog) or workload is None \
            else read_workload(workload, manifest.dimension)
        self.base, self.base_path, self.base_manifest = pointer.current, base_path, manifest
        self.model_identity = manifest.model
        self.upserts, self.deletes, self.drift_threshold = upserts, list(deletes or []), drift_threshold
        if deletes and not upserts:
            raise ValueError("deletes apply to upserts: with a full snapshot, leave the deleted items out")
        if upserts and self.new_log is not None:
            raise ValueError("re-planning for a new workload needs every item: give a full snapshot, not upserts")
        self.reuse = None if upserts else {e.id: (e, base_path) for e in manifest.partitions}

    def fit_plan(self, sample, total, shape):
        s = self.settings
        # The logs travel as one element, not inside a stage's arguments (pickled with every stage).
        self._logs = sample.pipeline | "Logs" >> beam.Create([(self.workload, self.new_log)])
        decided = sample | "Replan" >> beam.Map(_decide, beam.pvalue.AsSingleton(total), beam.pvalue.AsSingleton(shape),
                                                self.base_manifest.plan, beam.pvalue.AsSingleton(self._logs),
                                                s.partitioner, s.min_partition_rows, s.max_partition_rows, s.seed,
                                                self.drift_threshold)
        self._decision = decided | "Decision" >> beam.Map(lambda d: d[1])
        return decided | "Plan" >> beam.Map(lambda d: d[0])

    def fit_codec(self, sample, shape):
        path, manifest = self.base_path, self.base_manifest
        return sample | "BaseCodec" >> beam.Map(lambda _: index_codec(path, manifest))

    def workload_log(self, pipeline):
        return self._logs | "ChooseWorkload" >> beam.Map(lambda logs, d: logs[1] if d["replan"] else logs[0],
                                                         beam.pvalue.AsSingleton(self._decision))

    def lineage_of(self, pipeline):
        return self._decision | "Lineage" >> beam.Map(
            _lineage, "upserts" if self.upserts else "snapshot",
            {e.id: e.checksum for e in self.base_manifest.partitions})

    def carry(self, blocks, assigned, plan, parts, codec):
        if not self.upserts:
            return assigned, (), ()
        pipeline = blocks.pipeline
        codec = codec if codec is not None else pipeline | "NoBaseCodec" >> beam.Create([None])
        # The valid upserts only: an item whose upsert is rejected keeps its current copy.
        upserted = (assigned | "UpsertIds" >> beam.FlatMap(lambda e: e[1].column(ID).to_pylist())
                    | "UpsertSet" >> beam.combiners.ToSet())
        deleted = pipeline | "Deletes" >> beam.Create([set(self.deletes)])
        touched = assigned | "Touched" >> beam.Map(lambda e: e[0]) | "Distinct" >> beam.Distinct()
        base = (pipeline | "BasePartitions" >> beam.Create(
                    [(partition_ordinal(e.id), e) for e in self.base_manifest.partitions])
                | "Reshuffle" >> beam.Reshuffle()
                | "BaseRows" >> beam.ParDo(_BaseRows(self.base_path, self.output, self.settings.metric),
                                           beam.pvalue.AsSingleton(upserted), beam.pvalue.AsSingleton(deleted),
                                           beam.pvalue.AsList(touched), beam.pvalue.AsSingleton(plan),
                                           beam.pvalue.AsSingleton(parts), beam.pvalue.AsSingleton(codec)
                                           ).with_outputs("kept", HELDOUT, main="rows"))
        return (assigned, base.rows) | "WithBaseRows" >> beam.Flatten(), (base.kept,), (base[HELDOUT],)
