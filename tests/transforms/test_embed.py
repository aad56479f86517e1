"""Embed on the DirectRunner (Beam's RunInference with its TensorFlow handler, the real model), and
a text build + text query end to end through the command line."""

from __future__ import annotations

import glob

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec.index import Index, encoder
from beamvec.transforms import DEAD_LETTER_SCHEMA, Embed, ReadItems, WriteTables



def read(pattern: str) -> pa.Table:
    files = sorted(glob.glob(pattern))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def texts_file(path, reference) -> tuple[list[str], np.ndarray]:
    """The fixture's texts as items (id, text, group), with a null and an empty text added."""
    texts, vectors = reference
    rows = texts[:20] + [None] + texts[20:30] + [""] + texts[30:]
    pq.write_table(pa.table({"id": pa.array(range(len(rows)), pa.int64()), "text": pa.array(rows, pa.string()),
                             "group": pa.array([i % 3 for i in range(len(rows))], pa.int64())}), path)
    return rows, vectors


def embed(path, out, model: str, batch_size: int = 8) -> None:
    with beam.Pipeline() as p:
        found = p | ReadItems(str(path), embed_column="text") | Embed(model, "text", batch_size=batch_size)
        found.embedded | beam.Map(lambda b: b.table) | "Embedded" >> WriteTables(str(out / "embedded"))
        found.rejected | "Rejected" >> WriteTables(str(out / "rejected"), DEAD_LETTER_SCHEMA)


def test_embed_adds_the_models_vectors_and_sets_aside_null_and_empty_texts(tmp_path, minilm_reference):
    rows, want = texts_file(tmp_path / "items.parquet", minilm_reference)
    embed(tmp_path / "items.parquet", tmp_path, encoder.BUILTIN)
    got, rejected = read(str(tmp_path / "embedded-*.parquet")), read(str(tmp_path / "rejected-*.parquet"))
    assert sorted(rejected.column("row").to_pylist()) == [20, 31]
    assert set(rejected.column("reason").to_pylist()) == {"text is null", "text is empty"}
    assert got.num_rows + rejected.num_rows == len(rows)
    assert got.column_names == ["id", "text", "group", "vector"]
    got = got.sort_by("id")
    assert got.column("text").to_pylist() == [t for t in rows if t]
    assert got.column("group").to_pylist() == [i % 3 for i, t in enumerate(rows) if t]
    vectors = got.column("vector").combine_chunks().values.to_numpy().reshape(-1, 384)
    cosines = (vectors * want).sum(1) / np.linalg.norm(want, axis=1)  # the model's vectors have unit length
    assert cosines.min() >= 0.9999


def test_embed_runs_a_users_savedmodel(tmp_path, minilm_reference, save_text_model):
    save_text_model(str(tmp_path / "user"))
    texts_file(tmp_path / "items.parquet", minilm_reference)
    embed(tmp_path / "items.parquet", tmp_path, str(tmp_path / "user"), batch_size=4)
    got = read(str(tmp_path / "embedded-*.parquet")).sort_by("id")
    vectors = got.column("vector").combine_chunks().values.to_numpy().reshape(-1, 8)
    direct = encoder.load(str(tmp_path / "user")).embed(got.column("text").to_pylist())
    want = direct / np.linalg.norm(direct, axis=1, keepdims=True)  # Embed normalises by default
    assert np.allclose(vectors, want, atol=1e-6)


