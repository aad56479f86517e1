"""Index building as Beam transforms: :class:`BuildIndex`, and the stages it is made of.

Analyze, then apply: a deterministic sample of the items (:class:`SampleRows`, the smallest id
hashes) gives the vectors' dimension and the partition plan, which reach every worker as
singleton side inputs; each partition's rows are grouped onto one worker, which builds that
partition's ScaNN shard and writes it under the index directory. The manifest is written last,
from the entries of all shards, and :class:`BuildResult`'s ``index`` carries its path on.

With a workload log that carries query vectors, its calibration part (a few thousand vectors
at most) reaches the shard builders as a side input: each worker calibrates its shard on the
log queries the plan routes to it. The held-out part is measured shard by shard while each
shard is still in memory (:func:`beamvec.index.querylog.heldout_partial`); the partials merge
into the recall figure the manifest records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Callable, Iterable, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from beamvec.index import encoder, exact, fs, querylog, versions
from beamvec.index.fingerprint import build_context, partition_fingerprint
from beamvec.index.hashing import id_hashes
from beamvec.index.index import build_settings, id_type_name, write_shard
from beamvec.index.manifest import Manifest, PartitionEntry, check_relative_path, partition_id
from beamvec.index.plan import PartitionPlan, check_partitioner, fit_plan, plan_from_json
from beamvec.index.querylog import QueryLog, read_workload
from beamvec.index.codec import Codec, save_in_index
from beamvec.index.schema import ID, VECTOR, Validated, validate_items, vectors_array, vectors_matrix
from beamvec.index.shard import Shard
from beamvec.index.shardspec import ShardConfig
from beamvec.transforms.dedupe import DropRepeatedIds
from beamvec.transforms.codec import CODES, check_codec_spec, encode_table, fit_codec, validate_encoded
from beamvec.transforms.embed import DEFAULT_BATCH_SIZE, Embed
from beamvec.transforms.io import Block, ToBlocks, absolute
from beamvec.transforms.progress import Progress
from beamvec.transforms.validate import REJECTED, Validate, dead_letters

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


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """How a build partitions and indexes: partitioner spec, partition sizes, metric, sample size,
    seed, the recall target the shards calibrate for, the shard spec (None: by size), and the codec
    spec (None: float32 vectors; ``auto``: the smallest within ``max_bytes_per_vector`` meeting the
    recall target)."""

    partitioner: str = "workload"
    min_partition_rows: int = 10_000
    max_partition_rows: int = 100_000
    metric: str = "dot_product"
    sample_rows: int = 50_000
    seed: int = 0
    recall_target: float = 0.95
    shard_spec: str | None = None
    codec: str | None = None
    max_bytes_per_vector: float | None = None

    def checked(self) -> "BuildSettings":
        """These settings, or ValueError naming the one that cannot work."""
        check_partitioner(self.partitioner)
        exact.check_metric(self.metric)
        if not 0 < self.min_partition_rows <= self.max_partition_rows:
            raise ValueError(f"partition rows must satisfy 0 < min <= max, got {self.min_partition_rows} and "
                             f"{self.max_partition_rows}")
        if self.sample_rows < 1:
            raise ValueError(f"sample_rows must be at least 1, got {self.sample_rows}")
        if not 0 < self.recall_target <= 1:
            raise ValueError(f"recall_target must be in (0, 1], got {self.recall_target}")
        if self.shard_spec is not None:
            ShardConfig.parse(self.shard_spec)
        return dataclasses.replace(self, codec=check_codec_spec(self.codec, self.max_bytes_per_vector))


class Shape(NamedTuple):
    """What a build learns of the items from their sample: the vectors' dimension, the id type and
    the attribute schema (with id, without vector)."""

    dimension: int
    id_type: pa.DataType
    attributes: pa.Schema


def _shape(sample: pa.Table | None, dimension: int | None) -> Shape:
    """The items' shape from their sample; without a given ``dimension``, the vectors' most common length."""
    if sample is None or not sample.num_rows:
        raise ValueError("no items to index: the input is empty")
    if dimension is None:
        lengths = pc.list_value_length(sample.column(VECTOR)).drop_null().to_numpy(zero_copy_only=False)
        if not len(lengths):
            raise ValueError("no items to index: every sampled item lacks a vector")
        values, counts = np.unique(lengths, return_counts=True)
        dimension = int(values[np.argmax(counts)])
    schema = sample.schema.remove(sample.schema.get_field_index(VECTOR))
    return Shape(dimension, schema.field(ID).type, schema)


def _fit(sample: pa.Table, total_rows: int, shape: Shape, spec: str, workload: Sequence[str | None],
         min_rows: int, max_rows: int, seed: int) -> dict:
    valid = validate_items(sample, shape.dimension)
    if not valid.table.num_rows:
        raise ValueError("no valid items to index: every sampled item was rejected (see the dead letters)")
    return fit_plan(spec, valid.table.drop_columns([VECTOR]), valid.vectors, workload, min_rows, max_rows,
                    total_rows=total_rows, seed=seed).to_json()


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


def _fit_build_codec(sample: pa.Table | None, shape: Shape, settings: BuildSettings, log: QueryLog) -> Codec:
    return fit_codec(sample, settings.codec, settings.metric, settings.seed, shape.dimension, log,
                     settings.recall_target, settings.max_bytes_per_vector)


def _save_codec(codec: Codec | None, index_path: str) -> dict | None:
    return None if codec is None else save_in_index(index_path, codec)


def _encode_partition(element: tuple[int, pa.Table], codec: Codec, parts: tuple) -> tuple[int, pa.Table]:
    """A partition's rows with their vectors encoded; the vectors stay when the shard needs them
    (a codec that re-ranks, or held-out queries measured against the exact answer)."""
    ordinal, table = element
    vectors = vectors_matrix(table.column(VECTOR))
    keep = codec.spec.rerank or (parts[1] is not None and len(parts[1]) > 0)
    return ordinal, encode_table(table, vectors, codec, keep)


class _BuildShard(beam.DoFn):
    """Builds one partition's shard, or, when ``reuse`` holds an entry of an earlier version whose
    fingerprint equals the partition's, copies that version's shard instead (a reindex)."""

    def __init__(self, index_path: str, metric: str, config: str | None, recall_target: float, seed: int):
        self.index_path, self.metric, self.config = index_path, metric, config
        self.recall_target, self.seed = recall_target, seed
        self.indexed = Metrics.counter("beamvec", "items_indexed")
        self.rejected = Metrics.counter("beamvec", "items_rejected")
        self.shards = Metrics.counter("beamvec", "shards_built")
        self.reused = Metrics.counter("beamvec", "shards_reused")

    def setup(self):
        self._routes: dict[str, list[np.ndarray]] = {}
        self.progress = Progress("shards")

    def _calibration_queries(self, plan_json: dict, calibration: QueryLog | None, ordinal: int) -> np.ndarray | None:
        """The calibration log's vectors the plan routes to partition ``ordinal`` (routed once per worker)."""
        if calibration is None:
            return None
        key = hashlib.sha256(json.dumps(plan_json, sort_keys=True).encode()).hexdigest()
        if key not in self._routes:
            self._routes = {key: querylog.route(cached_plan(plan_json), calibration)}
        return calibration.vectors[self._routes[key][ordinal]]

    def process(self, element, plan_json: dict, parts: tuple, codec: Codec | None, reuse: dict | None):
        ordinal, tables = element
        calibration, heldout = parts
        table = pa.concat_tables(list(tables), promote_options="permissive")
        # Rows arrive in any order: sort by id so every runner keeps the same copy of a repeated
        # id (Shard.build then lays the rows out by the plan's row order).
        table = table.take(pc.sort_indices(table, [(ID, "ascending")]))
        # Catches an id repeated across input blocks.
        validated = validate_items(table) if codec is None else validate_encoded(table, codec)
        if validated.rejections:
            self.rejected.inc(len(validated.rejections))
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letters(validated, "build shard", partition_id(ordinal)))
        if not validated.table.num_rows:
            return
        plan = cached_plan(plan_json)
        rows = validated.table
        vectors, codes = validated.vectors, None
        if codec is not None:
            codes = validated.vectors
            vectors = vectors_matrix(rows.column(VECTOR)) if VECTOR in rows.column_names else None
        attributes = rows.drop_columns([c for c in (VECTOR, CODES) if c in rows.column_names])
        queries = self._calibration_queries(plan_json, calibration, ordinal)
        context = build_context(self.metric, self.config, self.recall_target, self.seed, plan_json, ordinal,
                                None if codec is None else codec.checksum)
        fingerprint = partition_fingerprint(rows.column(ID), validated.vectors, attributes, context, queries)
        description = plan.descriptions()[ordinal]
        earlier = (reuse or {}).get(partition_id(ordinal))
        measure = heldout is not None and len(heldout) > 0
        if earlier is not None and earlier[0].fingerprint == fingerprint:
            entry = copy_shard(earlier[1], earlier[0], self.index_path)
            self.reused.inc()
            self.progress.add(1, f"{partition_id(ordinal)}: {entry.rows:,} rows, unchanged: reused")
            partial = reused_partial(earlier[1], self.index_path, entry, ordinal, plan_json, heldout, self.metric,
                                     codec) if measure else None
        else:
            shard = Shard.build(rows.column(ID).combine_chunks(), vectors, attributes,
                                metric=self.metric, config=self.config,
                                recall_target=self.recall_target, seed=self.seed, row_order=plan.row_order,
                                calibration_queries=queries, codec=codec, codes=codes)
            entry = dataclasses.replace(write_shard(self.index_path, partition_id(ordinal), shard, description),
                                        fingerprint=fingerprint)
            self.shards.inc()
            self.progress.add(1, f"{partition_id(ordinal)}: {shard.num_rows:,} rows, {shard.config.spec()}; "
                                 f"the plan has {plan.num_partitions} partitions")
            partial = None
            if measure:
                partial = querylog.heldout_partial(shard, ordinal, plan, heldout)
                querylog.save_partial(self.index_path, entry.id, querylog.heldout_key(plan_json, heldout), partial)
        self.indexed.inc(entry.rows)
        if partial is not None:
            yield beam.pvalue.TaggedOutput(HELDOUT, partial)
        yield entry


