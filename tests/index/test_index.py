"""Index: manifest, routing by partition description, merge of per-partition top-k."""

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from beamvec.index import Index, ManifestError, build_index, exact
from beamvec.pipelines import synthetic
from beamvec.index.columns import masks_of
from beamvec.index.manifest import check_relative_path
from beamvec.index.plan import AttributePlan
from beamvec.index.predicate import PredicateError
from beamvec.index.parser import parse
from beamvec.index.schema import validate_items

DIM = 32


@pytest.fixture(scope="module")
def items():
    return validate_items(synthetic.make_items(30_000, DIM, seed=5, ids="str"))


@pytest.fixture(scope="module")
def queries():
    table = synthetic.make_queries(400, DIM, seed=5)
    return table.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM), table.column("predicate").to_pylist()


def by_category():
    """Partitions: one per popular category, one for the rest (nulls included)."""
    parts = ["category = 'rock'", "category = 'pop'", "category NOT IN ('rock', 'pop')", "category IS NULL"]
    return AttributePlan("category", [parse(p) for p in parts])


def truth_ids(items, vectors, predicates, k=10):
    masks = masks_of(items.table, predicates)
    rows, scores = exact.search(items.vectors, vectors, k, "dot_product", [masks[p] for p in predicates])
    ids = np.asarray(items.table.column("id").to_pylist() + [None], dtype=object)
    return ids[rows], scores


def recall(found, truth):
    return np.mean([len({x for x in t if x} & set(f)) / max(1, len({x for x in t if x})) for f, t in zip(found, truth)])


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory, items):
    path = str(tmp_path_factory.mktemp("idx") / "partitioned")
    build_index(path, items.table.column("id").combine_chunks(), items.vectors,
                items.table.drop_columns(["vector"]), plan=by_category())
    return path


def test_partitioned_index_matches_the_oracle(partitioned, items, queries):
    vectors, predicates = queries
    index = Index.open(partitioned)
    ids, scores = index.search(vectors, predicates, 10)
    want, want_scores = truth_ids(items, vectors, predicates)
    assert ids.dtype == object and ids.shape == (len(vectors), 10)
    assert recall(ids, want) >= 0.95
    assert ((ids != None).sum(axis=1) == (want != None).sum(axis=1)).all()  # noqa: E711
    assert np.isnan(scores[ids == None]).all() and not np.isnan(scores[ids != None]).any()  # noqa: E711
    # Scores come back best first.
    finite = np.where(np.isnan(scores), -1e9, scores)
    assert (np.diff(finite, axis=1) <= 1e-6).all()


def test_routing_skips_partitions_that_cannot_match(partitioned, queries):
    index = Index.open(partitioned)
    groups = {parse(text): np.array([i]) for i, text in enumerate(["category = 'rock'", "category = 'jazz'", "", "year > 2000"])}
    routes = index.plan.route(groups, np.zeros((4, DIM), np.float32))
    reached = [[q for q, members in enumerate(routes) if i in members] for i in range(4)]
    assert reached == [[0], [2], [0, 1, 2, 3], [0, 1, 2, 3]]
    vectors, predicates = queries
    index.search(vectors, predicates, 10)
    assert index.partitions_searched < 3 * len(vectors)
    assert len(index.manifest.partitions) == 3  # the empty null partition has no shard


