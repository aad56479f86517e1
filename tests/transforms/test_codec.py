"""FitCodec and Encode in real pipelines, and BuildIndex with a codec on the DirectRunner and the
PortableRunner: the same codec, codes, index and answers as the core computes, counts that reconcile."""

import glob
import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import Index, exact, versions
from beamvec.index.codec import Codec
from beamvec.index.columns import masks_of
from beamvec.index.hashing import smallest_hashes
from beamvec.index.schema import validate_items
from beamvec.pipelines import jobs, synthetic
from beamvec.pipelines.demo import _with_bad_rows
from beamvec.transforms import BuildSettings, Encode, FitCodec, WriteTables
from beamvec.transforms.codec import CODES, codes_of

DIM = 16


def read(pattern):
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(pattern))])


def test_fit_codec_then_encode_gives_the_cores_codec_and_codes_and_dead_letters_the_rest(tmp_path):
    raw = _with_bad_rows(synthetic.make_items(3000, DIM, seed=2))
    with beam.Pipeline() as p:
        tables = p | beam.Create([raw.slice(0, 1500), raw.slice(1500)])
        codec = tables | "Fit" >> FitCodec("PCA8,SQ8", sample_rows=1000)
        _ = codec | beam.Map(lambda c: c.save(str(tmp_path / "codec")))
        encoded = tables | "Encode" >> Encode(codec)
        encoded.encoded | beam.Map(lambda block: block.table) | "Codes" >> WriteTables(str(tmp_path / "encoded"))
        encoded.rejected | "Rejected" >> WriteTables(str(tmp_path / "rejected"))
    # The core's fit on the same sample: the 1000 smallest id hashes, then the valid rows among them.
    named = raw.filter(pc.is_valid(raw.column("id")))
    sample = validate_items(named.take(pa.array(smallest_hashes(named.column("id").combine_chunks(), 1000))))
    want = Codec.fit("PCA8,SQ8", sample.vectors)
    got = Codec.load(str(tmp_path / "codec"))
    assert got.checksum == want.checksum
    table, rejected = read(f"{tmp_path}/encoded-*.parquet"), read(f"{tmp_path}/rejected-*.parquet")
    assert table.num_rows + rejected.num_rows == raw.num_rows and rejected.num_rows > 0
    assert "vector" not in table.column_names
    valid = validate_items(raw)
    by_id = dict(zip(valid.table.column("id").to_pylist(), want.encode(valid.vectors)))
    codes = codes_of(table.column(CODES), got)
    assert all(np.array_equal(c, by_id[i]) for i, c in zip(table.column("id").to_pylist(), codes))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec-jobs")
    items = synthetic.make_items(6000, DIM, seed=31)
    raw = _with_bad_rows(items)
    pq.write_table(raw.slice(0, 3000), root / "items-0.parquet")
    pq.write_table(raw.slice(3000), root / "items-1.parquet")
    predicates = synthetic.random_predicates(300, seed=31)
    pq.write_table(synthetic.make_queries(300, DIM, seed=31, predicates=predicates), root / "queries.parquet")
    pq.write_table(synthetic.make_queries(600, DIM, seed=31, predicates=synthetic.random_predicates(600, seed=32)),
                   root / "workload.parquet")
    return root, items


def build_and_query(root, name, args, codec):
    # A small tree per shard, so the codes are searched through ScaNN's candidates too.
    settings = BuildSettings("workload", min_partition_rows=800, max_partition_rows=2500,
                             shard_spec="Tree8,AH2,Reorder40", codec=codec)
    index, out = str(root / f"index-{name}"), str(root / f"out-{name}")
    counts = jobs.build(str(root / "items-*.parquet"), index, PipelineOptions(args), str(root / "workload.parquet"),
                        settings)
    jobs.query(index, str(root / "queries.parquet"), out, PipelineOptions(args), k=10)
    results = {r["query_id"]: [(n["id"], n["score"]) for n in r["neighbors"]]
               for r in read(f"{out}/results-*.parquet").to_pylist()}
    return index, counts, results


@pytest.fixture(scope="module")
def direct(data):
    return build_and_query(data[0], "direct", [], "SQ8,Rerank")


def test_a_beam_build_with_a_codec_reconciles_and_finds_the_exact_neighbours(data, direct):
    root, items = data
    index, counts, results = direct
    manifest = Index.open(index).manifest
    assert manifest.codec["spec"] == "SQ8,Rerank"
    rejected = read(jobs.dead_letters(index))
    assert counts["items_read"] == counts["items_indexed"] + rejected.num_rows == manifest.num_rows + rejected.num_rows
    queries = pq.read_table(root / "queries.parquet")
    valid = validate_items(items)
    predicates = queries.column("predicate").to_pylist()
    masks = masks_of(valid.table, predicates)
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    truth, _ = exact.search(valid.vectors, vectors, 10, "dot_product", [masks[p] for p in predicates])
    found = np.array([([i for i, _ in results[q]] + [-1] * 10)[:10] for q in queries.column("query_id").to_pylist()])
    assert exact.recall(found, truth).mean() >= 0.95  # ids are row numbers
    assert manifest.heldout_recall["queries"] > 0 and manifest.heldout_recall["mean"] >= 0.9


def test_the_same_codec_index_and_answers_on_the_portable_runner(data, direct, portable_options):
    index, _, results = build_and_query(data[0], "portable", portable_options, "SQ8,Rerank")
    want = json.loads(open(f"{versions.resolve(direct[0])}/manifest.json").read())
    assert json.loads(open(f"{versions.resolve(index)}/manifest.json").read()) == want
    assert results == direct[2]


def test_a_pca_codec_in_the_pipeline_answers_as_the_same_index_does_in_process(data):
    index, _, results = build_and_query(data[0], "pca", [], "PCA8,SQ8")
    queries = pq.read_table(data[0] / "queries.parquet")
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    ids, scores = Index.open(index).search(vectors, queries.column("predicate").to_pylist(), 10)
    for q, row, score in zip(queries.column("query_id").to_pylist(), ids, scores):
        assert results[q] == [(int(i), float(s)) for i, s in zip(row, score) if i >= 0]
