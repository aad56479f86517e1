"""Parquet in and out of a pipeline, in Arrow blocks (never one Python object per row).

Paths go through Beam's FileSystems, so gs://, s3:// and the like work wherever
their Beam extras are installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from typing import Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beamvec.index.schema import vector_dimension

DEFAULT_BATCH_ROWS = 8192


def absolute(path: str) -> str:
    """A local path made absolute against the current directory (when the pipeline is built, since
    workers may run elsewhere); other filesystems' paths (``scheme://``) unchanged."""
    return path if "://" in path else os.path.abspath(path)


@dataclasses.dataclass(frozen=True)
class Block:
    """Rows of one input: its source (a file, or ``pcollection:...`` for elements), the position of
    the first row in it, and the rows."""

    source: str
    offset: int
    table: pa.Table


class ReadTables(beam.PTransform):
    """Reads Parquet files matching ``pattern`` into :class:`Block` s of at most ``batch_rows`` rows."""

    def __init__(self, pattern: str, batch_rows: int = DEFAULT_BATCH_ROWS):
        super().__init__()
        self.pattern = absolute(pattern)
        self.batch_rows = batch_rows

    def expand(self, pbegin):
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self.pattern)
            | "Open" >> fileio.ReadMatches()
            | "Read" >> beam.FlatMap(_read_blocks, self.batch_rows)
        )


def _read_blocks(readable: fileio.ReadableFile, batch_rows: int) -> Iterator[Block]:
    path = readable.metadata.path
    with readable.open(compression_type="uncompressed") as f:
        parquet = pq.ParquetFile(f)
        offset = 0
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield Block(path, offset, pa.Table.from_batches([batch]))
            offset += batch.num_rows


def _as_dict(element) -> dict:
    if isinstance(element, dict):
        return element
    if isinstance(element, beam.Row):
        return element.as_dict()
    if hasattr(element, "_asdict"):  # NamedTuple
        return element._asdict()
    raise TypeError(f"cannot read a {type(element).__name__} as a row: give dicts, beam.Row, NamedTuples, "
                    "pyarrow RecordBatches or Tables")