def reused_partial(source: str, version: str, entry: PartitionEntry, ordinal: int, plan_json: dict,
                   heldout: QueryLog, metric: str, codec: Codec | None) -> querylog.HeldoutPartial:
    """The held-out share of a shard copied from version ``source`` into ``version``: the one ``source``
    saved for the same plan and queries (kept in ``version`` too), else measured again."""
    key = querylog.heldout_key(plan_json, heldout)
    partial = querylog.load_partial(source, entry.id, key)
    if partial is None:
        shard = Shard.load(fs.filesystem_for(version).join(version, entry.path), metric, codec=codec)
        partial = querylog.heldout_partial(shard, ordinal, cached_plan(plan_json), heldout)
    querylog.save_partial(version, entry.id, key, partial)
    return partial


def copy_shard(source_version: str, entry: PartitionEntry, version: str) -> PartitionEntry:
    """Copy an earlier version's shard (and its full-precision vectors, if any) into ``version``,
    as it is: its entry, unchanged, is valid there."""
    filesystem = fs.filesystem_for(version)
    relative = check_relative_path(entry.path)
    source = filesystem.join(source_version, relative)
    filesystem.copy_tree(source, filesystem.join(version, relative))
    full = source + ".full.npy"
    if filesystem.exists(full):
        filesystem.copy_file(full, filesystem.join(version, relative) + ".full.npy")
    return entry


