"""Index building as Beam transforms: sample, fit the plan, assign rows, build shards, write the manifest.

Analyze-then-apply: the partition plan is fitted once on a sample and reaches
every worker as a singleton side input; each partition's rows are grouped onto
one worker, which builds that partition's ScaNN shard and writes it under the
index directory. The manifest is written last, from the entries of all shards.

With a workload log that carries query vectors, its calibration part travels with
the shard builder (a few thousand vectors at most): each worker calibrates its shard
on the log queries the plan routes to it. The held-out part is measured shard by
shard while each shard is still in memory (:func:`beamvec.index.querylog.heldout_partial`);
the partials merge into the recall figure the manifest records.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from beamvec.index.hashing import id_hashes
from beamvec.index.index import id_type_name, write_shard
from beamvec.index.manifest import partition_id
from beamvec.index import querylog
from beamvec.index.manifest import Manifest, PartitionEntry
from beamvec.index.plan import PartitionPlan, fit_plan, plan_from_json
from beamvec.index.querylog import QueryLog
from beamvec.index.schema import ID, VECTOR, Validated, validate_items, vectors_array
from beamvec.index.shard import Shard
from beamvec.transforms.io import Block
from beamvec.transforms.validate import REJECTED, dead_letters

_HASH = "__beamvec_hash"
HELDOUT = "heldout"


def _rows_table(validated: Validated) -> pa.Table:
    """A validated block as one table: id, attributes, and the vectors as fixed_size_list<float32>."""
    table = validated.table.drop_columns([VECTOR])
    return table.append_column(VECTOR, vectors_array(validated.vectors))


class _BottomK(beam.CombineFn):
    """The ``size`` rows with the smallest id hashes: a deterministic, mergeable sample."""

    def __init__(self, size: int):
        self.size = size

    def _keep(self, table: pa.Table | None) -> pa.Table | None:
        if table is None or table.num_rows <= self.size:
            return table
        order = np.argsort(table.column(_HASH).to_numpy(), kind="stable")[: self.size]
        return table.take(pa.array(order))

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, block: Block):
        table = block.table.filter(pc.is_valid(block.table.column(ID)))
        table = table.append_column(_HASH, pa.array(id_hashes(table.column(ID).combine_chunks())))
        return self.merge_accumulators([accumulator, self._keep(table)])

    def merge_accumulators(self, accumulators):
        tables = [t for t in accumulators if t is not None]
        if not tables:
            return None
        return self._keep(pa.concat_tables(tables, promote_options="permissive"))

    def extract_output(self, accumulator):
        if accumulator is None:
            return None
        order = np.lexsort((accumulator.column("id").to_numpy(zero_copy_only=False).astype(str),
                            accumulator.column(_HASH).to_numpy()))
        return accumulator.take(pa.array(order)).drop_columns([_HASH])


class SampleRows(beam.PTransform):
    """Item blocks as read -> one table of at most ``size`` rows (smallest id hashes), the same on every runner."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def expand(self, items):
        return items | beam.CombineGlobally(_BottomK(self.size))


def _fit(sample: pa.Table | None, total_rows: int, spec: str, workload: Sequence[str | None],
         min_rows: int, max_rows: int, seed: int, dimension: int | None) -> dict:
    valid = validate_items(sample, dimension) if sample is not None else None
    if valid is None or not valid.table.num_rows:
        raise ValueError("no valid items to index: every item was rejected (see the dead letters)")
    return fit_plan(spec, valid.table.drop_columns([VECTOR]), valid.vectors, workload, min_rows, max_rows,
                    total_rows=total_rows, seed=seed).to_json()


