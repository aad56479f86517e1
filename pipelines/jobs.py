"""The batch jobs: build an index, answer a file of hybrid queries, generate related items.

Each job is a Beam pipeline of the public transforms (:mod:`beamvec.transforms`);
``options`` (Beam ``PipelineOptions``) picks the runner. Every job writes its dead letters
(rows it could not use, with the stage and the reason) beside its output and returns its
Beam metrics, so counts reconcile: read = indexed + rejected, queries = answered + rejected.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index.querylog import read_workload
from beamvec.transforms import BuildIndex, BuildSettings, HybridSearch, ReadItems, ReadQueries, RelatedItems, \
    WriteTables
from beamvec.transforms.io import read_dimension
from beamvec.transforms.validate import DEAD_LETTER_SCHEMA


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
          settings: BuildSettings = BuildSettings(), log=print) -> dict[str, int]:
    """Build an index from items Parquet at ``items`` into directory ``index``; returns the counts.

    The plan is fitted on every predicate of the ``workload`` log. When the log carries
    query vectors, the shards calibrate on its calibration part and the manifest records
    the recall reached on its held-out part (``heldout_recall``); the counts then include
    ``workload_vectors_dropped`` when the log held unusable vectors.
    """
    dimension = read_dimension(items)
    workload_log = read_workload(workload, dimension)
    p = beam.Pipeline(options=options)
    built = p | "ReadItems" >> ReadItems(items) | "BuildIndex" >> BuildIndex(
        index, workload=workload_log, partitioner=settings.partitioner, metric=settings.metric,
        shard_spec=settings.shard_spec, recall_target=settings.recall_target,
        min_partition_rows=settings.min_partition_rows, max_partition_rows=settings.max_partition_rows,
        sample_rows=settings.sample_rows, dimension=dimension, seed=settings.seed, log=log)
    built.rejected | "WriteRejected" >> WriteTables(f"{index}/rejected/items", DEAD_LETTER_SCHEMA)
    counts = _run(p)
    if workload_log.dropped:
        counts["workload_vectors_dropped"] = workload_log.dropped
    return counts


def query(index: str, queries: str, output: str, options: PipelineOptions, k: int = 10) -> dict[str, int]:
    """Answer the queries Parquet at ``queries`` against ``index``; results and dead letters under ``output``."""
    p = beam.Pipeline(options=options)
    found = p | "ReadQueries" >> ReadQueries(queries) | "HybridSearch" >> HybridSearch(index, k)
    found.results | "WriteResults" >> WriteTables(f"{output}/results")
    found.rejected | "WriteRejected" >> WriteTables(f"{output}/rejected", DEAD_LETTER_SCHEMA)
    return _run(p)


def related(index: str, items: str, template: str, output: str, options: PipelineOptions, k: int = 10) -> dict[str, int]:
    """Each item's k most similar items under ``template`` filled from its attributes."""
    p = beam.Pipeline(options=options)
    found = p | "ReadItems" >> ReadItems(items) | "RelatedItems" >> RelatedItems(index, template, k)
    found.results | "WriteResults" >> WriteTables(f"{output}/results")
    found.rejected | "WriteRejected" >> WriteTables(f"{output}/rejected", DEAD_LETTER_SCHEMA)
    return _run(p)
