"""Validation as a transform, and the one dead-letter schema of every stage.

Usable rows go on; a row a stage cannot use goes to that stage's ``rejected`` output as a
dead-letter record (stage, source, row, id, reason), so nothing is lost silently.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from beamvec.index.schema import ID, QUERY_ID, REJECTION_SCHEMA, Rejection, Validated, validate_items, \
    validate_queries
from beamvec.transforms.io import Block
from beamvec.transforms.progress import Progress

REJECTED = "rejected"
DEAD_LETTER_SCHEMA = pa.schema([("stage", pa.string()), ("source", pa.string())] + list(REJECTION_SCHEMA))
"""Dead letters: the stage that set the row aside, its source (file, or partition for a shard
build), its row there, its id (as text) and the reason."""


def dead_letters(validated: Validated, stage: str, source: str | None = None) -> pa.Table:
    """The rejections of a block as a dead-letter table (:data:`DEAD_LETTER_SCHEMA`); ``source``
    defaults to the block's own."""
    table = validated.rejections_table()
    n = table.num_rows
    source = validated.source if source is None else source
    return table.add_column(0, "source", pa.array([source] * n, pa.string())).add_column(
        0, "stage", pa.array([stage] * n, pa.string()))


class _Validate(beam.DoFn):
    def __init__(self, kind: str):
        self.kind = kind
        self.read = Metrics.counter("beamvec", f"{kind}_read")
        self.accepted = Metrics.counter("beamvec", f"{kind}_accepted")
        self.rejected = Metrics.counter("beamvec", f"{kind}_rejected")

    def setup(self):
        self.progress = Progress(f"{self.kind} read")

    def process(self, block: Block, dimension: int | None, metric: str | None = None):
        check = validate_items if self.kind == "items" else validate_queries
        validated = dataclasses.replace(check(block.table, dimension, row_offset=block.offset), source=block.source)
        if metric == "cosine":
            validated = without_zero_vectors(validated, ID if self.kind == "items" else QUERY_ID)
        self.read.inc(block.table.num_rows)
        self.progress.add(block.table.num_rows)
        self.accepted.inc(validated.table.num_rows)
        self.rejected.inc(len(validated.rejections))
        if validated.table.num_rows:
            yield validated
        if validated.rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letters(validated, f"validate {self.kind}"))


def without_zero_vectors(validated: Validated, id_column: str) -> Validated:
    """``validated`` with its all-zero vectors moved to its rejections (cosine similarity is undefined for them)."""
    zero = ~validated.vectors.any(axis=1) if validated.vectors.size else np.zeros(len(validated.rows), bool)
    if not zero.any():
        return validated
    ids = validated.table.column(id_column).to_pylist()
    found = tuple(Rejection(int(validated.rows[i]), None if ids[i] is None else str(ids[i]),
                            "zero vector: its cosine similarity is undefined") for i in np.flatnonzero(zero))
    keep = np.flatnonzero(~zero)
    rejections = tuple(sorted(validated.rejections + found, key=lambda r: r.row))
    return dataclasses.replace(validated, table=validated.table.take(pa.array(keep)), vectors=validated.vectors[keep],
                               rows=validated.rows[keep], rejections=rejections)


class Validate(beam.PTransform):
    """Splits :class:`Block` s of items or queries into ``Validated`` blocks (main output) and
    dead-letter tables (output ``rejected``); every input row ends up in exactly one of them.

    ``dimension``: the vectors' dimension, as an int or a singleton side input
    (``beam.pvalue.AsSingleton``); for items, None takes each block's first vector's. ``metric``
    (a name or a singleton side input; None: not checked): under ``cosine``, zero vectors are rejected.
    """

    def __init__(self, kind: str, dimension, metric=None):
        super().__init__()
        if kind not in ("items", "queries"):
            raise ValueError(f"kind must be 'items' or 'queries', got {kind!r}")
        self.kind = kind
        self.dimension = dimension
        self.metric = metric

    def expand(self, blocks):
        return blocks | beam.ParDo(_Validate(self.kind), self.dimension, self.metric).with_outputs(
            REJECTED, main="valid")
