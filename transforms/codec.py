"""Quantization as Beam transforms: fit a codec on a sample (:class:`FitCodec`), then encode every
vector with it as a side input (:class:`Encode`), as tensorflow_transform analyzes then transforms.

Codes travel as one ``fixed_size_binary`` column, :data:`CODES` (a vector's code bytes), so that a
shuffle of encoded rows moves the code's bytes, not float32 vectors.
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beamvec.index import autocodec, exact, querylog
from beamvec.index.codec import Codec, CodecSpec
from beamvec.index.querylog import QueryLog
from beamvec.index.schema import ID, VECTOR, Validated, validate_items
from beamvec.transforms.io import Block, ToBlocks
from beamvec.transforms.validate import REJECTED, Validate

CODES = "codes"
AUTO = "auto"


def codes_array(codes: np.ndarray) -> pa.FixedSizeBinaryArray:
    """Codes (n, width) of any dtype as a fixed_size_binary column of their bytes."""
    codes = np.ascontiguousarray(codes)
    width = codes.dtype.itemsize * (codes.shape[1] if codes.ndim == 2 else 1)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(codes), [None, pa.py_buffer(codes.tobytes())])


def codes_of(column: pa.ChunkedArray | pa.Array, codec: Codec) -> np.ndarray:
    """The codes a :func:`codes_array` column holds, as :meth:`Codec.encode` made them."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if column.type != pa.binary(codec.bytes_per_vector) or column.null_count:
        raise ValueError(f"column {CODES!r} is {column.type} with {column.null_count} nulls; codec "
                         f"{codec.spec.text()} writes fixed_size_binary[{codec.bytes_per_vector}] without nulls")
    data = np.frombuffer(column.buffers()[1], np.uint8)[column.offset * codec.bytes_per_vector:]
    return data[:len(column) * codec.bytes_per_vector].view(codec.code_dtype).reshape(len(column), codec.code_width)


def fit_codec(sample: pa.Table | None, spec: str, metric: str, seed: int = 0, dimension: int | None = None,
              log: QueryLog | None = None, recall_target: float = 0.95,
              max_bytes_per_vector: float | None = None) -> Codec:
    """The codec ``spec`` names fitted on ``sample`` (items as :class:`SampleRows` gives them), or with
    ``spec='auto'`` the smallest within ``max_bytes_per_vector`` that meets ``recall_target`` on the
    log's held-out queries (:func:`beamvec.index.autocodec.choose`). OOD fits on the log's queries."""
    if sample is None or not sample.num_rows:
        raise ValueError("no items to fit a codec on: the input is empty")
    valid = validate_items(sample, dimension)
    if not valid.table.num_rows:
        raise ValueError("no valid items to fit a codec on: every sampled item was rejected")
    calibration, heldout = querylog.build_parts(log, valid.table.drop_columns([VECTOR]).schema,
                                                valid.vectors.shape[1]) if log is not None else (None, None)
    queries = calibration.vectors if calibration is not None else None
    if spec.strip().lower() != AUTO:
        return Codec.fit(spec, valid.vectors, metric, queries, seed)
    if max_bytes_per_vector is None:
        raise ValueError("codec 'auto' needs max_bytes_per_vector, the budget it picks under")
    codec, _ = autocodec.choose(valid.vectors, valid.table.drop_columns([VECTOR]), metric, recall_target,
                                max_bytes_per_vector, calibration, heldout, seed)
    return codec


def check_codec_spec(spec: str | None, max_bytes_per_vector: float | None) -> str | None:
    """``spec`` if it can be fitted ('auto' with a positive budget, or a valid spec); ValueError otherwise."""
    if spec is None:
        return None
    if spec.strip().lower() == AUTO:
        if max_bytes_per_vector is None or max_bytes_per_vector <= 0:
            raise ValueError("codec 'auto' needs a positive max_bytes_per_vector (--max-bytes-per-vector)")
        return AUTO
    return CodecSpec.parse(spec).text()


