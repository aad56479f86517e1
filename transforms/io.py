"""Parquet in and out of a pipeline, in Arrow blocks (never one Python object per row).

Paths go through Beam's FileSystems, so gs://, s3:// and the like work wherever
their Beam extras are installed.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquetBatched

from beamvec.index.schema import vector_dimension

DEFAULT_BATCH_ROWS = 8192


@dataclasses.dataclass(frozen=True)
class Block:
    """Rows of one input file: its path, the position of the first row in it, and the rows."""

    source: str
    offset: int
    table: pa.Table


class ReadTables(beam.PTransform):
    """Reads Parquet files matching ``pattern`` into :class:`Block` s of at most ``batch_rows`` rows."""

    def __init__(self, pattern: str, batch_rows: int = DEFAULT_BATCH_ROWS):
        super().__init__()
        self.pattern = pattern
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


class WriteTables(beam.PTransform):
    """Writes Arrow tables of one ``schema`` as Parquet files under ``path_prefix``."""

    def __init__(self, path_prefix: str, schema: pa.Schema):
        super().__init__()
        self.path_prefix = path_prefix
        self.schema = schema

    def expand(self, tables):
        schema = self.schema
        return (
            tables
            | "Conform" >> beam.Map(lambda t: t.select(schema.names).cast(schema))
            | "Write" >> WriteToParquetBatched(self.path_prefix, schema, file_name_suffix=".parquet")
        )


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
