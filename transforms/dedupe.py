"""Ids repeated across blocks (two files, or two blocks of one file): the first copy stays, the others
are dead letters.

Validation (:func:`beamvec.index.schema.check_ids`) only sees one block at a time. :class:`DropRepeatedIds`
finds the repeats of the whole input: each block's ids go, as small Arrow tables, to one of
:data:`BUCKETS` buckets by id hash; each bucket sorts its ids by (id, source, row) and names every copy
after the first; the (few) repeats reach every block as a side input, which drops its own. "First" is
by source (the file path, so files in path order), then row: the same copy on every runner, whatever
the order rows arrive in.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from beamvec.index.hashing import id_hashes
from beamvec.index.schema import ID, QUERY_ID, Rejection, Validated
from beamvec.transforms.validate import REJECTED, dead_letters

BUCKETS = 64
STAGE = "drop repeated ids"


def _id_rows(validated: Validated, column: str):
    """(bucket, table of id, source, row) for a block's rows, one table per bucket its ids hash to."""
    ids = validated.table.column(column).combine_chunks()
    if not len(ids):
        return
    table = pa.table({"id": ids, "source": pa.array([validated.source] * len(ids), pa.string()),
                      "row": pa.array(np.asarray(validated.rows, np.int64))})
    buckets = id_hashes(ids) % np.uint64(BUCKETS)
    for bucket in np.unique(buckets):
        yield int(bucket), table.filter(pa.array(buckets == bucket))


def repeats_of(table: pa.Table) -> pa.Table:
    """Of rows (id, source, row), every one whose id an earlier row (by source, then row) has, with that
    first copy's place: a table (source, row, first_source, first_row)."""
    n = table.num_rows
    empty = pa.table({"source": pa.array([], pa.string()), "row": pa.array([], pa.int64()),
                      "first_source": pa.array([], pa.string()), "first_row": pa.array([], pa.int64())})
    if n < 2:
        return empty
    table = table.take(pc.sort_indices(table, [("id", "ascending"), ("source", "ascending"), ("row", "ascending")]))
    ids = table.column("id")
    repeat = np.concatenate([[False], pc.equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)])
    if not repeat.any():
        return empty
    first = np.maximum.accumulate(np.where(repeat, 0, np.arange(n)))
    where = np.flatnonzero(repeat)
    return pa.table({"source": table.column("source").take(pa.array(where)),
                     "row": table.column("row").take(pa.array(where)),
                     "first_source": table.column("source").take(pa.array(first[where])),
                     "first_row": table.column("row").take(pa.array(first[where]))})


def _bucket_repeats(element) -> list[pa.Table]:
    _, tables = element
    found = repeats_of(pa.concat_tables(list(tables)))
    return [found] if found.num_rows else []


def _by_source(tables: list[pa.Table]) -> dict[str, dict[int, tuple[str, int]]]:
    """The repeats as {source: {row: (first source, first row)}}."""
    out: dict[str, dict[int, tuple[str, int]]] = {}
    for table in tables:
        for r in table.to_pylist():
            out.setdefault(r["source"], {})[r["row"]] = (r["first_source"], r["first_row"])
    return out


class _Drop(beam.DoFn):
    def __init__(self, kind: str, column: str):
        self.kind, self.column = kind, column
        self.rejected = Metrics.counter("beamvec", f"{kind}_rejected")

    def process(self, validated: Validated, repeats: dict):
        mine = repeats.get(validated.source)
        hit = np.isin(validated.rows, list(mine)) if mine else np.zeros(len(validated.rows), bool)
        if not hit.any():
            yield validated
            return
        ids = validated.table.column(self.column).to_pylist()
        rejections = []
        for i in np.flatnonzero(hit):
            row = int(validated.rows[i])
            first_source, first_row = mine[row]
            rejections.append(Rejection(row, str(ids[i]), f"duplicate {self.column} {ids[i]!r} (first at row "
                                                            f"{first_row} of {first_source})"))
        self.rejected.inc(len(rejections))
        yield beam.pvalue.TaggedOutput(REJECTED, dead_letters(dataclasses.replace(validated,
                                                                                  rejections=tuple(rejections)), STAGE))
        keep = np.flatnonzero(~hit)
        if len(keep):
            yield dataclasses.replace(validated, table=validated.table.take(pa.array(keep)),
                                      vectors=validated.vectors[keep], rows=validated.rows[keep], rejections=())


class DropRepeatedIds(beam.PTransform):
    """``Validated`` blocks of items or queries -> the same blocks without the rows whose id an earlier
    row has (main output ``valid``; earlier: by source, then row), and dead letters naming the first
    copy (output ``rejected``), counted in ``{kind}_rejected`` so counts still reconcile.

    ``kind``: ``items`` (column ``id``) or ``queries`` (``query_id``). Apply it after :class:`Validate`
    (which drops repeats within a block): ``checked.valid | DropRepeatedIds("items")``.
    """

    def __init__(self, kind: str):
        super().__init__()
        if kind not in ("items", "queries"):
            raise ValueError(f"kind must be 'items' or 'queries', got {kind!r}")
        self.kind, self.column = kind, ID if kind == "items" else QUERY_ID

    def expand(self, blocks):
        repeats = (
            blocks
            | "Ids" >> beam.FlatMap(_id_rows, self.column)
            | "ByBucket" >> beam.GroupByKey()
            | "Repeats" >> beam.FlatMap(_bucket_repeats)
            | "Gather" >> beam.combiners.ToList()
            | "BySource" >> beam.Map(_by_source)
        )
        return blocks | "Drop" >> beam.ParDo(_Drop(self.kind, self.column),
                                             beam.pvalue.AsSingleton(repeats)).with_outputs(REJECTED, main="valid")