class FitCodec(beam.PTransform):
    """Items -> a singleton PCollection of the fitted :class:`beamvec.index.codec.Codec`.

    Consumes items as :class:`ReadItems` gives them (or dicts, rows, Arrow tables). Analyze: the
    ``sample_rows`` items with the smallest id hashes (the same on every runner) are validated and
    the codec ``spec`` (``SQ8``, ``PCA48,SQ8``, ``PQ24``, ``OOD24,SQ8,Rerank``... or ``auto`` with
    ``max_bytes_per_vector``) is fitted on them; ``log``, a workload log with vectors, gives the
    query sample OOD fits on (and the held-out queries ``auto`` measures). Give the result to
    :class:`Encode` as its codec.
    """

    def __init__(self, spec: str, *, metric: str = "dot_product", sample_rows: int = 50_000, seed: int = 0,
                 dimension: int | None = None, log: QueryLog | None = None, recall_target: float = 0.95,
                 max_bytes_per_vector: float | None = None):
        super().__init__()
        self.spec = check_codec_spec(spec, max_bytes_per_vector)
        self.metric, self.sample_rows, self.seed, self.dimension = metric, sample_rows, seed, dimension
        self.log, self.recall_target, self.max_bytes = log, recall_target, max_bytes_per_vector

    def expand(self, items):
        from beamvec.transforms.build import SampleRows

        return (items | "AsBlocks" >> ToBlocks() | "Sample" >> SampleRows(self.sample_rows)
                | "Fit" >> beam.Map(fit_codec, self.spec, self.metric, self.seed, self.dimension, self.log,
                                    self.recall_target, self.max_bytes))


def encode_table(table: pa.Table, vectors: np.ndarray, codec: Codec, keep_vectors: bool) -> pa.Table:
    """``table`` with a :data:`CODES` column of ``vectors`` encoded (as a shard prepares them: unit length
    under cosine), its vector column kept or dropped."""
    out = table if keep_vectors or VECTOR not in table.column_names else table.drop_columns([VECTOR])
    return out.append_column(CODES, codes_array(codec.encode(exact.prepare(vectors, codec.metric))))


def _encode(validated: Validated, codec: Codec, keep_vectors: bool) -> Block:
    table = encode_table(validated.table, validated.vectors, codec, keep_vectors)
    return Block(validated.source, int(validated.rows[0]) if len(validated.rows) else 0, table)


class EncodeResult(NamedTuple):
    """What :class:`Encode` emits: ``encoded``, :class:`Block` s whose vectors are replaced by the
    :data:`CODES` column (``codes_of`` reads it back); ``rejected``, dead-letter tables of the items
    that could not be encoded (bad vector, missing or repeated id), with the reason."""

    encoded: beam.PCollection
    rejected: beam.PCollection


class Encode(beam.PTransform):
    """Items + a codec (a singleton PCollection from :class:`FitCodec`, or a fitted Codec) -> :class:`EncodeResult`.

    Every item is validated against the codec's dimension and encoded; ``keep_vectors`` keeps the
    vector column beside the codes (a codec that re-ranks needs them in the index).
    """

    def __init__(self, codec, keep_vectors: bool = False):
        super().__init__()
        self.codec, self.keep_vectors = codec, keep_vectors

    def expand(self, items):
        codec = self.codec if isinstance(self.codec, beam.PCollection) else \
            items.pipeline | "Codec" >> beam.Create([self.codec])
        dimension = codec | "Dimension" >> beam.Map(lambda c: c.dimension)
        checked = items | "AsBlocks" >> ToBlocks() | "Validate" >> Validate("items", beam.pvalue.AsSingleton(dimension))
        encoded = checked.valid | "Encode" >> beam.Map(_encode, beam.pvalue.AsSingleton(codec), self.keep_vectors)
        return EncodeResult(encoded, checked[REJECTED])


def validate_encoded(table: pa.Table, codec: Codec) -> Validated:
    """Encoded rows split as :func:`beamvec.index.schema.validate_items` splits items (missing and
    repeated ids rejected); ``vectors`` holds the codes."""
    from beamvec.index.schema import check_ids, split_rows

    codes = codes_of(table.column(CODES), codec)
    bad: dict[int, str] = {}
    check_ids(table, ID, bad)
    return split_rows(table, codes, bad, ID, 0)
