"""HybridSearch on the DirectRunner against Index.search: one search core, the same answers."""

import glob
import pathlib
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import Index, build_index, fit_plan, versions
from beamvec.pipelines import synthetic
from beamvec.index.shardfile import DATASET
from beamvec.pipelines import jobs

DIM = 16


def results(output):
    tables = [pq.read_table(f) for f in sorted(glob.glob(f"{output}/results-*.parquet"))]
    return sorted((r["query_id"], tuple(n["id"] for n in r["neighbors"]), tuple(n["score"] for n in r["neighbors"]))
                  for r in pa.concat_tables(tables).to_pylist())


def in_process(index, queries, k):
    """Index.search over the queries of the files in name order, as (query_id, ids, scores) rows."""
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    ids, scores = Index.open(index).search(vectors, queries.column("predicate").to_pylist(), k)
    return sorted((q, tuple(int(i) for i in row if i >= 0), tuple(float(s) for s in score[row >= 0]))
                  for q, row, score in zip(queries.column("query_id").to_pylist(), ids, scores))


@pytest.fixture(scope="module", params=["workload", "kmeans"])
def index(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"parity-{request.param}")
    items = synthetic.make_items(20_000, DIM, seed=5)
    vectors = items.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    attributes = items.drop_columns(["vector", "id"])
    plan = fit_plan(request.param, attributes, vectors, synthetic.random_predicates(400, seed=6), 2000, 8000)
    assert plan.num_partitions > 2
    # ScaNN shards calibrated for a low recall: how a shard's queries are grouped (which strategy
    # each group gets, which queries share a product) then shows in their answers.
    build_index(str(root / "index"), items.column("id").combine_chunks(), vectors, attributes, plan=plan,
                recall_target=0.6)
    return root, str(root / "index")


def write_query_files(root, n=420, files=3):
    """Queries split over files, their query ids unique across them (a repeated one would be a dead
    letter); half their predicates are 25 texts repeated (groups of
    many queries), half drawn afresh."""
    common, fresh = synthetic.random_predicates(25, seed=7), synthetic.random_predicates(n, seed=8)
    predicates = [common[i % 25] if i % 2 else fresh[i] for i in range(n)]
    queries = synthetic.make_queries(n, DIM, seed=5, predicates=predicates)
    size = -(-n // files)
    for f in range(files):
        part = queries.slice(f * size, size)
        part = part.set_column(0, "query_id", pa.array(np.arange(f * size, f * size + part.num_rows, dtype=np.int64)))
        pq.write_table(part, root / f"queries-{f}.parquet", row_group_size=64)
    return pa.concat_tables([pq.read_table(root / f"queries-{f}.parquet") for f in range(files)])


def test_hybrid_search_gives_exactly_what_index_search_gives(index):
    root, path = index
    queries = write_query_files(root)
    counts = jobs.query(path, str(root / "queries-*.parquet"), str(root / "out"), PipelineOptions([]), k=10)
    assert counts["queries_answered"] == queries.num_rows
    got = results(root / "out")
    want = in_process(path, queries, 10)
    assert len(got) == len(want) == queries.num_rows
    assert got == want


def test_a_shard_that_does_not_match_its_checksum_fails_the_job_naming_it(index, tmp_path):
    _, path = index
    write_query_files(tmp_path, n=60, files=1)
    broken = tmp_path / "index"
    shutil.copytree(path, broken)
    version = versions.resolve(str(broken))
    for entry in Index.open(path).manifest.partitions:  # one flipped bit in every shard's vectors
        target = pathlib.Path(version) / entry.path / DATASET
        data = bytearray(target.read_bytes())
        data[-1] ^= 1
        target.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"shard p\d+ at .* does not match its checksum"):
        jobs.query(str(broken), str(tmp_path / "queries-*.parquet"), str(tmp_path / "out"), PipelineOptions([]), k=10)