class FitPartitioner(beam.PTransform):
    """Item blocks as read -> the partition plan as a singleton PCollection of its JSON dict.

    Fits on a sample of the rows (their smallest id hashes; rows that fail
    validation are left out of the fit). Give it its own read of the items: then
    the full collection flows once, straight from the read into partition
    assignment, instead of being held until the plan is ready.
    ``spec``: workload, hash, attribute:COL, kmeans or single; ``workload``: past
    query predicates (the workload partitioner needs them).
    """

    def __init__(self, spec: str, workload: Sequence[str | None] = (), min_rows: int = 10_000,
                 max_rows: int = 100_000, sample_rows: int = 50_000, seed: int = 0, dimension: int | None = None):
        super().__init__()
        self.spec, self.workload = spec, list(workload)
        self.min_rows, self.max_rows, self.sample_rows, self.seed = min_rows, max_rows, sample_rows, seed
        self.dimension = dimension

    def expand(self, blocks):
        total = blocks | "Count" >> beam.Map(lambda b: b.table.num_rows) | "Total" >> beam.CombineGlobally(sum)
        return (
            blocks
            | "Sample" >> SampleRows(self.sample_rows)
            | "Fit" >> beam.Map(_fit, beam.pvalue.AsSingleton(total), self.spec, self.workload,
                                self.min_rows, self.max_rows, self.seed, self.dimension)
        )


_PLANS: dict[str, PartitionPlan] = {}


def cached_plan(plan_json: dict) -> PartitionPlan:
    """The plan object for a plan JSON, built once per worker process."""
    key = hashlib.sha256(json.dumps(plan_json, sort_keys=True).encode()).hexdigest()
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = plan_from_json(plan_json)
    return _PLANS[key]


def _assign(validated: Validated, plan_json: dict) -> Iterable[tuple[int, pa.Table]]:
    table = _rows_table(validated)
    assignment = cached_plan(plan_json).assign(table, validated.vectors)
    for ordinal in np.unique(assignment):
        yield int(ordinal), table.filter(pa.array(assignment == ordinal))


class AssignPartitions(beam.PTransform):
    """Validated item blocks + plan (singleton side input) -> (partition ordinal, rows table)."""

    def __init__(self, plan):
        super().__init__()
        self.plan = plan

    def expand(self, items):
        return items | beam.FlatMap(_assign, beam.pvalue.AsSingleton(self.plan))


class _BuildShard(beam.DoFn):
    def __init__(self, index_path: str, metric: str, config: str | None, recall_target: float, seed: int,
                 calibration: QueryLog | None = None, heldout: QueryLog | None = None):
        self.index_path, self.metric, self.config = index_path, metric, config
        self.recall_target, self.seed = recall_target, seed
        self.calibration, self.heldout = calibration, heldout
        self.indexed = Metrics.counter("beamvec", "items_indexed")
        self.rejected = Metrics.counter("beamvec", "items_rejected")
        self.shards = Metrics.counter("beamvec", "shards_built")

    def setup(self):
        self._routes: dict[str, list[np.ndarray]] = {}

    def _calibration_queries(self, plan_json: dict, ordinal: int) -> np.ndarray | None:
        """The calibration log's vectors the plan routes to partition ``ordinal`` (routed once per worker)."""
        if self.calibration is None:
            return None
        key = hashlib.sha256(json.dumps(plan_json, sort_keys=True).encode()).hexdigest()
        if key not in self._routes:
            self._routes = {key: querylog.route(cached_plan(plan_json), self.calibration)}
        return self.calibration.vectors[self._routes[key][ordinal]]

    def process(self, element, plan_json: dict):
        ordinal, tables = element
        table = pa.concat_tables(list(tables), promote_options="permissive")
        # Rows arrive in any order: sort by id so every runner keeps the same copy of a repeated
        # id (Shard.build then lays the rows out by the plan's row order).
        table = table.take(pc.sort_indices(table, [(ID, "ascending")]))
        validated = validate_items(table)  # catches an id repeated across input blocks
        if validated.rejections:
            self.rejected.inc(len(validated.rejections))
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letters(validated, f"partition {partition_id(ordinal)}"))
        if not validated.table.num_rows:
            return
        plan = cached_plan(plan_json)
        shard = Shard.build(validated.table.column("id").combine_chunks(), validated.vectors,
                            validated.table.drop_columns([VECTOR]), metric=self.metric, config=self.config,
                            recall_target=self.recall_target, seed=self.seed, row_order=plan.row_order,
                            calibration_queries=self._calibration_queries(plan_json, ordinal))
        description = plan.descriptions()[ordinal]
        entry = write_shard(self.index_path, partition_id(ordinal), shard, description)
        self.indexed.inc(shard.num_rows)
        self.shards.inc()
        if self.heldout is not None and len(self.heldout):
            yield beam.pvalue.TaggedOutput(HELDOUT, querylog.heldout_partial(shard, ordinal, plan, self.heldout))
        yield entry


