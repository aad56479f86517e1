"""Row layout: shards ordered by the workload's filter columns, and exact pre-filtering over runs of rows."""

import numpy as np
import pyarrow as pa
import pytest

from beamvec.index import exact, layout
from beamvec.pipelines import synthetic
from beamvec.index.columns import masks_of
from beamvec.index.plan import fit_plan, plan_from_json
from beamvec.index.predicate import MATCH_ALL
from beamvec.index.parser import parse
from beamvec.index.schema import validate_items
from beamvec.index.costs import shared_runs
from beamvec.index.shard import Shard, _Group
from beamvec.index.shardspec import SearchParams

DIM = 32


def test_cluster_columns_ranks_by_use_and_skips_what_cannot_order_rows():
    schema = pa.schema([("genre", pa.string()), ("year", pa.int64()), ("tags", pa.list_(pa.string())),
                        ("price", pa.float64())])
    workload = (["genre = 'rock'"] * 50 + ["genre = 'pop' AND year >= 2000"] * 30 + ["year < 1990"] * 10
                + ["tags IS NULL"] * 60 + ["price < 3"] * 2 + [None, ""] * 4)
    # genre 80, tags 60 (a list: cannot order rows), year 40, price 2 (under 5% of 160 predicates)
    assert layout.cluster_columns(workload, schema) == ("genre", "year")
    assert layout.cluster_columns(["nope = 1"] * 10, schema) == ()
    assert layout.cluster_columns([], schema) == ()


def test_row_order_sorts_by_columns_nulls_last_then_id():
    ids = pa.array([5, 3, 9, 1, 7])
    attributes = pa.table({"g": ["b", "a", None, "a", "b"], "y": [2, 1, 1, None, 1]})
    order = layout.row_order(ids, attributes, ["g", "y"])
    assert ids.take(pa.array(order)).to_pylist() == [3, 1, 7, 5, 9]
    assert layout.row_order(ids, attributes, []).tolist() == [3, 1, 0, 4, 2]


def test_plan_carries_the_row_order_through_json():
    items = synthetic.make_items(2000, 8, seed=1)
    vectors = items.column("vector").combine_chunks().values.to_numpy().reshape(-1, 8)
    workload = synthetic.random_predicates(400, seed=1)
    plan = fit_plan("workload", items.drop_columns(["vector"]), vectors, workload, min_rows=200, max_rows=1000)
    assert plan.row_order[:2] == ("category", "year")
    assert plan_from_json(plan.to_json()).row_order == plan.row_order
    assert fit_plan("hash", items.drop_columns(["vector"]), vectors).row_order == ()


@pytest.fixture(scope="module")
def clustered():
    items = validate_items(synthetic.make_items(20_000, DIM, seed=4))
    shuffled = np.random.default_rng(0).permutation(items.table.num_rows)
    table = items.table.take(pa.array(shuffled))
    shard = Shard.build(table.column("id"), items.vectors[shuffled], table.drop_columns(["vector"]),
                        row_order=("category", "year"))
    queries = synthetic.make_queries(60, DIM, seed=4).column("vector").combine_chunks().values.to_numpy()
    return items, shard, queries.reshape(-1, DIM)


def test_clustered_shard_stores_rows_sorted_and_keeps_ids_with_their_vectors(clustered):
    items, shard, _ = clustered
    assert shard.row_order == ("category", "year")
    rows = shard.attributes.select(["category", "year", "id"]).to_pylist()
    key = lambda r: (r["category"], r["year"] is None, r["year"] or 0, r["id"])
    assert rows == sorted(rows, key=key)
    ids = shard.ids.to_numpy()
    np.testing.assert_array_equal(shard.vectors, items.vectors[ids])  # ids 0..n-1 index the input order


def test_matches_of_a_clustered_predicate_lie_in_one_short_run(clustered):
    _, shard, _ = clustered
    group = shard._group(parse("category = 'rock' AND year >= 2000"), np.arange(1))
    assert 0 < group.matches <= group.hi - group.lo < shard.num_rows / 4
    mask = shard.mask(parse("category = 'rock' AND year >= 2000"))
    assert mask[group.lo] and mask[group.hi - 1] and mask[:group.lo].sum() + mask[group.hi:].sum() == 0


def test_exact_pre_filter_over_runs_equals_the_oracle(clustered):
    items, shard, queries = clustered
    predicates = ["category = 'rock'", "category = 'rock' AND year >= 1990", "category IN ('pop', 'jazz')",
                  "year BETWEEN 1980 AND 1985", "category = 'pop' AND price < 10", "", "category = 'none'"] * 9
    vectors = np.concatenate([queries, queries[:3]])[:len(predicates)]
    result = shard.search(vectors, 10, predicates, SearchParams(prefilter_cost_ratio=1e9))
    assert result.stats.prefiltered == sum(p != "category = 'none'" for p in predicates)  # no match: no search
    masks = masks_of(items.table, predicates)
    truth, scores = exact.search(items.vectors, vectors, 10, "dot_product", [masks[p] for p in predicates])
    found = np.where(result.rows >= 0, shard.ids.to_numpy()[np.maximum(result.rows, 0)], -1)
    np.testing.assert_array_equal(found, truth)
    np.testing.assert_allclose(exact.finish(result.keys, "dot_product"), scores, rtol=1e-5, atol=1e-5)


def test_shared_runs_batch_every_group_once_and_merge_overlapping_runs():
    def group(lo, hi, queries):
        return _Group(MATCH_ALL, np.arange(queries), hi - lo, lo, hi, None)

    groups = [group(0, 1000, 3), group(100, 900, 2), group(5000, 5100, 10), group(5050, 5150, 10), group(0, 10_000, 40)]
    batches = shared_runs(groups)
    assert sorted(id(g) for b in batches for g in b) == sorted(id(g) for g in groups)
    batch_of = {(g.lo, g.hi): i for i, b in enumerate(batches) for g in b}
    assert batch_of[5000, 5100] == batch_of[5050, 5150]  # near-identical short runs share a product
    assert batch_of[0, 1000] == batch_of[100, 900]
    assert batch_of[0, 10_000] != batch_of[5000, 5100]  # a short run does not pay for a whole-shard scan
