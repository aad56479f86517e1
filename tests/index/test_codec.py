"""Codecs: specs and saved forms round-trip, error bounds hold, shards and indexes searched through
codes reach the exact answer's neighbours, and broken codec files are refused."""

import json
import os
import pathlib

import numpy as np
import pyarrow as pa
import pytest

from beamvec.index import Index, autocodec, build_index, exact, fit_plan, versions
from beamvec.index.codec import Codec, CodecError, CodecSpec, parse_codec
from beamvec.index.codes import CodeMatrix
from beamvec.index.manifest import ManifestError
from beamvec.index.querylog import QueryLog
from beamvec.index.shard import Shard
from beamvec.index.shardfile import ShardFormatError
from beamvec.index.shardspec import ShardConfig
from beamvec.pipelines import synthetic

DIM = 32
SPECS = ["F32", "F16", "SQ8", "PQ8", "PCA16", "PCA8,SQ8", "OOD8,SQ8", "PCA16,PQ4,Rerank", "SQ8,Rerank"]


def low_rank(n, dimension=DIM, rank=8, seed=0):
    """Vectors with a decaying spectrum, as real embeddings have: most variance in ``rank`` directions."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dimension, dimension)))[0]
    scales = np.concatenate([np.linspace(3, 1, rank), np.full(dimension - rank, 0.1)])
    return ((rng.standard_normal((n, dimension)) * scales) @ basis.T).astype(np.float32)


@pytest.fixture(scope="module")
def sample():
    return low_rank(4000)


@pytest.mark.parametrize("text", SPECS)
def test_each_spec_round_trips_and_has_one_spelling(text):
    spec = CodecSpec.parse(text)
    assert spec.text() == text
    assert CodecSpec.parse(text.lower().replace(",", " , ")) == spec


@pytest.mark.parametrize("text, message", [
    ("SQ4", "unknown part 'SQ4'"), ("SQ8,PCA16", "out of place"), ("SQ8,F16", "out of place"),
    ("PCA0", "positive number"), ("Rerank,SQ8", "out of place"), ("", "unknown part ''"),
])
def test_a_bad_spec_is_refused_naming_the_part(text, message):
    with pytest.raises(CodecError, match=message):
        CodecSpec.parse(text)


@pytest.mark.parametrize("text, metric, message", [
    ("PCA32", "dot_product", "must reduce the dimension"), ("PQ5", "dot_product", "divide the code dimension 32"),
    ("OOD8", "squared_l2", "use PCA with squared_l2"), ("OOD8", "dot_product", "fitted on query vectors"),
])
def test_a_spec_that_cannot_apply_is_refused_at_fit(sample, text, metric, message):
    with pytest.raises(CodecError, match=message):
        Codec.fit(text, sample, metric)


def test_none_is_no_codec():
    assert parse_codec(None) is None and parse_codec(" None ") is None and parse_codec("sq8").text() == "SQ8"


@pytest.mark.parametrize("text, metric", [(t, m) for t in SPECS for m in ("dot_product", "cosine", "squared_l2")
                                          if not (t.startswith("OOD") and m == "squared_l2")])  # refused (above)
def test_the_saved_form_round_trips_and_encodes_the_same(sample, tmp_path, text, metric):
    codec = Codec.fit(text, sample, metric, queries=sample[:200] * 2)
    codec.save(str(tmp_path / "codec"))
    assert not list(tmp_path.glob("codec/*.pkl"))
    loaded = Codec.load(str(tmp_path / "codec"))
    assert loaded.checksum == codec.checksum and loaded.spec == codec.spec and loaded.metric == metric
    codes = codec.encode(sample)
    assert np.array_equal(loaded.encode(sample), codes)
    assert codes.nbytes == len(sample) * codec.bytes_per_vector
    assert codec.decode(codes).shape == (len(sample), codec.code_dimension)


def test_fitting_is_deterministic(sample):
    queries = sample[:300] + 1
    for text in ("PQ8", "OOD8,SQ8", "PCA8,SQ8"):
        assert Codec.fit(text, sample, queries=queries, seed=3).checksum == \
            Codec.fit(text, sample.copy(), queries=queries.copy(), seed=3).checksum


def test_sq8_error_is_within_a_step_of_each_dimensions_range(sample):
    codec = Codec.fit("SQ8", sample)
    error = np.abs(codec.decode(codec.encode(sample)) - sample)
    span = sample.max(axis=0) - sample.min(axis=0)
    assert (error <= span / 255 + 1e-6).all()
    assert (error.max(axis=0) <= span / 510 * 1.001 + 1e-6).all()  # rounding: half a step


def test_f16_and_f32_errors(sample):
    f16 = Codec.fit("F16", sample)
    assert np.allclose(f16.decode(f16.encode(sample)), sample, rtol=2 ** -10, atol=1e-4)
    f32 = Codec.fit("F32", sample)
    assert np.array_equal(f32.decode(f32.encode(sample)), sample)


def test_pq_codes_are_each_sub_spaces_nearest_centroid(sample):
    codec = Codec.fit("PQ8", sample)
    codes = codec.encode(sample[:100])
    centroids = codec.arrays["centroids"]
    for j in range(8):
        part = sample[:100, j * 4:(j + 1) * 4]
        distances = ((part[:, None, :] - centroids[j][None]) ** 2).sum(axis=2)
        chosen = distances[np.arange(100), codes[:, j]]
        assert np.allclose(chosen, distances.min(axis=1), atol=1e-5)


def test_pca_keeps_the_vectors_of_its_subspace_and_ood_is_pca_for_queries_like_the_items():
    x = low_rank(3000, rank=8)
    x[:, :] = x @ np.linalg.qr(x[:8].T)[0] @ np.linalg.qr(x[:8].T)[0].T  # exactly rank 8
    pca = Codec.fit("PCA8", x)
    q = x[:50] + 0.5
    assert np.allclose(pca.reduce_queries(q) @ pca.reduce(x).T, q @ x.T, atol=1e-3 * np.abs(q @ x.T).max())
    ood = Codec.fit("OOD8", x, queries=x)
    assert np.allclose(ood.reduce_queries(q) @ ood.reduce(x).T, q @ x.T, atol=1e-3 * np.abs(q @ x.T).max())


def differing_queries(items, n, seed=1):
    """Queries from another distribution than the items: items seen through a fixed linear map that
    stresses directions the items barely vary in (as text queries against image vectors)."""
    dimension = items.shape[1]
    basis = np.linalg.qr(np.random.default_rng(99).standard_normal((dimension, dimension)))[0]  # one map for all
    warp = basis @ np.diag(np.geomspace(4, 0.25, dimension)) @ basis.T
    rng = np.random.default_rng(seed)
    return (items[rng.choice(len(items), n, replace=False)] @ warp + 0.3 * rng.standard_normal((n, dimension))
            ).astype(np.float32)


def test_the_out_of_distribution_projection_beats_pca_on_queries_that_differ_from_the_items():
    items = low_rank(6000, rank=12, seed=4)
    fit_queries, queries = differing_queries(items, 1000, seed=5), differing_queries(items, 300, seed=6)
    truth, _ = exact.search(items, queries, 10, "dot_product")
    recall = {}
    for text in ("PCA8", "OOD8"):
        codec = Codec.fit(text, items, queries=fit_queries)
        found, _ = exact.search_rows(codec.reduce(items), codec.reduce_queries(queries), 10, "dot_product")
        recall[text] = exact.recall(found, truth).mean()
    assert recall["OOD8"] > recall["PCA8"] + 0.02, recall


@pytest.mark.parametrize("text", ["F32", "F16", "SQ8", "PQ8", "PCA8,SQ8"])
@pytest.mark.parametrize("metric", ["dot_product", "squared_l2"])
def test_code_matrix_scores_as_its_decoded_vectors(sample, text, metric):
    codec = Codec.fit(text, sample, metric)
    matrix = CodeMatrix(codec.encode(sample), codec)
    decoded = codec.decode(matrix.codes)
    queries = codec.reduce_queries(sample[:40] * 1.5)
    assert np.allclose(matrix.dots(queries), queries @ decoded.T, rtol=1e-4, atol=1e-3)
    rows = np.random.default_rng(0).integers(-1, len(sample), (40, 30))
    want = np.where(rows >= 0, np.take_along_axis(queries @ decoded.T, np.maximum(rows, 0), axis=1), -np.inf)
    assert np.allclose(matrix.rescore(queries, rows), want, rtol=1e-4, atol=1e-3)
    assert np.allclose(matrix.norms(), (decoded ** 2).sum(axis=1), rtol=1e-4)
    assert np.array_equal(matrix[5:9].codes, matrix.codes[5:9]) and np.allclose(matrix[[3, 1]], decoded[[3, 1]])


# --- Shards and indexes with a codec, against the exact answer ---

@pytest.fixture(scope="module")
def catalog():
    items = synthetic.make_items(12_000, DIM, seed=21)
    vectors = items.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    predicates = synthetic.random_predicates(400, seed=22)
    queries = synthetic.make_queries(400, DIM, seed=21, predicates=predicates)
    qv = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    return items, vectors, predicates, qv


def recall_of(index_path, catalog, k=10):
    from beamvec.index.columns import masks_of

    items, vectors, predicates, qv = catalog
    masks = masks_of(items.drop_columns(["vector"]), predicates)
    truth, _ = exact.search(vectors, qv, k, "dot_product", [masks[p] for p in predicates])
    found, _ = Index.open(index_path).search(qv, predicates, k)
    return exact.recall(found, truth)  # ids are row numbers


@pytest.mark.parametrize("text, floor", [("F16", 0.97), ("SQ8", 0.9), ("SQ8,Rerank", 0.97), ("PQ16,Rerank", 0.9),
                                         ("PCA16,SQ8,Rerank", 0.6)])
def test_an_index_with_a_codec_finds_the_exact_neighbours(tmp_path, catalog, text, floor):
    items, vectors, predicates, _ = catalog
    attributes = items.drop_columns(["vector", "id"])
    plan = fit_plan("workload", attributes, vectors, predicates, 3000, 6000)
    path = str(tmp_path / "index")
    manifest = build_index(path, items.column("id").combine_chunks(), vectors, attributes, plan=plan,
                           config="Tree30,AH2,Reorder100", codec=text)
    assert manifest.codec["spec"] == text and Index.open(path).manifest.codec == manifest.codec
    recall = recall_of(path, catalog)
    assert recall.mean() >= floor, recall.mean()
    shards = os.path.join(versions.resolve(path), "shards")
    assert any(f.endswith(".full.npy") for f in os.listdir(shards)) == text.endswith("Rerank")


def test_codes_cost_fewer_bytes_and_the_same_build_gives_the_same_index(tmp_path, catalog):
    items, vectors, predicates, qv = catalog
    ids, attributes = items.column("id").combine_chunks(), items.drop_columns(["vector", "id"])
    sizes, answers = {}, {}
    for name, text in (("none", None), ("sq8", "SQ8"), ("sq8-again", "SQ8")):
        path = tmp_path / name
        build_index(str(path), ids, vectors, attributes, config="Tree30,AH2,Reorder100", codec=text)
        sizes[name] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        answers[name] = Index.open(str(path)).search(qv, predicates, 10)
    assert sizes["sq8"] < 0.45 * sizes["none"], sizes
    manifest = [json.loads(open(os.path.join(versions.resolve(str(tmp_path / name)), "manifest.json")).read())
                for name in ("sq8", "sq8-again")]
    assert manifest[0] == manifest[1]
    assert np.array_equal(answers["sq8"][0], answers["sq8-again"][0])
    assert np.array_equal(answers["sq8"][1], answers["sq8-again"][1], equal_nan=True)


def test_a_small_shard_with_a_codec_needs_no_scann_and_is_exact_over_its_codes(catalog):
    _, vectors, _, qv = catalog
    codec = Codec.fit("F32", vectors)
    shard = Shard.build(np.arange(3000), vectors[:3000], codec=codec)
    assert shard.config == ShardConfig() and shard._searcher is None
    rows = shard.search(qv, 10).rows
    truth, _ = exact.search(vectors[:3000], qv, 10, "dot_product")
    assert np.array_equal(shard.ids_of(rows).to_numpy().reshape(rows.shape), truth)


def test_a_shard_with_a_codec_round_trips_and_refuses_another_codec(tmp_path, catalog):
    _, vectors, _, qv = catalog
    codec = Codec.fit("SQ8,Rerank", vectors)
    shard = Shard.build(np.arange(len(vectors)), vectors, codec=codec, config="Tree30,AH2,Reorder100")
    shard.save(str(tmp_path / "s"))
    assert not (tmp_path / "s" / "dataset.npy").exists() and (tmp_path / "s.full.npy").exists()
    loaded = Shard.load(str(tmp_path / "s"), codec=codec)
    a, b = shard.search(qv, 10), loaded.search(qv, 10)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.keys, b.keys)
    with pytest.raises(ShardFormatError, match="encoded by codec 'SQ8,Rerank'; open it through its index"):
        Shard.load(str(tmp_path / "s"))
    with pytest.raises(ShardFormatError, match="not by the codec given"):
        Shard.load(str(tmp_path / "s"), codec=Codec.fit("SQ8,Rerank", vectors[:500]))
    with pytest.raises(ValueError, match="re-ranks with the full-precision vectors"):
        Shard.build(np.arange(10), None, codec=codec, codes=codec.encode(vectors[:10]))


def test_a_corrupted_rerank_file_is_refused_on_first_use(tmp_path, catalog):
    _, vectors, _, qv = catalog
    codec = Codec.fit("SQ8,Rerank", vectors)
    Shard.build(np.arange(len(vectors)), vectors, codec=codec).save(str(tmp_path / "s"))
    full = tmp_path / "s.full.npy"
    data = bytearray(full.read_bytes())
    data[-5] ^= 0xFF
    full.write_bytes(bytes(data))
    loaded = Shard.load(str(tmp_path / "s"), codec=codec)
    with pytest.raises(ShardFormatError, match="s.full.npy: does not match its checksum"):
        loaded.search(qv, 10)


# --- Broken codec files ---

@pytest.fixture
def saved_index(tmp_path, catalog):
    items, vectors, _, _ = catalog
    path = tmp_path / "index"
    build_index(str(path), items.column("id").combine_chunks(), vectors[:, :], items.drop_columns(["vector", "id"]),
                codec="PCA16,SQ8")
    return pathlib.Path(versions.resolve(str(path)))  # the version's directory: opens as an index of its own


def test_a_corrupted_codec_array_is_refused_naming_it(saved_index):
    array = saved_index / "codec" / "data_projection.npy"
    data = bytearray(array.read_bytes())
    data[-1] ^= 0x01
    array.write_bytes(bytes(data))
    with pytest.raises(CodecError, match="data_projection.npy does not match its checksum"):
        Codec.load(str(saved_index / "codec"))
    with pytest.raises(CodecError, match="data_projection.npy does not match its checksum"):
        Index.open(str(saved_index)).search(np.zeros((1, DIM), np.float32))


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "codec.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "codec.json").unlink(), "no codec.json"),
    (lambda p: (p / "step.npy").unlink(), "step.npy"),
    (lambda p: (p / "codec.json").write_text(json.dumps({"format": "beamvec.codec", "version": 9})), "version 1"),
])
def test_a_broken_codec_directory_is_refused(saved_index, damage, message):
    damage(saved_index / "codec")
    with pytest.raises(CodecError, match=message):
        Codec.load(str(saved_index / "codec"))


def test_a_codec_swapped_for_another_is_refused_by_the_manifest(saved_index, catalog):
    _, vectors, _, _ = catalog
    Codec.fit("PCA16,SQ8", vectors[:1000]).save(str(saved_index / "codec"))
    with pytest.raises(ManifestError, match="is not the one the manifest names"):
        Index.open(str(saved_index)).search(np.zeros((1, DIM), np.float32))


def test_a_manifest_codec_path_outside_the_index_is_refused(saved_index):
    manifest = json.loads((saved_index / "manifest.json").read_text())
    manifest["codec"]["path"] = "../elsewhere"
    (saved_index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="plain relative path"):
        Index.open(str(saved_index))


# --- auto ---

def test_auto_picks_the_smallest_codec_meeting_the_target_and_says_when_none_does(catalog):
    items, vectors, predicates, qv = catalog
    attributes = items.drop_columns(["vector"])
    heldout = QueryLog(predicates[:200], qv[:200])
    codec, trials = autocodec.choose(vectors, attributes, "dot_product", 0.9, 64, heldout=heldout)
    assert trials[-1].spec == codec.spec.text() and min(trials[-1].recall, trials[-1].selective) >= 0.9
    assert all(min(t.recall, t.selective) < 0.9 for t in trials[:-1])
    assert [t.bytes_per_vector for t in trials] == sorted(t.bytes_per_vector for t in trials)
    assert all(t.bytes_per_vector <= 64 for t in trials)
    with pytest.raises(CodecError, match="no codec of at most 4 bytes a vector reaches recall@10 0.99"):
        autocodec.choose(vectors, attributes, "dot_product", 0.99, 4, heldout=heldout)
    assert pa.types.is_integer(attributes.column("id").type)