class BuildShards(beam.PTransform):
    """(partition ordinal, rows) -> one shard per partition written under ``index_path``;
    emits manifest entries, (output ``rejected``) rows whose id repeats within a partition,
    and (output ``heldout``) each shard's share of the held-out measurement.

    ``calibration``, ``heldout``: the parts of a workload log with vectors that a build
    uses (see :func:`beamvec.index.querylog.build_parts`), or None.
    """

    def __init__(self, index_path: str, plan, metric: str = "dot_product", config: str | None = None,
                 recall_target: float = 0.95, seed: int = 0, calibration: QueryLog | None = None,
                 heldout: QueryLog | None = None):
        super().__init__()
        self.index_path, self.plan, self.metric, self.config = index_path, plan, metric, config
        self.recall_target, self.seed = recall_target, seed
        self.calibration, self.heldout = calibration, heldout

    def expand(self, keyed_rows):
        return (
            keyed_rows
            | "Group" >> beam.GroupByKey()
            | "Build" >> beam.ParDo(_BuildShard(self.index_path, self.metric, self.config, self.recall_target, self.seed,
                                                self.calibration, self.heldout),
                                    beam.pvalue.AsSingleton(self.plan)).with_outputs(REJECTED, HELDOUT, main="entries")
        )


class HeldoutRecall(beam.PTransform):
    """Every shard's held-out partial -> the manifest's ``heldout_recall`` (a singleton; None without held-out queries)."""

    def __init__(self, queries: int, k: int = querylog.HELDOUT_K, target: float | None = None):
        super().__init__()
        self.queries, self.k, self.target = queries, k, target

    def expand(self, partials):
        return (
            partials
            | "All" >> beam.combiners.ToList()
            | "Summarize" >> beam.Map(querylog.summarize_partials, self.queries, self.k, self.target)
        )


def _write_manifest(entries: list[PartitionEntry], plan_json: dict, index_path: str, metric: str,
                    dimension: int, id_type: str, heldout_recall: dict | None = None) -> str:
    manifest = Manifest(metric, dimension, id_type, tuple(sorted(entries, key=lambda e: e.id)), plan_json,
                        heldout_recall)
    manifest.write(index_path)
    return index_path


class WriteManifest(beam.PTransform):
    """All manifest entries + plan (+ held-out recall, optional singleton) -> manifest.json,
    written once every shard is in place."""

    def __init__(self, index_path: str, plan, metric: str, dimension: int, id_type: pa.DataType, heldout_recall=None):
        super().__init__()
        self.index_path, self.plan, self.metric, self.dimension = index_path, plan, metric, dimension
        self.id_type = id_type_name(pa.array([], id_type))
        self.heldout_recall = heldout_recall

    def expand(self, entries):
        recall = () if self.heldout_recall is None else (beam.pvalue.AsSingleton(self.heldout_recall),)
        return (
            entries
            | "All" >> beam.combiners.ToList()
            | "Write" >> beam.Map(_write_manifest, beam.pvalue.AsSingleton(self.plan), self.index_path,
                                  self.metric, self.dimension, self.id_type, *recall)
        )