def test_text_build_and_text_query_end_to_end_and_a_different_model_is_refused(tmp_path, minilm_reference,
                                                                                 save_text_model):
    from beamvec.pipelines import cli

    rows, _ = texts_file(tmp_path / "items.parquet", minilm_reference)
    assert cli.main(["--verbose", "build", "--items", str(tmp_path / "items.parquet"), "--output",
                     str(tmp_path / "index"), "--embed-column", "text", "--partitioner", "hash",
                     "--min-partition-rows", "10", "--max-partition-rows", "20", "--shard-spec", "Brute"]) == 0
    index = Index.open(str(tmp_path / "index"))
    assert index.manifest.model == encoder.builtin_identity().to_json()
    assert index.manifest.num_rows == len(rows) - 2
    queries = [rows[3], rows[25], "solve a linear system of equations"]
    pq.write_table(pa.table({"query_id": [0, 1, 2], "text": queries, "predicate": [None, "group = 1", None]}),
                   tmp_path / "queries.parquet")
    assert cli.main(["--verbose", "query", "--index", str(tmp_path / "index"), "--queries",
                     str(tmp_path / "queries.parquet"), "--output", str(tmp_path / "out"), "--k", "5",
                     "--query-text-column", "text"]) == 0
    found = {r["query_id"]: r["neighbors"] for r in read(str(tmp_path / "out" / "results-*.parquet")).to_pylist()}
    # The exact answer over the index's own rows, for the same texts embedded in-process.
    items = pq.read_table(tmp_path / "items.parquet").to_pylist()
    kept = [r for r in items if r["text"]]
    model = encoder.load(encoder.BUILTIN)
    item_vectors, query_vectors = model.embed([r["text"] for r in kept]), model.embed(queries)
    for q, predicate in enumerate([None, 1, None]):
        allowed = [i for i, r in enumerate(kept) if predicate is None or r["group"] == predicate]
        scores = item_vectors[allowed] @ query_vectors[q]
        want = [kept[allowed[i]]["id"] for i in np.argsort(-scores, kind="stable")[:5]]
        assert [n["id"] for n in found[q]] == want
    assert found[0][0]["id"] == 3 and found[0][0]["score"] == pytest.approx(1, abs=1e-5)
    save_text_model(str(tmp_path / "other"))
    with pytest.raises(SystemExit, match="was built with model all-MiniLM-L6-v2.*refused"):
        cli.main(["--verbose", "query", "--index", str(tmp_path / "index"), "--queries", str(tmp_path / "queries.parquet"),
                  "--output", str(tmp_path / "out2"), "--query-text-column", "text", "--model", str(tmp_path / "other")])


def test_embed_command_reconciles_its_counts_and_export_writes_a_loadable_model(tmp_path, capsys, minilm_reference):
    from beamvec.pipelines import cli

    rows, _ = texts_file(tmp_path / "items.parquet", minilm_reference)
    assert cli.main(["--verbose", "embed", "--input", str(tmp_path / "items.parquet"), "--column", "text",
                     "--output", str(tmp_path / "out"), "--batch-size", "16"]) == 0
    assert f"rows: read {len(rows)} = embedded {len(rows) - 2} + rejected 2" in capsys.readouterr().out
    assert read(str(tmp_path / "out" / "embedded-*.parquet")).num_rows == len(rows) - 2
    assert cli.main(["--verbose", "model", "export", "all-MiniLM-L6-v2", "--output", str(tmp_path / "m")]) == 0
    assert encoder.load(str(tmp_path / "m")).identity == encoder.builtin_identity()
    with pytest.raises(SystemExit, match="the built-in model is 'all-MiniLM-L6-v2'"):
        cli.main(["--verbose", "model", "export", "bert", "--output", str(tmp_path / "x")])


def test_embed_runs_a_keras_model_on_a_feature_column(tmp_path):
    import keras

    inputs = keras.Input((4,), dtype="float32")
    keras.Model(inputs, keras.layers.Dense(3, use_bias=False)(inputs)).save(tmp_path / "features.keras")
    features = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    rows = [list(map(float, f)) for f in features]
    rows[7] = None
    rows[20] = rows[20] + [1.0]  # five features: the model fails on this row's whole batch
    pq.write_table(pa.table({"id": pa.array(range(30), pa.int64()), "features": pa.array(rows, pa.list_(pa.float32()))}),
                   tmp_path / "items.parquet")
    with beam.Pipeline() as p:
        found = (p | ReadItems(str(tmp_path / "items.parquet"), embed_column="features")
                 | Embed(str(tmp_path / "features.keras"), "features", normalize=False, batch_size=8))
        found.embedded | beam.Map(lambda b: b.table) | "Embedded" >> WriteTables(str(tmp_path / "embedded"))
        found.rejected | "Rejected" >> WriteTables(str(tmp_path / "rejected"), DEAD_LETTER_SCHEMA)
    got = read(str(tmp_path / "embedded-*.parquet")).sort_by("id")
    rejected = read(str(tmp_path / "rejected-*.parquet")).sort_by("row")
    failed = [r["row"] for r in rejected.to_pylist() if r["reason"].startswith("the model failed")]
    assert [r["reason"] for r in rejected.to_pylist() if r["row"] == 7] == ["features is null"]
    assert 20 in failed and len(failed) == 8  # the batch of 8 that held row 20
    keep = [i for i in range(30) if i != 7 and i not in failed]
    assert got.column("id").to_pylist() == keep and got.num_rows + rejected.num_rows == 30
    want = encoder.load(str(tmp_path / "features.keras")).embed(features[keep])
    assert np.allclose(got.column("vector").combine_chunks().values.to_numpy().reshape(-1, 3), want, atol=1e-6)