class BuildShards(beam.PTransform):
    """(partition ordinal, rows) -> one shard per partition written under ``index_path``;
    emits manifest entries, (output ``rejected``) rows whose id repeats within a partition,
    and (output ``heldout``) each shard's share of the held-out measurement. ``reuse``: partition id ->
    (manifest entry, version directory) of an earlier version; a partition whose fingerprint equals
    its entry's is copied from there, not rebuilt.

    ``plan``: the plan JSON, a singleton; ``parts``: a singleton (calibration queries, held-out
    queries) of the workload log (:func:`beamvec.index.querylog.build_parts`; (None, None) without
    log vectors); ``codec``: a singleton of the codec the rows are encoded with (:data:`CODES`
    column), or None for float32 vectors.
    """

    def __init__(self, index_path: str, plan, parts, metric: str = "dot_product", config: str | None = None,
                 recall_target: float = 0.95, seed: int = 0, codec=None, reuse: dict | None = None):
        super().__init__()
        self.index_path, self.plan, self.parts, self.metric, self.config = index_path, plan, parts, metric, config
        self.recall_target, self.seed, self.codec, self.reuse = recall_target, seed, codec, reuse

    def expand(self, keyed_rows):
        codec = self.codec if self.codec is not None else keyed_rows.pipeline | "NoCodec" >> beam.Create([None])
        return (
            keyed_rows
            | "Group" >> beam.GroupByKey()
            | "Build" >> beam.ParDo(_BuildShard(self.index_path, self.metric, self.config, self.recall_target, self.seed),
                                    beam.pvalue.AsSingleton(self.plan), beam.pvalue.AsSingleton(self.parts),
                                    beam.pvalue.AsSingleton(codec), self.reuse
                                    ).with_outputs(REJECTED, HELDOUT, main="entries")
        )


