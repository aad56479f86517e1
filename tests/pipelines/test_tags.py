"""A Beam build and query of items with tag lists (list<string>) on the DirectRunner, partitioned by a
workload of tag queries, answered as the exact search answers."""

import glob

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.index import exact
from beamvec.index.columns import masks_of
from beamvec.pipelines import cli, synthetic
from beamvec.pipelines.compare import beamvec_evaluator, pyarrow_evaluator

DIM = 16


def tag_items(n, seed):
    """Clustered vectors whose tags follow their cluster; some lists empty, some null."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 8, n)
    vectors = (rng.normal(size=(8, DIM))[cluster] + 0.5 * rng.normal(size=(n, DIM))).astype(np.float32)
    ranks = 1.0 / np.arange(1, 31) ** 1.1
    tags = [None if k == 6 else [f"t{c}_{r}" for r in rng.choice(30, k, False, ranks / ranks.sum())]
            for c, k in zip(cluster, rng.integers(0, 7, n))]
    return vectors, tags


def tag_queries(n, seed):
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        c, a, b = rng.integers(0, 8), rng.integers(0, 30), rng.integers(0, 30)
        texts.append(f"tags CONTAINS 't{c}_{a}'" if rng.random() < 0.5 else f"tags CONTAINS ALL ('t{c}_{a}', 't{c}_{b}')")
    return texts


def test_build_and_query_tag_data_on_the_direct_runner(tmp_path):
    vectors, tags = tag_items(6000, 0)
    vector_type = pa.list_(pa.float32(), DIM)
    pq.write_table(pa.table({"id": pa.array(np.arange(6000)), "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.ravel()), DIM), "tags": pa.array(tags, pa.list_(pa.string()))}), tmp_path / "items.parquet")
    pq.write_table(pa.table({"predicate": tag_queries(300, 1)}), tmp_path / "workload.parquet")
    texts = tag_queries(60, 2)
    queries = (vectors[np.random.default_rng(3).integers(0, 6000, 60)]
               + 0.1 * np.random.default_rng(4).normal(size=(60, DIM))).astype(np.float32)
    pq.write_table(pa.table({"query_id": pa.array(np.arange(60)), "vector": pa.array(list(queries), vector_type),
                             "predicate": texts}), tmp_path / "queries.parquet")
    cli.main(["build", "--items", str(tmp_path / "items.parquet"), "--output", str(tmp_path / "index"),
              "--workload", str(tmp_path / "workload.parquet"), "--min-partition-rows", "500",
              "--max-partition-rows", "3000"])
    cli.main(["query", "--index", str(tmp_path / "index"), "--queries", str(tmp_path / "queries.parquet"),
              "--output", str(tmp_path / "out"), "--k", "10"])
    found = pa.concat_tables([pq.read_table(f) for f in glob.glob(str(tmp_path / "out" / "results-*.parquet"))])
    got = {r["query_id"]: [n["id"] for n in r["neighbors"]] for r in found.to_pylist()}
    masks = masks_of(pa.table({"tags": pa.array(tags, pa.list_(pa.string()))}), texts)
    rows, _ = exact.search(vectors, queries, 10, "dot_product", [masks[t] for t in texts])
    assert sorted(got) == list(range(60))
    assert [len(got[q]) for q in range(60)] == [int((r >= 0).sum()) for r in rows]
    hits = sum(len(set(got[q]) & set(rows[q][rows[q] >= 0].tolist())) for q in range(60))
    assert hits / (rows >= 0).sum() >= 0.95


def test_the_peers_evaluator_filters_tags_as_beamvec_does():
    items = synthetic.make_tag_items(5000, 8, 1).drop_columns(["vector"])
    texts = synthetic.tag_predicates(200, 1) + ["tags CONTAINS ANY ('tag00001', 'tag00002')", "tags NOT CONTAINS 'tag00003'"]
    theirs, ours = pyarrow_evaluator(items)(texts), beamvec_evaluator(items)(texts)
    assert all((theirs[t] == ours[t]).all() for t in texts)
    assert sum(theirs[t].any() for t in texts) > 100
