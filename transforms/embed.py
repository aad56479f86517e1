"""Embedding as a Beam transform: texts (or numeric features) in a column -> a vector column, on
Beam's RunInference with its TensorFlow model handler.

:class:`Embed` splits each block into one keyed element per row (key: the block and the row),
in order of the text's length, so that RunInference's batches (``batch_size`` consecutive
elements of a bundle) hold texts of similar length and pad little; the vectors are then joined
back onto their blocks. A row whose input is null or empty, or whose batch made the model
raise, is a dead letter with the reason; every other column passes through untouched.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beamvec.index import encoder
from beamvec.index.schema import vectors_array
from beamvec.transforms.io import Block, ToBlocks
from beamvec.transforms.progress import Progress
from beamvec.transforms.validate import DEAD_LETTER_SCHEMA, REJECTED

STAGE = "embed"
DEFAULT_BATCH_SIZE = 64
"""Texts per RunInference batch."""


class EmbedResult(NamedTuple):
    """What :class:`Embed` emits: ``embedded``, :class:`Block` s with the vector column added (a block
    split where rows were set aside); ``rejected``, dead-letter tables (:data:`DEAD_LETTER_SCHEMA`)."""

    embedded: beam.PCollection
    rejected: beam.PCollection


def _dead_letters(source: str, rows: Sequence[int], ids: Sequence, reason: str | Sequence[str]) -> pa.Table:
    reasons = [reason] * len(rows) if isinstance(reason, str) else list(reason)
    return pa.table({"stage": [STAGE] * len(rows), "source": [source] * len(rows), "row": pa.array(rows, pa.int64()),
                     "id": pa.array([None if i is None else str(i) for i in ids], pa.string()), "reason": reasons},
                    schema=DEAD_LETTER_SCHEMA)


def _id_column(table: pa.Table, id_column: str | None) -> list:
    name = id_column or next((c for c in ("id", "query_id") if c in table.column_names), None)
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


class _Explode(beam.DoFn):
    """A block -> (its key, the block) on output ``blocks``, and ((key, row), input) per usable row,
    shortest text first; rows with a null or empty input -> dead letters."""

    def __init__(self, column: str, id_column: str | None):
        self.column, self.id_column = column, id_column
        self.read = Metrics.counter("beamvec", "embed_read")
        self.rejected = Metrics.counter("beamvec", "embed_rejected")

    def process(self, block: Block):
        table = block.table
        self.read.inc(table.num_rows)
        if self.column not in table.column_names:
            raise ValueError(f"{block.source}: no column {self.column!r} to embed; columns are "
                             f"{', '.join(table.column_names)}")
        column = table.column(self.column).combine_chunks()
        text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        if text:
            length = pc.utf8_length(column).fill_null(0).to_numpy(zero_copy_only=False)
            order = np.argsort(length, kind="stable")  # texts of similar length share a batch
            values = column.to_pylist()
        elif pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            length = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
            order = np.arange(table.num_rows)
            values = [None if v is None else np.asarray(v, np.float32) for v in column.to_pylist()]
        else:
            raise ValueError(f"{block.source}: column {self.column!r} is {column.type}; embed takes strings, "
                             "or lists of numbers (features)")
        usable = length > 0
        reason = np.where(column.is_null().to_numpy(zero_copy_only=False), f"{self.column} is null",
                          f"{self.column} is empty")
        key = (block.source, block.offset)
        yield beam.pvalue.TaggedOutput("blocks", (key, block))
        bad = np.flatnonzero(~usable)
        if len(bad):
            self.rejected.inc(len(bad))
            ids = _id_column(table, self.id_column)
            yield beam.pvalue.TaggedOutput(REJECTED, _dead_letters(
                block.source, (block.offset + bad).tolist(), [ids[i] for i in bad], reason[bad].tolist()))
        for i in order[usable[order]]:
            yield (key, int(i)), values[i]


class _Failed(beam.DoFn):
    """A batch the model raised on -> a dead letter per row, with the error."""

    def __init__(self, id_column: str | None):
        self.id_column = id_column
        self.rejected = Metrics.counter("beamvec", "embed_rejected")

    def process(self, failure):
        batch, error = failure
        self.rejected.inc(len(batch))
        reason = f"the model failed on this row's batch: {type(error).__name__}: {error}"
        for (source, offset), row in sorted(key for key, _ in batch):
            yield _dead_letters(source, [offset + row], [None], reason)


class _Assemble(beam.DoFn):
    """A block and its rows' vectors -> the block with ``output_column`` (replacing one of that name),
    split into runs of consecutive rows where rows have no vector (set aside upstream)."""

    def __init__(self, output_column: str, normalize: bool):
        self.output_column, self.normalize = output_column, normalize
        self.embedded = Metrics.counter("beamvec", "embedded")

    def setup(self):
        self.progress = Progress("rows embedded")

    def process(self, element):
        _, values = element
        block = next(v for v in values if isinstance(v, Block))
        found = {row: vector for row, vector in (v for v in values if not isinstance(v, Block))}
        if not found:
            return
        rows = np.array(sorted(found))
        vectors = np.stack([found[r] for r in rows]).astype(np.float32)
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.embedded.inc(len(rows))
        self.progress.add(len(rows))
        table = block.table.drop_columns([self.output_column]) if self.output_column in block.table.column_names \
            else block.table
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run, run_vectors in zip(np.split(rows, breaks), np.split(vectors, breaks)):
            part = table.slice(int(run[0]), len(run)).append_column(self.output_column, vectors_array(run_vectors))
            yield Block(block.source, block.offset + int(run[0]), part)


class Embed(beam.PTransform):
    """Rows with a text (or features) column -> :class:`EmbedResult`: the rows with a vector column.

    Consumes what :class:`ReadItems` and :class:`ReadQueries` consume (Parquet :class:`Block` s, or
    dicts, ``beam.Row`` s, Arrow tables). ``model`` is ``"all-MiniLM-L6-v2"`` (built in: 384-d, L2
    normalised; ``"all-MiniLM-L6-v2:bfloat16"`` runs its products in bfloat16), or the path of a
    SavedModel or ``.keras`` model (any filesystem TensorFlow reads) that maps a batch of strings,
    or of feature rows for a list column, to vectors. Inference is Beam's ``RunInference`` with its
    TensorFlow handler (:class:`beamvec.transforms.inference.EncoderHandler`), in batches of ``batch_size`` texts of similar
    length; with ``normalize`` the vectors are scaled to unit length. Every other column passes
    through. A null or empty input, or a batch the model fails on, is a dead letter with the reason
    (``id_column``, default ``id`` or ``query_id``, names the rows there).

    Example::

        embedded = p | ReadItems("docs.parquet") | Embed("all-MiniLM-L6-v2", "text")
        built = embedded.embedded | BuildIndex("/tmp/index")
    """

    def __init__(self, model: str = encoder.BUILTIN, column: str = "text", *, output_column: str = "vector",
                 normalize: bool = True, batch_size: int = DEFAULT_BATCH_SIZE, id_column: str | None = None):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.column, self.output_column = model, column, output_column
        self.normalize, self.batch_size, self.id_column = normalize, batch_size, id_column

    def expand(self, rows):
        from beamvec.transforms.inference import EncoderHandler  # imports TensorFlow: only where embedding

        blocks = rows | "AsBlocks" >> ToBlocks()
        split = blocks | "Explode" >> beam.ParDo(_Explode(self.column, self.id_column)).with_outputs(
            "blocks", REJECTED, main="inputs")
        inferred, failed = (
            split.inputs
            | "RunInference" >> RunInference(KeyedModelHandler(EncoderHandler(self.model, self.batch_size)))
            .with_exception_handling())
        vectors = inferred | "ByBlock" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1].inference)))
        embedded = (
            (split.blocks, vectors)
            | "Join" >> beam.Flatten()
            | "Gather" >> beam.GroupByKey()
            | "Assemble" >> beam.ParDo(_Assemble(self.output_column, self.normalize))
        )
        failures = failed.failed_inferences | "Failed" >> beam.ParDo(_Failed(self.id_column))
        rejected = (split[REJECTED], failures) | "Rejected" >> beam.Flatten()
        return EmbedResult(embedded, rejected)