def _summarize(partials: list, parts: tuple, target: float | None) -> dict | None:
    heldout = parts[1]
    return querylog.summarize_partials(partials, len(heldout) if heldout is not None else 0, querylog.HELDOUT_K, target)


def _write_manifest(entries: list[PartitionEntry], plan_json: dict, shape: Shape, heldout_recall: dict | None,
                    codec: dict | None, workload: dict | None, index_path: str, settings: "BuildSettings",
                    model: dict | None) -> Manifest:
    if not entries:
        raise ValueError("no items to index: every item was rejected (see the dead letters); nothing was published")
    s = settings
    manifest = Manifest(s.metric, shape.dimension, id_type_name(pa.array([], shape.id_type)),
                        tuple(sorted(entries, key=lambda e: e.id)), plan_json, heldout_recall, model, codec,
                        build_settings(s.metric, s.shard_spec, s.recall_target, s.seed, partitioner=s.partitioner,
                                       min_partition_rows=s.min_partition_rows,
                                       max_partition_rows=s.max_partition_rows, sample_rows=s.sample_rows,
                                       codec=s.codec), workload)
    manifest.write(index_path)
    return manifest


def _publish(manifest: Manifest, root: str, name: str, base: str | None, lineage: dict) -> str:
    """Publish version ``name`` of the index at ``root`` (its shards checked first); its directory.
    ``lineage``: what the history records; a partition whose checksum is its base's counts as reused."""
    earlier = lineage.get("base_checksums", {})
    reused = sum(1 for e in manifest.partitions if earlier.get(e.id) == e.checksum)
    versions.publish(root, name, base, rebuilt=len(manifest.partitions) - reused, reused=reused,
                     items=manifest.num_rows, **{k: v for k, v in lineage.items() if k != "base_checksums"})
    return versions.version_path(root, name)


class BuildResult(NamedTuple):
    """What :class:`BuildIndex` emits: ``index``, a singleton of the directory of the version it wrote,
    once that version is published (give it to :class:`HybridSearch` to query in the same pipeline);
    ``rejected``, dead-letter tables (:data:`DEAD_LETTER_SCHEMA`) of the items left out, with the reason."""

    index: beam.PCollection
    rejected: beam.PCollection


