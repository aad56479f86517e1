"""The batch jobs: build an index, answer a file of hybrid queries, generate related items.

Each job is a Beam pipeline; ``options`` (Beam ``PipelineOptions``) picks the
runner. Every job writes its dead letters (rows it could not use, with the
reason) beside its output and returns its Beam metrics, so counts reconcile:
read = indexed + rejected, queries = answered + rejected.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import querylog
from beamvec.index.manifest import Manifest
from beamvec.index.querylog import QueryLog
from beamvec.index.schema import ID, PREDICATE, QUERY_ID, VECTOR, _check_vectors, is_vector_type, results_schema, \
    vector_dimension
from beamvec.transforms.build import AssignPartitions, BuildShards, FitPartitioner, HeldoutRecall, WriteManifest
from beamvec.transforms.io import ReadTables, WriteTables, read_dimension, read_schema
from beamvec.transforms.search import HybridSearch, RelatedItems
from beamvec.transforms.validate import DEAD_LETTER_SCHEMA, REJECTED, Validate


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """How ``build`` partitions and indexes: partitioner spec, partition sizes, metric, sample, seed,
    and the recall target the shards calibrate for."""

    partitioner: str = "workload"
    min_partition_rows: int = 10_000
    max_partition_rows: int = 100_000
    metric: str = "dot_product"
    sample_rows: int = 50_000
    seed: int = 0
    recall_target: float = 0.95


def read_workload(path: str | None, dimension: int | None = None) -> QueryLog:
    """Past queries as a :class:`QueryLog`: Parquet with a ``predicate`` column and optionally a
    ``vector`` column (list or fixed_size_list of floats), or text with one predicate per line
    (then the log has no vectors).

    Vectors of the wrong dimension (``dimension``, default the first vector's), null,
    or holding null, NaN or infinite values are left out of the log's vectors (their
    predicates stay); the log counts them in ``dropped``. No path gives an empty log.
    """
    if not path:
        return QueryLog([])
    with FileSystems.open(path) as f:
        data = f.read()
    if data[:4] != b"PAR1":
        return QueryLog([line.strip() for line in data.decode().splitlines()])
    table = pq.read_table(pa.BufferReader(data))
    if PREDICATE not in table.column_names:
        raise ValueError(f"workload {path}: no '{PREDICATE}' column; columns are {', '.join(table.column_names)}")
    predicates = table.column(PREDICATE).to_pylist()
    if VECTOR not in table.column_names:
        return QueryLog(predicates)
    column = table.column(VECTOR)
    if not is_vector_type(column.type):
        raise ValueError(f"workload {path}: column '{VECTOR}' has type {column.type}; expected a list of floats")
    dimension = dimension or vector_dimension(column)
    if dimension is None:  # every vector is null
        return QueryLog(predicates, dropped=table.num_rows)
    vectors, bad = _check_vectors(column, dimension)
    good = np.array(sorted(set(range(table.num_rows)) - set(bad)), np.int64)
    return QueryLog(predicates, vectors[good], good, dropped=len(bad))


def _counters(result) -> dict[str, int]:
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("beamvec"))["counters"]
    out: dict[str, int] = {}
    for c in counters:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (c.committed if c.committed is not None else c.attempted)
    return out


def _run(pipeline: beam.Pipeline) -> dict[str, int]:
    result = pipeline.run()
    result.wait_until_finish()
    return _counters(result)


def build(items: str, index: str, options: PipelineOptions, workload: str | None = None,
          settings: BuildSettings = BuildSettings()) -> dict[str, int]:
    """Build an index from items Parquet at ``items`` into directory ``index``; returns the counts.

    The plan is fitted on every predicate of the ``workload`` log. When the log carries
    query vectors, the shards calibrate on its calibration part and the manifest records
    the recall reached on its held-out part (``heldout_recall``); the counts then include
    ``workload_vectors_dropped`` when the log held unusable vectors.
    """
    dimension = read_dimension(items)
    schema = read_schema(items)
    id_type = schema.field(ID).type
    log = read_workload(workload, dimension)
    calibration, heldout = querylog.build_parts(log, schema.remove(schema.get_field_index(VECTOR)), dimension)
    p = beam.Pipeline(options=options)
    plan = p | "ReadSample" >> ReadTables(items) | "FitPartitioner" >> FitPartitioner(
        settings.partitioner, log.predicates, settings.min_partition_rows, settings.max_partition_rows,
        settings.sample_rows, settings.seed, dimension)
    checked = p | "ReadItems" >> ReadTables(items) | "Validate" >> Validate("items", dimension)
    built = (checked.valid | "Assign" >> AssignPartitions(plan)
             | "BuildShards" >> BuildShards(index, plan, settings.metric, recall_target=settings.recall_target,
                                            seed=settings.seed, calibration=calibration, heldout=heldout))
    recall = built.heldout | "HeldoutRecall" >> HeldoutRecall(len(heldout) if heldout is not None else 0,
                                                              target=settings.recall_target)
    built.entries | "WriteManifest" >> WriteManifest(index, plan, settings.metric, dimension, id_type, recall)
    ((checked[REJECTED], built[REJECTED]) | "Rejected" >> beam.Flatten()
     | "WriteRejected" >> WriteTables(f"{index}/rejected/items", DEAD_LETTER_SCHEMA))
    counts = _run(p)
    if log.dropped:
        counts["workload_vectors_dropped"] = log.dropped
    return counts


def _write_search(found: dict, output: str, query_id_type: pa.DataType, id_type: pa.DataType, extra_rejected=()):
    found["results"] | "WriteResults" >> WriteTables(f"{output}/results", results_schema(query_id_type, id_type))
    ((found[REJECTED], *extra_rejected) | "Rejected" >> beam.Flatten()
     | "WriteRejected" >> WriteTables(f"{output}/rejected", DEAD_LETTER_SCHEMA))


def _id_type(index: str) -> pa.DataType:
    return pa.int64() if Manifest.read(index).id_type == "int64" else pa.string()


def query(index: str, queries: str, output: str, options: PipelineOptions, k: int = 10) -> dict[str, int]:
    """Answer the queries Parquet at ``queries`` against ``index``; results and dead letters under ``output``."""
    manifest = Manifest.read(index)
    p = beam.Pipeline(options=options)
    checked = p | "ReadQueries" >> ReadTables(queries) | "Validate" >> Validate("queries", manifest.dimension)
    found = checked.valid | "HybridSearch" >> HybridSearch(index, k)
    _write_search(found, output, read_schema(queries).field(QUERY_ID).type, _id_type(index), [checked[REJECTED]])
    return _run(p)


def related(index: str, items: str, template: str, output: str, options: PipelineOptions, k: int = 10) -> dict[str, int]:
    """Each item's k most similar items under ``template`` filled from its attributes."""
    manifest = Manifest.read(index)
    p = beam.Pipeline(options=options)
    checked = p | "ReadItems" >> ReadTables(items) | "Validate" >> Validate("items", manifest.dimension)
    found = checked.valid | "RelatedItems" >> RelatedItems(index, template, k)
    _write_search(found, output, read_schema(items).field(ID).type, _id_type(index), [checked[REJECTED]])
    return _run(p)
