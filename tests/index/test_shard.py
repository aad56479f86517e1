"""Shards: real ScaNN searchers, checked against the exact oracle."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from beamvec.index import exact
from beamvec.pipelines import synthetic
from beamvec.index.columns import masks_of
from beamvec.index.manifest import checksum
from beamvec.index.schema import validate_items
from beamvec.index.shard import Shard
from beamvec.index.shardfile import ShardFormatError
from beamvec.index.shardspec import Calibration, SearchParams, ShardConfig

DIM = 64
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5, 1.0)


@pytest.fixture(scope="module")
def data():
    items = validate_items(synthetic.make_items(50_000, DIM, seed=3))
    queries = synthetic.make_queries(100, DIM, seed=3)
    return items, queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)


@pytest.fixture(scope="module")
def shard(data):
    items, _ = data
    return Shard.build(items.table.column("id"), items.vectors, items.table.drop_columns(["vector"]), metric="dot_product")


def oracle(items, queries, predicates, k, metric="dot_product"):
    masks = masks_of(items.table, predicates)
    return exact.search(items.vectors, queries, k, metric, [masks[p] for p in predicates])


def test_config_is_chosen_from_size(shard):
    assert shard.config.spec() == "Tree224,AH2,Reorder100"
    assert ShardConfig.for_shape(4_000, 64).spec() == "Brute" and ShardConfig.for_shape(10_000, 64).spec() == "Tree100,AH2,Reorder100"
    assert 1 <= shard.calibration.leaves_to_search <= 224
    assert shard.calibration.recall >= 0.95


@pytest.mark.parametrize("spec", ["Brute", "Tree447,AH2,Reorder100", "Tree10,AH4,Reorder20"])
def test_spec_round_trips(spec):
    assert ShardConfig.parse(spec).spec() == spec
    assert ShardConfig.parse(spec.lower().replace(",", " , ")) == ShardConfig.parse(spec)


@pytest.mark.parametrize("spec", ["", "Tree", "Tree0,AH2,Reorder100", "IVF100,Flat", "Tree10,AH2"])
def test_bad_spec_is_rejected(spec):
    with pytest.raises(ValueError, match="bad shard spec"):
        ShardConfig.parse(spec)


@pytest.mark.parametrize("selectivity", SELECTIVITIES)
def test_recall_and_result_count_at_each_selectivity(data, shard, selectivity):
    items, queries = data
    predicates = [synthetic.selectivity_predicate(selectivity)] * len(queries)
    result = shard.search(queries, 10, predicates)
    truth, _ = oracle(items, queries, predicates, 10)
    found = np.where(result.rows >= 0, items.table.column("id").to_numpy()[np.maximum(result.rows, 0)], -1)
    recall = exact.recall(found, truth).mean()
    assert recall >= 0.95, f"recall@10 {recall:.3f} at selectivity {selectivity}"
    assert ((result.rows >= 0).sum(axis=1) == (truth >= 0).sum(axis=1)).all()


def test_mixed_batch_uses_both_strategies_and_keeps_the_guarantee(data, shard):
    items, queries = data
    predicates = [synthetic.selectivity_predicate(s) for s in SELECTIVITIES] * 20
    predicates += ["category = 'rock' AND year >= 2010", "price < 3.0 AND explicit", "year IS NULL"] * 10
    vectors = np.concatenate([queries, queries[:30]])
    result = shard.search(vectors, 10, predicates)
    truth, _ = oracle(items, vectors, predicates, 10)
    assert result.stats.prefiltered > 0 and result.stats.postfiltered > 0
    assert ((result.rows >= 0).sum(axis=1) == (truth >= 0).sum(axis=1)).all()
    ids = items.table.column("id").to_numpy()
    assert exact.recall(np.where(result.rows >= 0, ids[np.maximum(result.rows, 0)], -1), truth).mean() >= 0.95


def test_cost_ratio_moves_the_cut_over(data, shard):
    _, queries = data
    predicates = [synthetic.selectivity_predicate(0.1)] * len(queries)
    eager = shard.search(queries, 10, predicates, SearchParams(prefilter_cost_ratio=100.0)).stats
    lazy = shard.search(queries, 10, predicates, SearchParams(prefilter_cost_ratio=0.0)).stats
    assert eager.prefiltered == len(queries) and lazy.postfiltered + lazy.fallbacks == len(queries)


def test_no_matching_rows_gives_empty_results(data, shard):
    _, queries = data
    result = shard.search(queries[:3], 5, ["category = 'no-such-category'"] * 3)
    assert (result.rows == -1).all() and np.isneginf(result.keys).all()


@pytest.mark.parametrize("metric", ["cosine", "squared_l2"])
def test_other_metrics_match_the_oracle(data, metric):
    items, queries = data
    vectors = items.vectors[:30_000] * np.linspace(0.5, 2, 30_000, dtype=np.float32)[:, None]
    sub = validate_items(items.table.slice(0, 30_000))
    shard = Shard.build(sub.table.column("id"), vectors, sub.table.drop_columns(["vector"]), metric=metric)
    predicates = ["", "bucket < 100"] * 50
    result = shard.search(queries, 10, predicates)
    masks = masks_of(sub.table, predicates)
    truth, truth_scores = exact.search(vectors, queries, 10, metric, [masks[p] for p in predicates])
    assert exact.recall(result.rows, truth).mean() >= 0.95
    exact_rows = result.rows[:, 0] == truth[:, 0]
    np.testing.assert_allclose(exact.finish(result.keys, metric)[exact_rows, 0], truth_scores[exact_rows, 0], rtol=1e-3, atol=1e-3)


def test_unknown_column_fails_before_search(shard, data):
    _, queries = data
    with pytest.raises(ValueError, match="genre"):
        shard.search(queries[:2], 10, ["genre = 'rock'", None])


def test_same_input_gives_the_same_shard_to_the_byte_and_the_same_results(data, tmp_path):
    items, queries = data
    sub = validate_items(items.table.slice(0, 25_000))
    build = lambda: Shard.build(sub.table.column("id"), sub.vectors, sub.table.drop_columns(["vector"]))
    a, b = build(), build()
    assert not a.config.brute_force and a.calibration == b.calibration
    a.save(str(tmp_path / "a"))
    b.save(str(tmp_path / "b"))
    assert checksum(str(tmp_path / "a")) == checksum(str(tmp_path / "b"))  # ScaNN's tree and codebooks too
    predicates = ["", "bucket < 300", "category = 'pop'"] * 30
    ra, rb = a.search(queries[:90], 10, predicates), b.search(queries[:90], 10, predicates)
    np.testing.assert_array_equal(ra.rows, rb.rows)
    np.testing.assert_array_equal(ra.keys, rb.keys)


def test_save_load_round_trip(tmp_path, data, shard):
    _, queries = data
    shard.save(str(tmp_path / "s"))
    assert not [n for n in os.listdir(tmp_path / "s") if n.endswith(".pkl")]
    loaded = Shard.load(str(tmp_path / "s"))
    predicates = ["", "bucket < 10", "category IN ('jazz', 'pop') AND NOT explicit"] * 10
    a, b = shard.search(queries[:30], 10, predicates), loaded.search(queries[:30], 10, predicates)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.keys, b.keys)
    assert loaded.ids.equals(shard.ids) and loaded.config == shard.config and loaded.calibration == shard.calibration


def small_shard(tmp_path):
    rng = np.random.default_rng(0)
    shard = Shard.build(pa.array(["a", "b", "c"]), rng.standard_normal((3, 4)), pa.table({"x": [1, 2, 3]}))
    path = str(tmp_path / "small")
    shard.save(path)
    return path


def edit_header(path, **changes):
    with open(os.path.join(path, "shard.json")) as f:
        header = json.load(f)
    header.update(changes)
    with open(os.path.join(path, "shard.json"), "w") as f:
        json.dump(header, f)


@pytest.mark.parametrize("changes, message", [
    ({"version": 99}, "version 99"),
    ({"rows": 4}, "header says"),
    ({"dimension": 5}, "header says"),
    ({"metric": "hamming"}, "unknown metric"),
    ({"spec": "Tree"}, "bad header"),
])
def test_mismatched_header_fails_clearly(tmp_path, changes, message):
    path = small_shard(tmp_path)
    edit_header(path, **changes)
    with pytest.raises(ShardFormatError, match=message):
        Shard.load(path)


def test_corrupted_header_and_missing_files_fail_clearly(tmp_path):
    path = small_shard(tmp_path)
    with pytest.raises(ShardFormatError, match="metric 'dot_product', expected 'cosine'"):
        Shard.load(path, metric="cosine")
    with open(os.path.join(path, "shard.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ShardFormatError, match="not valid JSON"):
        Shard.load(path)
    path = small_shard(tmp_path / "again")
    os.remove(os.path.join(path, "rows.parquet"))
    with pytest.raises(ShardFormatError, match="rows.parquet is missing"):
        Shard.load(path)


def test_pickle_in_a_shard_is_refused(tmp_path):
    path = small_shard(tmp_path)
    shutil.copy(os.path.join(path, "shard.json"), os.path.join(path, "scann_docids.pkl"))
    with pytest.raises(ShardFormatError, match="pickle"):
        Shard.load(path)


def test_bad_build_input_is_rejected():
    with pytest.raises(ValueError, match="NaN or infinite"):
        Shard.build([1, 2], np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        Shard.build([1, 2], np.ones((3, 2)))
    with pytest.raises(ValueError, match="non-empty"):
        Shard.build([], np.ones((0, 2)))


def test_calibration_on_log_queries(data):
    """Log queries replace the shard's own rows as calibration queries (topped up with rows when few),
    change the calibration, and give the same shard every time."""
    items, _ = data
    sub = validate_items(items.table.slice(0, 10_000))
    log = synthetic.make_queries(300, DIM, seed=3).column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)

    def build(queries=None):
        return Shard.build(sub.table.column("id"), sub.vectors, sub.table.drop_columns(["vector"]),
                           calibration_queries=queries)

    own, logged, few = build(), build(log), build(log[:20])
    assert (own.calibration.queries, own.calibration.log_queries) == (128, 0)
    assert (logged.calibration.queries, logged.calibration.log_queries) == (128, 128)
    assert (few.calibration.queries, few.calibration.log_queries) == (128, 20)
    assert logged.calibration != own.calibration and logged.calibration.recall >= 0.97
    assert build(np.zeros((0, DIM), np.float32)).calibration == own.calibration  # no log query reaches it
    again = build(log)
    assert again.calibration == logged.calibration
    queries = log[-60:]
    np.testing.assert_array_equal(again.search(queries, 10).rows, logged.search(queries, 10).rows)
    # Recorded in the header; headers written before the field existed still load.
    assert logged.header()["calibration"]["log_queries"] == 128
    old = {k: v for k, v in own.calibration.to_json().items() if k != "log_queries"}
    assert Calibration.from_json(old) == own.calibration
    with pytest.raises(ValueError, match="calibration queries have shape"):
        build(log[:, :5])