class BuildIndex(beam.PTransform):
    """Items -> an index written under ``output``: a :class:`BuildResult`.

    Consumes items as :class:`ReadItems` gives them (or anything it reads: dicts, ``beam.Row`` s,
    Arrow tables) with ``id``, ``vector`` and attribute columns. Analyze, then apply: a sample of the
    items (smallest id hashes, the same on every runner) gives the vectors' dimension and the
    partition plan (``partitioner``: workload, hash, attribute:COL, kmeans or single); every item is
    validated, assigned to its partition and each partition built into one ScaNN shard (``shard_spec``,
    e.g. ``Tree100,AH2,Reorder100``, default by size), calibrated for ``recall_target``; the manifest
    is written last. Rows that cannot be indexed (bad vector, missing or repeated id) are dead letters,
    and the metrics reconcile: ``items_read`` = ``items_indexed`` + ``items_rejected``.

    ``output`` holds versions (:mod:`beamvec.index.versions`): the build writes a new one under
    ``output/versions/`` (``version_path``; its directory, chosen when the transform is made) and
    publishes it last, once every shard matches its checksum; readers never see it before, and an
    earlier version stays readable until then. Input with no valid item fails the job unpublished.

    ``workload``: past queries, a :class:`beamvec.index.querylog.QueryLog`, their predicate texts, or
    a path (Parquet with ``predicate`` and optionally ``vector``, or text). With vectors, shards
    calibrate on them and the manifest records the recall measured on a held-out part. The workload
    partitioner needs a workload; without one the build falls back to ``hash`` and says so.

    ``codec``: quantize the vectors (:mod:`beamvec.index.codec`): a spec such as ``SQ8``,
    ``PCA48,SQ8``, ``PQ24`` or ``OOD24,SQ8,Rerank`` fitted on the sample (:class:`FitCodec`; OOD on the
    workload log's query vectors), or ``auto``: the smallest codec of at most
    ``max_bytes_per_vector`` code bytes that meets ``recall_target`` on the log's held-out queries.
    Rows are encoded before the shuffle to the shard builders (:class:`Encode`), the shards store
    the codes, and the codec is saved in the index, where searches find it.

    ``embed_column``: the items carry no vectors; :class:`Embed` computes them from that column
    with ``model`` (in batches of ``batch_size``) first, and the manifest records the model's
    identity, so that text queries are embedded alike (:class:`HybridSearch` ``query_text_column``).

    Example::

        with beam.Pipeline() as p:
            built = p | ReadItems("items-*.parquet") | BuildIndex("/tmp/index", workload="workload.parquet")
            found = p | ReadQueries("queries.parquet") | HybridSearch(built.index, k=10)
    """

    def __init__(self, output: str, *, workload: QueryLog | Sequence[str | None] | str | None = None,
                 partitioner: str = "workload", metric: str = "dot_product", shard_spec: str | None = None,
                 recall_target: float = 0.95, min_partition_rows: int = 10_000, max_partition_rows: int = 100_000,
                 sample_rows: int = 50_000, dimension: int | None = None, seed: int = 0,
                 embed_column: str | None = None, model: str = encoder.BUILTIN, batch_size: int = DEFAULT_BATCH_SIZE,
                 codec: str | None = None, max_bytes_per_vector: float | None = None,
                 log: Callable[[str], None] = logging.getLogger(__name__).info):
        super().__init__()
        self.embed_column, self.model, self.batch_size = embed_column, model, batch_size
        self.model_identity = encoder.identity(model).to_json() if embed_column is not None else None
        self.settings = BuildSettings(partitioner, min_partition_rows, max_partition_rows, metric, sample_rows, seed,
                                      recall_target, shard_spec, codec, max_bytes_per_vector).checked()
        self.root, self.dimension = absolute(output), dimension
        self.version = versions.new_version()
        self.output = versions.version_path(self.root, self.version)
        self.workload = workload if isinstance(workload, QueryLog) else read_workload(workload, dimension) \
            if isinstance(workload, str) else QueryLog(list(workload or []))
        if self.settings.partitioner == "workload" and not any(self.workload.predicates):
            log("no workload log with predicates: partitioning by hash of id (the workload partitioner fits "
                "its cuts on past queries; give a workload to use it)")
            self.settings = dataclasses.replace(self.settings, partitioner="hash")

    @property
    def version_path(self) -> str:
        """The directory of the version this build writes."""
        return self.output

    base: str | None = None  # the version a reindex derives from
    reuse: dict | None = None  # partition id -> (entry, version directory) that may be reused

    def fit_plan(self, sample, total, shape):
        """The plan JSON, a singleton: fitted on the sample (a reindex keeps its base's)."""
        s = self.settings
        return sample | "Fit" >> beam.Map(_fit, beam.pvalue.AsSingleton(total), beam.pvalue.AsSingleton(shape),
                                          s.partitioner, self.workload.predicates, s.min_partition_rows,
                                          s.max_partition_rows, s.seed)

    def fit_codec(self, sample, shape):
        """The codec, a singleton: fitted on the sample (a reindex keeps its base's)."""
        return sample | "FitCodec" >> beam.Map(_fit_build_codec, beam.pvalue.AsSingleton(shape), self.settings,
                                               self.workload)

    def workload_log(self, pipeline):
        """The workload log the shards calibrate and measure on, a singleton (a reindex picks its
        base's or the new one)."""
        return pipeline | "Workload" >> beam.Create([self.workload])

    def carry(self, blocks, assigned, plan, parts, codec):
        """(partition rows to build, extra manifest entries, extra held-out partials): a reindex of
        upserts adds its base's rows of the partitions they change, and the shards it keeps.
        ``codec``: the codec singleton, None without one."""
        return assigned, (), ()

    def lineage_of(self, pipeline):
        """What the pointer's history records of this version, a singleton."""
        return pipeline | "Lineage" >> beam.Create([{"kind": "build"}])

    def expand(self, items):
        s = self.settings
        fs.filesystem_for(self.output).makedirs(self.output)
        blocks = items | "AsBlocks" >> ToBlocks()
        embedded_rejected = ()
        if self.embed_column is not None:
            embedded = blocks | "Embed" >> Embed(self.model, self.embed_column, batch_size=self.batch_size)
            blocks, embedded_rejected = embedded.embedded, (embedded.rejected,)
        sample = blocks | "Sample" >> SampleRows(s.sample_rows)
        shape = sample | "Shape" >> beam.Map(_shape, self.dimension)
        total = blocks | "Count" >> beam.Map(lambda b: b.table.num_rows) | "Total" >> beam.CombineGlobally(sum)
        plan = self.fit_plan(sample, total, shape)
        logs = self.workload_log(items.pipeline)
        parts = shape | "LogParts" >> beam.Map(lambda sh, log: querylog.build_parts(log, sh.attributes, sh.dimension),
                                               beam.pvalue.AsSingleton(logs))
        checked = blocks | "Validate" >> Validate("items", beam.pvalue.AsSingleton(
            shape | "Dimension" >> beam.Map(lambda sh: sh.dimension)), s.metric)
        unique = checked.valid | "DropRepeatedIds" >> DropRepeatedIds("items")
        assigned = unique.valid | "Assign" >> AssignPartitions(plan)
        codec = self.fit_codec(sample, shape) if s.codec is not None else None
        assigned, kept_entries, kept_heldout = self.carry(blocks, assigned, plan, parts, codec)
        if codec is not None:
            codec_entry = codec | "SaveCodec" >> beam.Map(_save_codec, self.output)
            assigned = assigned | "Encode" >> beam.Map(_encode_partition, beam.pvalue.AsSingleton(codec),
                                                       beam.pvalue.AsSingleton(parts))
        else:
            codec_entry = items.pipeline | "NoCodec" >> beam.Create([None])
        built = assigned | "BuildShards" >> BuildShards(self.output, plan, parts, s.metric, s.shard_spec,
                                                        s.recall_target, s.seed, codec, self.reuse)
        workload = logs | "SaveWorkload" >> beam.Map(lambda log, path: querylog.save_in_index(path, log), self.output)
        recall = ((built.heldout, *kept_heldout) | "AllPartials" >> beam.Flatten()
                  | "Partials" >> beam.combiners.ToList()
                  | "HeldoutRecall" >> beam.Map(_summarize, beam.pvalue.AsSingleton(parts), s.recall_target))
        index = ((built.entries, *kept_entries) | "AllEntries" >> beam.Flatten() | "Entries" >> beam.combiners.ToList()
                 | "WriteManifest" >> beam.Map(_write_manifest, beam.pvalue.AsSingleton(plan),
                                               beam.pvalue.AsSingleton(shape), beam.pvalue.AsSingleton(recall),
                                               beam.pvalue.AsSingleton(codec_entry), beam.pvalue.AsSingleton(workload),
                                               self.output, s, self.model_identity)
                 | "Publish" >> beam.Map(_publish, self.root, self.version, self.base,
                                         beam.pvalue.AsSingleton(self.lineage_of(items.pipeline))))
        rejected = ((*embedded_rejected, checked[REJECTED], unique[REJECTED], built[REJECTED])
                    | "Rejected" >> beam.Flatten())
        return BuildResult(index, rejected)
