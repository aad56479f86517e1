"""Parquet in and out of a pipeline, in Arrow blocks (never one Python object per row).

Paths go through Beam's FileSystems, so gs://, s3:// and the like work wherever
their Beam extras are installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beamvec.index.schema import check_item_schema, check_query_schema

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


class InputError(ValueError):
    """An input that cannot be read at all: no file matches, a file is not Parquet, or the files disagree
    on a column's type. The message names the file (and column)."""


def input_pattern(path: str) -> str:
    """An input path as a file pattern: made absolute; a directory (local, or any path ending in ``/``)
    stands for the ``*.parquet`` files directly in it."""
    path = absolute(path)
    if path.endswith("/") or ("://" not in path and os.path.isdir(path)):
        return path.rstrip("/") + "/*.parquet"
    return path


class ReadTables(beam.PTransform):
    """Reads Parquet files matching ``pattern`` (a directory: its ``*.parquet`` files) into
    :class:`Block` s of at most ``batch_rows`` rows. With ``schema``, every block is conformed to it
    (columns in its order, cast to its types, missing ones null): blocks of files whose types differ
    but widen to one (int32 and int64, say) then all look alike."""

    def __init__(self, pattern: str, batch_rows: int = DEFAULT_BATCH_ROWS, schema: pa.Schema | None = None):
        super().__init__()
        self.pattern = input_pattern(pattern)
        self.batch_rows = batch_rows
        self.schema = schema

    def expand(self, pbegin):
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self.pattern)
            | "Open" >> fileio.ReadMatches()
            | "Read" >> beam.FlatMap(_read_blocks, self.batch_rows, self.schema)
        )


def _parquet_file(path: str, f) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    if table.schema.equals(schema):
        return table
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _read_blocks(readable: fileio.ReadableFile, batch_rows: int, schema: pa.Schema | None = None) -> Iterator[Block]:
    path = readable.metadata.path
    with readable.open(compression_type="uncompressed") as f:
        parquet = _parquet_file(path, f)
        offset = 0
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows):
                table = pa.Table.from_batches([batch])
                yield Block(path, offset, table if schema is None else _conform(table, schema))
                offset += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: cannot read the Parquet rows after row {offset} ({e})") from None


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
    _check = None

    def __init__(self, pattern: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS, *,
                 embed_column: str | None = None):
        super().__init__()
        self.pattern, self.batch_rows = (None if pattern is None else input_pattern(pattern)), batch_rows
        self.schema = None
        if pattern is not None:  # fail at construction, naming the file and what is missing or wrong
            self.schema = checked_schema(self.pattern, self._columns, self._check, embed_column)

    def expand(self, pvalue):
        if isinstance(pvalue, beam.pvalue.PBegin):
            if self.pattern is None:
                raise ValueError(f"{type(self).__name__}() at the start of a pipeline needs a file pattern")
            return pvalue | "Parquet" >> ReadTables(self.pattern, self.batch_rows, self.schema)
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
    _check = staticmethod(check_item_schema)


class ReadQueries(_Read):
    """Queries -> :class:`Block` s, for :class:`HybridSearch`: as :class:`ReadItems`, with the
    columns ``query_id``, ``vector``, and optionally ``predicate`` and ``k``."""

    _columns = ("query_id", "vector")
    _check = staticmethod(check_query_schema)


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
    first = input_files(pattern)[0]
    with FileSystems.open(first) as f:
        return _parquet_file(first, f).schema_arrow


def read_schemas(pattern: str) -> list[tuple[str, pa.Schema, int]]:
    """(path, schema, rows) of every file matching ``pattern``, in path order (their footers, read in parallel)."""
    def one(path: str) -> tuple[str, pa.Schema, int]:
        with FileSystems.open(path) as f:
            parquet = _parquet_file(path, f)
            return path, parquet.schema_arrow, parquet.metadata.num_rows

    files = input_files(pattern)
    if len(files) == 1:
        return [one(files[0])]
    with ThreadPoolExecutor(min(16, len(files))) as pool:
        return list(pool.map(one, files))