def _named_block(table: pa.Table) -> Block:
    """Elements' rows as a block named by their content (and a nonce, so equal blocks stay apart):
    the same elements sort the same way on every runner."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest = hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:24]
    return Block(f"pcollection:{digest}:{uuid.uuid4().hex}", 0, table)


class _ToBlocks(beam.DoFn):
    """Blocks pass through, each Table or RecordBatch is a block of its own, and rows (dicts,
    Rows, NamedTuples) are gathered into blocks of at most ``batch_rows`` within a bundle."""

    def __init__(self, batch_rows: int):
        self.batch_rows = batch_rows

    def start_bundle(self):
        self.rows: list[dict] = []

    def process(self, element):
        if isinstance(element, Block):
            yield element
        elif isinstance(element, (pa.Table, pa.RecordBatch)):
            if element.num_rows:
                yield _named_block(element if isinstance(element, pa.Table) else pa.Table.from_batches([element]))
        else:
            self.rows.append(_as_dict(element))
            if len(self.rows) >= self.batch_rows:
                yield _named_block(pa.Table.from_pylist(self.rows))
                self.rows = []

    def finish_bundle(self):
        if self.rows:  # batch inputs: the global window
            yield WindowedValue(_named_block(pa.Table.from_pylist(self.rows)), MIN_TIMESTAMP, [GlobalWindow()])
            self.rows = []


class ToBlocks(beam.PTransform):
    """Any of: :class:`Block` s, pyarrow Tables or RecordBatches, dicts, ``beam.Row`` s or NamedTuples
    -> :class:`Block` s (rows batched, at most ``batch_rows`` a block). Blocks pass through."""

    def __init__(self, batch_rows: int = DEFAULT_BATCH_ROWS):
        super().__init__()
        self.batch_rows = batch_rows

    def expand(self, elements):
        return elements | "Blocks" >> beam.ParDo(_ToBlocks(self.batch_rows))


class _Read(beam.PTransform):
    _columns: tuple[str, ...] = ()

    def __init__(self, pattern: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS, *,
                 embed_column: str | None = None):
        super().__init__()
        self.pattern, self.batch_rows = (None if pattern is None else absolute(pattern)), batch_rows
        if pattern is not None:  # fail at construction, naming what is missing
            schema = read_schema(self.pattern)
            wanted = self._columns if embed_column is None else (
                *(c for c in self._columns if c != "vector"), embed_column)
            missing = [c for c in wanted if c not in schema.names]
            if missing:
                raise ValueError(f"{pattern}: no column {', '.join(missing)}; columns are {', '.join(schema.names)}")

    def expand(self, pvalue):
        if isinstance(pvalue, beam.pvalue.PBegin):
            if self.pattern is None:
                raise ValueError(f"{type(self).__name__}() at the start of a pipeline needs a file pattern")
            return pvalue | "Parquet" >> ReadTables(self.pattern, self.batch_rows)
        if self.pattern is not None:
            raise ValueError(f"{type(self).__name__}({self.pattern!r}) reads files: apply it to the pipeline, "
                             f"or give no pattern to read a PCollection")
        return pvalue | "Rows" >> ToBlocks(self.batch_rows)


class ReadItems(_Read):
    """Items -> :class:`Block` s (Arrow tables of at most ``batch_rows`` rows), for :class:`BuildIndex`.

    ``p | ReadItems("gs://bucket/items-*.parquet")`` reads Parquet (any Beam filesystem);
    ``rows | ReadItems()`` takes what a pipeline already has: dicts, ``beam.Row`` s or NamedTuples
    (``id``, ``vector``, attribute columns), or pyarrow RecordBatches or Tables.
    Rows are checked later, by the transform that uses them (bad rows become dead letters).
    With ``embed_column``, the files need that column instead of ``vector`` (:class:`Embed` computes it).
    """

    _columns = ("id", "vector")


class ReadQueries(_Read):
    """Queries -> :class:`Block` s, for :class:`HybridSearch`: as :class:`ReadItems`, with the
    columns ``query_id``, ``vector``, and optionally ``predicate`` and ``k``."""

    _columns = ("query_id", "vector")


class WriteTables(beam.PTransform):
    """Arrow tables -> Parquet files ``{path_prefix}-{digest}.parquet``, one per non-empty table, named
    by its content (so a retried write rewrites the same file); emits the paths written. With
    ``schema``, every table is conformed to it (columns selected and cast) first.

    Write a :class:`SearchResult` 's ``results`` and any stage's ``rejected`` dead letters with it.
    """

    def __init__(self, path_prefix: str, schema: pa.Schema | None = None):
        super().__init__()
        self.path_prefix = absolute(path_prefix)
        self.schema = schema

    def expand(self, tables):
        return tables | "Write" >> beam.FlatMap(_write_table, self.path_prefix, self.schema)


def _write_table(table: pa.Table, path_prefix: str, schema: pa.Schema | None) -> Iterator[str]:
    if not table.num_rows:
        return
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    path = f"{path_prefix}-{hashlib.sha256(data).hexdigest()[:20]}.parquet"
    with FileSystems.create(path) as f:
        f.write(data)
    yield path


def read_schema(pattern: str) -> pa.Schema:
    """The schema of the first file matching ``pattern`` (read when the pipeline is built)."""
    first = _first_file(pattern)
    with FileSystems.open(first) as f:
        return pq.ParquetFile(f).schema_arrow


def read_dimension(pattern: str) -> int:
    """The vector dimension of the first file matching ``pattern``: its fixed size, else its first row's."""
    first = _first_file(pattern)
    with FileSystems.open(first) as f:
        parquet = pq.ParquetFile(f)
        for batch in parquet.iter_batches(batch_size=1024, columns=["vector"]):
            dimension = vector_dimension(batch.column(0))
            if dimension:
                return dimension
    raise ValueError(f"{pattern}: no vector in the first file, cannot tell the dimension")


def _first_file(pattern: str) -> str:
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise ValueError(f"no file matches {pattern!r}")
    return sorted(m.path for m in matches)[0]
