"""Validation as a transform: usable rows go on, bad rows go to a dead-letter output with their reason."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from beamvec.index.schema import REJECTION_SCHEMA, Validated, validate_items, validate_queries
from beamvec.transforms.io import Block

REJECTED = "rejected"
DEAD_LETTER_SCHEMA = pa.schema([("source", pa.string())] + list(REJECTION_SCHEMA))


def dead_letters(validated: Validated, source: str) -> pa.Table:
    """The rejections of a block as a dead-letter table (source, row, id, reason)."""
    table = validated.rejections_table()
    return table.add_column(0, "source", pa.array([source] * table.num_rows, pa.string()))


class _Validate(beam.DoFn):
    def __init__(self, kind: str, dimension: int):
        self.kind = kind
        self.dimension = dimension
        self.read = Metrics.counter("beamvec", f"{kind}_read")
        self.accepted = Metrics.counter("beamvec", f"{kind}_accepted")
        self.rejected = Metrics.counter("beamvec", f"{kind}_rejected")

    def process(self, block: Block):
        check = validate_items if self.kind == "items" else validate_queries
        validated = dataclasses.replace(check(block.table, self.dimension, row_offset=block.offset), source=block.source)
        self.read.inc(block.table.num_rows)
        self.accepted.inc(validated.table.num_rows)
        self.rejected.inc(len(validated.rejections))
        if validated.table.num_rows:
            yield validated
        if validated.rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, dead_letters(validated, block.source))


class Validate(beam.PTransform):
    """Splits :class:`Block` s of items or queries into ``Validated`` blocks (main output) and
    dead-letter tables (output ``rejected``); every input row ends up in exactly one of them."""

    def __init__(self, kind: str, dimension: int):
        super().__init__()
        if kind not in ("items", "queries"):
            raise ValueError(f"kind must be 'items' or 'queries', got {kind!r}")
        self.kind = kind
        self.dimension = dimension

    def expand(self, blocks):
        return blocks | beam.ParDo(_Validate(self.kind, self.dimension)).with_outputs(REJECTED, main="valid")