def checked_schema(pattern: str, columns: Sequence[str] = (), check=None, embed_column: str | None = None
                   ) -> pa.Schema:
    """The one schema of the files matching ``pattern``, checked: InputError (naming the file) when one
    lacks a column of ``columns`` or ``check`` (e.g. :func:`beamvec.index.schema.check_item_schema`)
    refuses its schema, or when two files' types for a column do not widen to one (naming both files).
    Files without rows are not checked (nor is a column of type null: no values); with ``embed_column``,
    the files carry that column instead of ``vector``, and ``check`` is skipped."""
    schemas = read_schemas(pattern)
    with_rows = [(path, schema) for path, schema, rows in schemas if rows]
    if not with_rows:  # nothing to read: nothing to refuse
        return schemas[0][1]
    wanted = tuple(columns) if embed_column is None else (*(c for c in columns if c != "vector"), embed_column)
    for path, schema in with_rows:
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise InputError(f"{path}: no column {', '.join(missing)}; columns are {', '.join(schema.names)}")
        if check is not None and embed_column is None:
            valued = pa.schema([f for f in schema if f.name in wanted or not pa.types.is_null(f.type)])
            try:
                check(valued)
            except ValueError as e:
                raise InputError(f"{path}: {e}") from None
    seen: dict[str, tuple[str, pa.DataType]] = {}
    for path, schema in with_rows:
        for field in schema:
            if pa.types.is_null(field.type):
                continue
            if field.name not in seen:
                seen[field.name] = (path, field.type)
                continue
            try:
                pa.unify_schemas([pa.schema([pa.field(field.name, seen[field.name][1])]), pa.schema([field])],
                                 promote_options="permissive")
            except (pa.ArrowException, TypeError):
                where, t = seen[field.name]
                raise InputError(f"column '{field.name}' has type {t} in {where} but {field.type} in {path}: "
                                 "the files must agree on it") from None
    return pa.unify_schemas([schema for _, schema in with_rows], promote_options="permissive")


DIMENSION_SAMPLE = 4096


def read_dimension(pattern: str, sample: int = DIMENSION_SAMPLE) -> int:
    """The vectors' dimension: the most common length of the first ``sample`` non-empty vectors of the
    files matching ``pattern`` (in path order; a fixed size counts for each of its rows), so that a few
    bad rows, even the very first, do not decide it. Ties go to the smaller length."""
    lengths: list[np.ndarray] = []
    count = 0
    for path in input_files(pattern):
        with FileSystems.open(path) as f:
            parquet = _parquet_file(path, f)
            if "vector" not in parquet.schema_arrow.names:
                raise InputError(f"{path}: no column vector; columns are {', '.join(parquet.schema_arrow.names)}")
            for batch in parquet.iter_batches(batch_size=1024, columns=["vector"]):
                column = batch.column(0)
                if pa.types.is_fixed_size_list(column.type):
                    found = np.full(len(column) - column.null_count, column.type.list_size, np.int64)
                else:
                    found = pc.list_value_length(column).drop_null().to_numpy(zero_copy_only=False)
                found = found[found > 0]
                lengths.append(found)
                count += len(found)
                if count >= sample:
                    break
        if count >= sample:
            break
    if not count:
        raise InputError(f"{pattern}: no items with a vector (the input is empty, or no row has one): cannot "
                         "tell the dimension")
    values, counts = np.unique(np.concatenate(lengths)[:sample], return_counts=True)
    return int(values[np.argmax(counts)])


def input_files(pattern: str) -> list[str]:
    """The files matching ``pattern`` (see :func:`input_pattern`), sorted; InputError if none."""
    pattern = input_pattern(pattern)
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise InputError(f"no file matches {pattern!r}")
    return sorted(m.path for m in matches)