def test_single_partition_int_ids_pad_with_minus_one(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    build_index(str(tmp_path), pa.array(np.arange(100, 150)), vectors, pa.table({"x": np.arange(50)}))
    ids, scores = Index.open(str(tmp_path)).search(vectors[:2], ["x < 3", "x >= 0"], k=5)
    assert ids.dtype == np.int64
    assert sorted(ids[0, :3]) == [100, 101, 102] and (ids[0, 3:] == -1).all() and np.isnan(scores[0, 3:]).all()
    assert ids[1, 0] == 101 or ids[1, 0] == 100 + int(np.argmax(vectors @ vectors[1]))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_reopened_index_gives_identical_results_with_any_number_of_workers(partitioned, queries, workers):
    vectors, predicates = queries
    a = Index.open(partitioned, workers=1).search(vectors, predicates, 10)
    b = Index.open(partitioned, workers=workers).search(vectors, predicates, 10)
    assert (a[0] == b[0]).all()
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("bad", ["../outside", "shards/../../x", "/abs/path", "gs://bucket/x", "", "a//b", "./a", "C:\\x"])
def test_shard_paths_that_escape_the_index_are_rejected(tmp_path, bad, republish):
    with pytest.raises(ManifestError, match="plain relative path"):
        check_relative_path(bad)
    build_index(str(tmp_path), [1, 2], np.eye(2, dtype=np.float32))
    republish(tmp_path, lambda m: m["partitions"][0].update(path=bad))
    with pytest.raises(ManifestError, match="plain relative path"):
        Index.open(str(tmp_path))


def test_missing_or_broken_manifest_and_tampered_shard_fail_clearly(tmp_path, republish):
    with pytest.raises(ManifestError, match="no published version"):
        Index.open(str(tmp_path))
    build_index(str(tmp_path), [1, 2], np.eye(2, dtype=np.float32))
    republish(tmp_path, lambda m: m.update(version=7))
    with pytest.raises(ManifestError, match="version 7"):
        Index.open(str(tmp_path))
    build_index(str(tmp_path), [1, 2], np.eye(2, dtype=np.float32))
    with open(os.path.join(republish(tmp_path), "shards", "p00000", "rows.parquet"), "ab") as f:
        f.write(b"x")
    with pytest.raises(ManifestError, match="checksum"):
        Index.open(str(tmp_path)).search(np.eye(2, dtype=np.float32), k=1)


def test_wrong_query_dimension_is_a_clear_error(tmp_path):
    build_index(str(tmp_path), [1, 2], np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="dimension 2"):
        Index.open(str(tmp_path)).search(np.ones((1, 3), np.float32))


def test_a_predicate_on_a_missing_column_or_of_the_wrong_type_is_rejected_every_time(partitioned, queries):
    index = Index.open(partitioned)
    vectors = queries[0][:2]
    index.search(vectors, ["category = 'rock'", None], k=3)  # checked once, then remembered as valid
    index.search(vectors, ["category = 'rock'", None], k=3)
    for _ in range(2):  # an invalid one is never remembered
        with pytest.raises(PredicateError, match="colour"):
            index.search(vectors, ["colour = 'red'", None], k=3)
        with pytest.raises(PredicateError):
            index.search(vectors, ["category >= 3", None], k=3)


# --- Workload logs with query vectors: calibration on them, recall on their held-out part ---

LOG_ITEMS = 30_000


@pytest.fixture(scope="module")
def log():
    from beamvec.index.querylog import QueryLog

    table = synthetic.make_queries(1_600, DIM, seed=5)
    vectors = table.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    return QueryLog(table.column("predicate").to_pylist(), vectors)


@pytest.fixture(scope="module")
def logged(tmp_path_factory, items, log):
    """An index of trees (shards of 5,000-10,000 rows) built with a workload log that has vectors."""
    from beamvec.index.plan import fit_plan

    attributes = items.table.drop_columns(["vector"])
    plan = fit_plan("workload", attributes, items.vectors, log.predicates, 5_000, 10_000)
    path = str(tmp_path_factory.mktemp("idx") / "logged")
    manifest = build_index(path, items.table.column("id").combine_chunks(), items.vectors, attributes, plan=plan, log=log)
    return path, manifest


def heldout_truth(items, heldout, k=10):
    masks = masks_of(items.table, heldout.predicates)
    rows, _ = exact.search(items.vectors, heldout.vectors, k, "dot_product", [masks[p] for p in heldout.predicates])
    matches = np.array([items.table.num_rows if masks[p] is None else int(masks[p].sum()) for p in heldout.predicates])
    ids = np.asarray(items.table.column("id").to_pylist() + [None], dtype=object)
    return ids[rows], matches


def test_manifest_records_the_recall_on_held_out_log_queries(logged, items, log):
    path, manifest = logged
    _, heldout = log.split()
    index = Index.open(path)
    assert index.manifest.heldout_recall == manifest.heldout_recall
    found, _ = index.search(heldout.vectors, heldout.predicates, 10)
    truth, matches = heldout_truth(items, heldout)
    recall = exact.recall(found, truth)
    selective = matches <= np.quantile(matches, 0.1)
    figure = manifest.heldout_recall
    assert figure["queries"] == len(heldout.predicates) == 400 and figure["k"] == 10 and figure["target"] == 0.95
    assert figure["mean"] == pytest.approx(recall.mean(), abs=1e-12)
    assert figure["selective"] == pytest.approx(recall[selective].mean(), abs=1e-12)
    assert figure["selective_queries"] == selective.sum()
    assert figure["mean"] >= 0.95


def test_shards_calibrate_on_the_log_queries_routed_to_them(logged, log):
    path, _ = logged
    index = Index.open(path)
    calibrations = [index.shard(o).calibration for o in range(len(index.manifest.partitions))]
    assert all(not index.shard(o).config.brute_force for o in range(len(calibrations)))
    assert all(c.log_queries > 0 and c.queries == 128 for c in calibrations)
    assert max(c.log_queries for c in calibrations) == 128  # capped: unfiltered log queries reach every shard


def test_shard_partials_merge_to_what_index_search_returns(logged, items, log):
    from beamvec.index.querylog import heldout_partial, merge_heldout

    path, _ = logged
    _, heldout = log.split()
    index = Index.open(path)
    ordinal_of = {p.id: i for i, p in enumerate(index.manifest.partitions)}
    partials = [heldout_partial(index.shard(ordinal_of[p.id]), int(p.id[1:]), index.plan, heldout)
                for p in index.manifest.partitions]
    approx, exact_handles, matches = merge_heldout(partials, len(heldout.predicates))

    def ids_of(handles):
        out = np.full(handles.shape, None, object)
        for h in np.unique(handles[handles >= 0] >> 40):
            where = (handles >= 0) & (handles >> 40 == h)
            out[where] = np.asarray(index.shard(ordinal_of[f"p{h:05d}"]).ids.take(pa.array(handles[where] & ((1 << 40) - 1)))
                                    .to_pylist(), object)
        return out

    found, _ = index.search(heldout.vectors, heldout.predicates, 10)
    assert (ids_of(approx) == found).all()
    truth, want_matches = heldout_truth(items, heldout)
    np.testing.assert_array_equal(matches, want_matches)
    assert exact.recall(ids_of(exact_handles), truth).min() == 1.0


def test_a_log_without_vectors_records_nothing_and_old_manifests_still_load(tmp_path, logged, republish):
    from beamvec.index.manifest import Manifest
    from beamvec.index.querylog import QueryLog

    manifest = build_index(str(tmp_path), [1, 2], np.eye(2, dtype=np.float32), log=QueryLog(["", None]))
    assert manifest.heldout_recall is None
    with open(os.path.join(republish(tmp_path), "manifest.json")) as f:
        assert "heldout_recall" not in json.load(f)
    path, built = logged
    version = republish(path, lambda m: m.pop("heldout_recall"))  # as a build before the field existed wrote it
    old = Manifest.read(version)
    assert old.heldout_recall is None and old.partitions == built.partitions
    republish(path, lambda m: m.update(heldout_recall=built.heldout_recall))
    with pytest.raises(ValueError, match="dimension 5"):
        build_index(str(tmp_path / "bad"), [1, 2], np.eye(2, dtype=np.float32),
                    log=QueryLog(["", ""], np.ones((2, 5), np.float32)))


def test_a_fresh_batch_answers_as_a_repeated_one_and_the_profile_says_where_time_went(partitioned, queries):
    vectors, predicates = queries
    index = Index.open(partitioned)
    first = index.search(vectors, predicates, 10)
    assert all(index.stats.seconds[phase] > 0 for phase in ("predicates", "routing", "masks", "merge"))
    assert index.stats.seconds["scoring"] + index.stats.seconds["scann"] > 0
    assert "masks" in index.stats.profile()
    shard = index.shard(0)
    assert len(shard._masks) > 0
    index.clear_caches()
    assert len(shard._masks) == 0 and not index._validated  # nothing learnt from predicates is kept
    again = index.search(vectors, predicates, 10)
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])


def test_zone_maps_route_a_query_only_to_shards_that_can_match(partitioned, queries):
    vectors, _ = queries
    index = Index.open(partitioned)
    index.search(vectors[:5], ["category = 'rock'"] * 5, 10)
    assert index.partitions_searched == 5  # the 'rock' shard only: the others hold no 'rock' row
    for nowhere in ("category = 'nope'", "year >= 2100", "category = 'rock' AND year < 1900"):
        ids, _ = index.search(vectors[:5], [nowhere] * 5, 10)
        assert (ids == None).all()  # noqa: E711
    assert index.partitions_searched == 5  # no shard holds a match, so none is searched (descriptions allow some)
    assert len(index.plan._reachable(parse("year >= 2100"))) == 4
