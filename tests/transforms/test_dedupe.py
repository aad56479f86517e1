"""DropRepeatedIds: the first copy of an id (by source, then row) stays, every other is a dead letter."""

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.util import assert_that, equal_to

from beamvec.index.schema import validate_items
from beamvec.transforms.dedupe import DropRepeatedIds, repeats_of


def block(source: str, ids: list, offset: int = 0):
    table = pa.table({"id": pa.array(ids, pa.int64()), "vector": pa.array([[float(i), 1.0] for i in ids],
                                                                         pa.list_(pa.float32()))})
    validated = validate_items(table, 2, row_offset=offset)
    return validated.__class__(validated.table, validated.vectors, validated.rows, (), source)


def test_repeats_of_names_every_copy_after_the_first():
    table = pa.table({"id": [3, 1, 3, 3, 2], "source": ["b", "a", "a", "c", "a"], "row": [0, 0, 5, 1, 1]})
    assert repeats_of(table).to_pylist() == [
        {"source": "b", "row": 0, "first_source": "a", "first_row": 5},
        {"source": "c", "row": 1, "first_source": "a", "first_row": 5}]
    assert repeats_of(table.slice(0, 2)).num_rows == 0


def test_copies_across_files_and_blocks_of_a_file_are_dead_letters():
    blocks = [block("b.parquet", [1, 2, 3]), block("a.parquet", [3, 4]), block("a.parquet", [4, 5], offset=2)]
    with beam.Pipeline() as p:
        out = p | beam.Create(blocks) | DropRepeatedIds("items")
        kept = out.valid | "Kept" >> beam.FlatMap(lambda v: [(v.source, int(r), i) for r, i in
                                                              zip(v.rows, v.table.column("id").to_pylist())])
        letters = out.rejected | "Letters" >> beam.FlatMap(lambda t: [(r["source"], r["row"], r["reason"])
                                                                     for r in t.to_pylist()])
        assert_that(kept, equal_to([("b.parquet", 0, 1), ("b.parquet", 1, 2), ("a.parquet", 0, 3),
                                    ("a.parquet", 1, 4), ("a.parquet", 3, 5)]), label="kept")
        assert_that(letters, equal_to([
            ("b.parquet", 2, "duplicate id 3 (first at row 0 of a.parquet)"),
            ("a.parquet", 2, "duplicate id 4 (first at row 1 of a.parquet)")]), label="letters")
