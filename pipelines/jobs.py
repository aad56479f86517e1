"""The batch jobs: build an index, answer a file of hybrid queries, generate related items.

Each job is a Beam pipeline of the public transforms (:mod:`beamvec.transforms`);
``options`` (Beam ``PipelineOptions``) picks the runner. Every job writes its dead letters
(rows it could not use, with the stage and the reason) beside its output and returns its
Beam metrics, so counts reconcile: read = indexed + rejected, queries = answered + rejected.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import encoder
from beamvec.index.querylog import read_workload
from beamvec.transforms import BuildIndex, BuildSettings, Embed, HybridSearch, ReadItems, ReadQueries, Reindex, \
    RelatedItems, WriteTables
from beamvec.transforms.embed import DEFAULT_BATCH_SIZE
from beamvec.transforms.io import ReadTables, read_dimension
from beamvec.transforms.search import template_columns
from beamvec.transforms.validate import DEAD_LETTER_SCHEMA


def _counters(result) -> dict[str, int]:
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("beamvec"))["counters"]
    out: dict[str, int] = {}
    for c in counters:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (c.committed if c.committed is not None else c.attempted)
    return out


def _run(pipeline: beam.Pipeline, *counted: str) -> dict[str, int]:
    """Run the pipeline; its counters, with those named in ``counted`` 0 when nothing counted them (no rows)."""
    result = pipeline.run()
    result.wait_until_finish()
    return {**dict.fromkeys(counted, 0), **_counters(result)}


def build(items: str, index: str, options: PipelineOptions, workload: str | None = None,
          settings: BuildSettings = BuildSettings(), log=print, embed_column: str | None = None,
          model: str = encoder.BUILTIN) -> dict[str, int]:
    """Build an index from items Parquet at ``items`` into directory ``index``; returns the counts.

    The plan is fitted on every predicate of the ``workload`` log. When the log carries
    query vectors, the shards calibrate on its calibration part and the manifest records
    the recall reached on its held-out part (``heldout_recall``); the counts then include
    ``workload_vectors_dropped`` when the log held unusable vectors. With ``embed_column``, the
    items' vectors are embedded from that column by ``model`` in the same job. The index is
    published as a new version; its dead letters are under ``<version>/rejected/``.
    """
    dimension = read_dimension(items) if embed_column is None else encoder.identity(model).dimension
    workload_log = read_workload(workload, dimension)
    p = beam.Pipeline(options=options)
    transform = BuildIndex(
        index, workload=workload_log, partitioner=settings.partitioner, metric=settings.metric,
        shard_spec=settings.shard_spec, recall_target=settings.recall_target,
        min_partition_rows=settings.min_partition_rows, max_partition_rows=settings.max_partition_rows,
        sample_rows=settings.sample_rows, dimension=dimension, seed=settings.seed, embed_column=embed_column,
        model=model, codec=settings.codec, max_bytes_per_vector=settings.max_bytes_per_vector, log=log)
    counts = _run_build(p, ReadItems(items, embed_column=embed_column), transform)
    if workload_log.dropped:
        counts["workload_vectors_dropped"] = workload_log.dropped
    return counts


def _run_build(p: beam.Pipeline, read: ReadItems, transform: BuildIndex) -> dict[str, int]:
    """Run ``read | transform`` (a build or a reindex), its dead letters written into the version it writes."""
    built = p | "ReadItems" >> read | type(transform).__name__ >> transform
    built.rejected | "WriteRejected" >> WriteTables(f"{transform.version_path}/rejected/items", DEAD_LETTER_SCHEMA)
    return _run(p)


def dead_letters(index: str) -> str:
    """Where the published version of ``index`` keeps the dead letters of the job that built it (a glob)."""
    from beamvec.index import versions

    return f"{versions.resolve(index)}/rejected/*.parquet"


def reindex(index: str, items: str, options: PipelineOptions, workload: str | None = None, upserts: bool = False,
            deletes: str | None = None, drift_threshold: float | None = None, log=print) -> dict[str, int]:
    """A new version of ``index`` from items Parquet at ``items`` (a full snapshot, or with ``upserts``
    new and changed items, and ``deletes`` a file of ids to remove); returns the counts."""
    from beamvec.index.drift import DEFAULT_THRESHOLD

    p = beam.Pipeline(options=options)
    transform = Reindex(index, workload=workload, upserts=upserts, deletes=read_ids(deletes) if deletes else None,
                        drift_threshold=DEFAULT_THRESHOLD if drift_threshold is None else drift_threshold, log=log)
    return _run_build(p, ReadItems(items), transform)


def read_ids(path: str) -> list:
    """Ids from Parquet with an ``id`` column, or text with one id per line (integers where every line is one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beamvec.index import fs

    data = fs.filesystem_for(path).read_bytes(path)
    if data[:4] == b"PAR1":
        table = pq.read_table(pa.BufferReader(data))
        if "id" not in table.column_names:
            raise ValueError(f"{path}: no 'id' column; columns are {', '.join(table.column_names)}")
        return [i for i in table.column("id").to_pylist() if i is not None]
    lines = [line.strip() for line in data.decode().splitlines() if line.strip()]
    return [int(x) for x in lines] if all(x.lstrip("-").isdigit() for x in lines) else lines


def query(index: str, queries: str, output: str, options: PipelineOptions, k: int = 10,
          query_text_column: str | None = None, model: str | None = None) -> dict[str, int]:
    """Answer the queries Parquet at ``queries`` against ``index``; results and dead letters under ``output``.
    With ``query_text_column``, the queries' texts are embedded by the index's model (``model``, when
    given, must be that model)."""
    p = beam.Pipeline(options=options)
    found = p | "ReadQueries" >> ReadQueries(queries, embed_column=query_text_column) | "HybridSearch" >> HybridSearch(
        index, k, query_text_column=query_text_column, model=model)
    found.results | "WriteResults" >> WriteTables(f"{output}/results")
    found.rejected | "WriteRejected" >> WriteTables(f"{output}/rejected", DEAD_LETTER_SCHEMA)
    return _run(p, "queries_read", "queries_answered", "queries_rejected")


def related(index: str, items: str, template: str, output: str, options: PipelineOptions, k: int = 10) -> dict[str, int]:
    """Each item's k most similar items under ``template`` filled from its attributes."""
    read = ReadItems(items)
    template_columns(template, read.schema.names)
    p = beam.Pipeline(options=options)
    found = p | "ReadItems" >> read | "RelatedItems" >> RelatedItems(index, template, k)
    found.results | "WriteResults" >> WriteTables(f"{output}/results")
    found.rejected | "WriteRejected" >> WriteTables(f"{output}/rejected", DEAD_LETTER_SCHEMA)
    return _run(p, "items_read", "queries_answered", "items_rejected", "queries_rejected")


def embed(items: str, column: str, output: str, options: PipelineOptions, model: str = encoder.BUILTIN,
          batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, int]:
    """The rows of the Parquet at ``items`` with a ``vector`` column embedded from ``column`` by ``model``,
    as ``output/embedded-*.parquet``; rows set aside as ``output/rejected-*.parquet``."""
    p = beam.Pipeline(options=options)
    found = p | "Read" >> ReadTables(items) | "Embed" >> Embed(model, column, batch_size=batch_size)
    found.embedded | "Tables" >> beam.Map(lambda block: block.table) | "WriteEmbedded" >> WriteTables(
        f"{output}/embedded")
    found.rejected | "WriteRejected" >> WriteTables(f"{output}/rejected", DEAD_LETTER_SCHEMA)
    return _run(p)
