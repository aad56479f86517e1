"""The public transforms composed in one pipeline, from what a pipeline already holds (rows,
Arrow batches), with every stage's dead letters in one schema and counts that reconcile."""

import glob

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beamvec.index import exact
from beamvec.index.columns import masks_of
from beamvec.index.schema import validate_items
from beamvec.pipelines import synthetic
from beamvec.pipelines.demo import _with_bad_queries, _with_bad_rows
from beamvec.pipelines.jobs import _counters
from beamvec.transforms import (
    DEAD_LETTER_SCHEMA, AsNeighbors, BuildIndex, HybridSearch, Neighbors, ReadItems, ReadQueries, RelatedItems,
    WriteTables,
)

DIM = 16


def read(pattern):
    files = sorted(glob.glob(pattern))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def truth_of(items, queries, k=10):
    valid = validate_items(items)
    predicates = queries.column("predicate").to_pylist()
    masks = masks_of(valid.table, predicates)
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    rows, _ = exact.search(valid.vectors, vectors, k, "dot_product", [masks[p] for p in predicates])
    return exact.ids_of_rows(valid.table.column("id").to_numpy(), rows)


def test_build_and_search_from_rows_and_arrow_batches_in_one_pipeline(tmp_path):
    items = synthetic.make_items(3000, DIM, seed=21)
    queries = synthetic.make_queries(200, DIM, seed=21, predicates=synthetic.random_predicates(200, seed=22))
    rows = items.to_pylist()  # dicts, as a pipeline might hold them
    batches = queries.to_batches(max_chunksize=64)
    p = beam.Pipeline()
    built = (p | "Items" >> beam.Create(rows) | "AsItems" >> ReadItems()
             | "Build" >> BuildIndex(str(tmp_path / "index"), workload=synthetic.random_predicates(400, seed=23),
                                     min_partition_rows=500, max_partition_rows=1500))
    found = (p | "Queries" >> beam.Create(batches) | "Search" >> HybridSearch(built.index, k=10))
    found.results | "Write" >> WriteTables(str(tmp_path / "out/results"))
    counts = _counters(_finished(p))
    assert counts["items_read"] == 3000 == counts["items_indexed"] + counts["items_rejected"]
    assert counts["queries_read"] == 200 == counts["queries_answered"]
    got = {r["query_id"]: [n["id"] for n in r["neighbors"]] for r in read(str(tmp_path / "out/results-*.parquet")).to_pylist()}
    truth = truth_of(items, queries)
    found_ids = np.array([(got[q] + [-1] * 10)[:10] for q in queries.column("query_id").to_pylist()])
    assert exact.recall(found_ids, truth).mean() >= 0.95
    assert ((found_ids >= 0).sum(axis=1) == (truth >= 0).sum(axis=1)).all()

    results = read(str(tmp_path / "out/results-*.parquet"))
    expected = [Neighbors(r["query_id"], [n["id"] for n in r["neighbors"]], [n["score"] for n in r["neighbors"]])
                for r in results.to_pylist()]
    with beam.Pipeline() as q:
        assert_that(q | beam.Create([results]) | AsNeighbors(), equal_to(expected))


def _finished(pipeline):
    result = pipeline.run()
    result.wait_until_finish()
    return result


def test_every_stage_dead_letters_in_one_schema_and_counts_reconcile(tmp_path):
    items = synthetic.make_items(2000, DIM, seed=31)
    raw = _with_bad_rows(items)  # a repeated id, a NaN vector, a short vector
    pq.write_table(raw.slice(0, 1000), tmp_path / "items-0.parquet")
    pq.write_table(raw.slice(1000), tmp_path / "items-1.parquet")  # the repeated id is in the other file
    queries = _with_bad_queries(synthetic.make_queries(100, DIM, seed=31))  # does not parse; names no column
    pq.write_table(queries, tmp_path / "queries.parquet")
    p = beam.Pipeline()
    built = (p | "Items" >> ReadItems(str(tmp_path / "items-*.parquet"))
             | "Build" >> BuildIndex(str(tmp_path / "index"), partitioner="hash", min_partition_rows=500,
                                     max_partition_rows=1000))
    found = p | "Queries" >> ReadQueries(str(tmp_path / "queries.parquet")) | "Search" >> HybridSearch(built.index)
    related = (p | "Related" >> ReadItems(str(tmp_path / "items-0.parquet"))
               | "RelatedItems" >> RelatedItems(built.index, "year >= {year} AND id != {id}", k=3))
    for name, out in (("built", built.rejected), ("found", found.rejected), ("related", related.rejected)):
        out | f"Write{name}" >> WriteTables(str(tmp_path / f"dead/{name}"), DEAD_LETTER_SCHEMA)
    counts = _counters(_finished(p))

    dead = {name: read(str(tmp_path / f"dead/{name}-*.parquet")) for name in ("built", "found", "related")}
    assert all(t.schema.equals(DEAD_LETTER_SCHEMA) for t in dead.values())
    stages = {name: sorted(set(t.column("stage").to_pylist())) for name, t in dead.items()}
    assert stages["built"] == ["drop repeated ids", "validate items"]  # the repeat is across files
    assert stages["found"] == ["route queries", "validate queries"]
    assert "related items template" in stages["related"]  # null years do not fill "year >= {year}"
    by_reason = {r["id"]: r for r in dead["found"].to_pylist()}
    assert by_reason["-1"]["stage"] == "validate queries" and "does not parse" in by_reason["-1"]["reason"]
    assert by_reason["-2"]["stage"] == "route queries" and "genre" in by_reason["-2"]["reason"]
    assert all(r["source"].endswith("queries.parquet") for r in dead["found"].to_pylist())
    repeated = [r for r in dead["built"].to_pylist() if r["stage"] == "drop repeated ids"]
    assert len(repeated) == 1 and repeated[0]["source"].endswith("items-1.parquet")  # the later file's copy
    # Counts reconcile, all three jobs' metrics summed in one pipeline.
    assert counts["items_read"] == 2003 + 1000
    related_read = 1000
    assert counts["items_indexed"] + dead["built"].num_rows == 2003
    assert counts["queries_read"] == 102
    answered_related = counts["queries_answered"] - (102 - 2)
    assert answered_related + dead["related"].num_rows == related_read
    assert counts["queries_rejected"] == 2 + sum(1 for s in dead["related"].column("stage").to_pylist()
                                                 if s in ("related items template", "route queries"))


@pytest.mark.parametrize("bad", [dict(k=0), dict(partitioner="nope"), dict(metric="cosinus"),
                                 dict(shard_spec="Tree0")])
def test_bad_settings_fail_at_construction_naming_them(bad, tmp_path):
    with pytest.raises(ValueError):
        if "k" in bad:
            HybridSearch(str(tmp_path), **bad)
        else:
            BuildIndex(str(tmp_path / "index"), workload=["x = 1"], **bad)
