"""Partition plans: sound routing, JSON round trips, and the qd-tree's advantage on a skewed workload."""

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamvec.index import Index, build_index, exact
from beamvec.pipelines import synthetic
from beamvec.index.columns import masks_of
from beamvec.index.plan import HashPlan, fit_plan, plan_from_json, rows_scanned
from beamvec.index.parser import parse
from beamvec.index.qdtree import QdTreePlan, Workload
from beamvec.index.schema import validate_items

COLORS = ["red", "green", "blue", "black"]


def predicate_strategy():
    atom = st.one_of(
        st.sampled_from(COLORS).map(lambda c: f"color = '{c}'"),
        st.lists(st.sampled_from(COLORS), min_size=1, max_size=3, unique=True).map(
            lambda cs: "color IN (" + ", ".join(f"'{c}'" for c in cs) + ")"),
        st.tuples(st.sampled_from(["<", "<=", ">", ">=", "=", "!="]), st.integers(0, 20)).map(lambda t: f"size {t[0]} {t[1]}"),
        st.tuples(st.integers(0, 20), st.integers(0, 8)).map(lambda t: f"size BETWEEN {t[0]} AND {t[0] + t[1]}"),
        st.sampled_from(["flag", "NOT flag", "size IS NULL", "color IS NOT NULL"]),
    )
    return st.recursive(atom, lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda t: f"({t[0]}) AND ({t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"({t[0]}) OR ({t[1]})"),
        inner.map(lambda p: f"NOT ({p})")), max_leaves=4)


@st.composite
def tables(draw):
    n = draw(st.integers(20, 120))
    colors = draw(st.lists(st.sampled_from(COLORS + [None]), min_size=n, max_size=n))
    sizes = draw(st.lists(st.one_of(st.none(), st.integers(0, 20)), min_size=n, max_size=n))
    flags = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return pa.table({"id": pa.array(range(n), pa.int64()), "color": pa.array(colors, pa.string()),
                     "size": pa.array(sizes, pa.int64()), "flag": pa.array(flags)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), workload=st.lists(predicate_strategy(), min_size=1, max_size=12),
       queries=st.lists(predicate_strategy(), min_size=1, max_size=8), min_rows=st.integers(1, 10))
def test_routing_never_skips_a_partition_with_a_matching_row(table, workload, queries, min_rows):
    vectors = np.random.default_rng(0).standard_normal((table.num_rows, 4)).astype(np.float32)
    plans = [QdTreePlan.fit(table, vectors, Workload.of(workload), min_rows, max(min_rows, 30)),
             fit_plan("attribute:color", table, vectors), fit_plan("attribute:size", table, vectors, max_rows=30)]
    for plan in plans:
        assignment = plan.assign(table, vectors)
        assert (assignment >= 0).all() and (assignment < plan.num_partitions).all()
        for description, part in zip(plan.descriptions(), range(plan.num_partitions)):
            assert description.evaluate(table)[assignment == part].all(), f"rows outside {description}"
        groups = {parse(q): np.array([i]) for i, q in enumerate(dict.fromkeys(queries))}
        routes = plan.route(groups, np.zeros((len(groups), 4), np.float32))
        for p, members in groups.items():
            needed = set(assignment[p.evaluate(table)].tolist())
            reached = {part for part, r in enumerate(routes) if members[0] in r}
            assert needed <= reached, f"{plan.kind}: query {p} skips partitions {needed - reached}"


def test_plans_round_trip_through_json():
    items = synthetic.make_items(3000, 8, seed=1)
    vectors = items.column("vector").combine_chunks().values.to_numpy().reshape(-1, 8)
    attributes = items.drop_columns(["vector"])
    workload = synthetic.random_predicates(300, seed=1)
    for spec in ["workload", "hash", "attribute:category", "attribute:price", "kmeans", "single"]:
        plan = fit_plan(spec, attributes, vectors, workload, min_rows=200, max_rows=1000)
        again = plan_from_json(json.loads(json.dumps(plan.to_json())))
        assert again.to_json() == plan.to_json()
        assert (again.assign(attributes, vectors) == plan.assign(attributes, vectors)).all()
        assert [d.to_text() for d in again.descriptions()] == [d.to_text() for d in plan.descriptions()]


def test_oversized_leaves_are_split_by_vectors():
    items = synthetic.make_items(4000, 8, seed=2)
    vectors = items.column("vector").combine_chunks().values.to_numpy().reshape(-1, 8)
    plan = fit_plan("workload", items.drop_columns(["vector"]), vectors, ["category = 'rock'"] * 10,
                    min_rows=100, max_rows=800)
    sizes = np.bincount(plan.assign(items.drop_columns(["vector"]), vectors), minlength=plan.num_partitions)
    assert plan.num_partitions >= 5 and sizes.sum() == 4000
    assert sizes.max() <= 2 * 800, sizes


def test_a_cut_must_repay_the_searches_it_adds():
    # Cutting on color lets 9 queries in 10 skip half the rows: worth it. Cutting the red half
    # again on size lets 1 query skip 5,000 rows but makes the 9 red queries search both pieces:
    # at 2,000 rows a search that does not pay (the blue half, which they skip, is cut); priced
    # at nothing it does.
    n = 20_000
    table = pa.table({"id": pa.array(range(n), pa.int64()), "color": pa.array(["red", "blue"] * (n // 2)),
                      "size": pa.array(np.arange(n) % 10)})
    workload = Workload.of(["size < 5"] + ["color = 'red'"] * 9)
    vectors = np.zeros((n, 2), np.float32)
    priced = QdTreePlan.fit(table, vectors, workload, 1_000, n)
    assert priced.num_partitions == 3 and priced.nodes[0]["cut"] == "color = 'red'"
    assert "cut" not in priced.nodes[priced.nodes[0]["left"]]  # the red half stays whole
    assert QdTreePlan.fit(table, vectors, workload, 1_000, n, pair_cost_rows=0).num_partitions == 4


def test_unknown_partitioner_and_bad_workload_are_clear_errors():
    table = pa.table({"id": [1, 2], "x": [1, 2]})
    with pytest.raises(ValueError, match="unknown partitioner 'range'"):
        fit_plan("range", table, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="needs a workload"):
        fit_plan("workload", table, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="nope"):
        fit_plan("workload", table, np.zeros((2, 2)), ["nope = 1"])


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """40k items, a skewed 2k-query workload split in halves; a qd-tree fitted on the first half."""
    items = validate_items(synthetic.make_items(40_000, 32, seed=7))
    workload = synthetic.random_predicates(2000, seed=7)
    fit_half, test_half = workload[::2], workload[1::2]
    attributes = items.table.drop_columns(["vector"])
    sample = np.random.default_rng(0).choice(items.table.num_rows, 10_000, replace=False)
    plan = fit_plan("workload", attributes.take(sample), items.vectors[sample], fit_half,
                    min_rows=2_000, max_rows=10_000, total_rows=items.table.num_rows)
    path = str(tmp_path_factory.mktemp("skewed"))
    build_index(path, items.table.column("id").combine_chunks(), items.vectors, attributes, plan=plan)
    return items, plan, test_half, path


def test_workload_plan_scans_at_most_half_of_hash_on_held_out_queries(skewed):
    items, plan, test_half, _ = skewed
    attributes = items.table.drop_columns(["vector"])
    vectors = np.zeros((len(test_half), items.vectors.shape[1]), np.float32)
    sizes = np.bincount(plan.assign(attributes, items.vectors), minlength=plan.num_partitions)
    hashed = HashPlan(plan.num_partitions)
    hash_sizes = np.bincount(hashed.assign(attributes, items.vectors), minlength=plan.num_partitions)
    workload_scan = rows_scanned(plan, sizes, test_half, vectors).mean()
    hash_scan = rows_scanned(hashed, hash_sizes, test_half, vectors).mean()
    assert workload_scan <= 0.5 * hash_scan, (workload_scan, hash_scan)


def test_workload_plan_results_match_the_oracle(skewed):
    items, plan, test_half, path = skewed
    queries = synthetic.make_queries(len(test_half), 32, seed=7, predicates=test_half)
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, 32)
    index = Index.open(path)
    ids, _ = index.search(vectors, test_half, 10)
    masks = masks_of(items.table, test_half)
    truth, _ = exact.search(items.vectors, vectors, 10, "dot_product", [masks[p] for p in test_half])
    id_column = items.table.column("id").to_numpy()
    truth_ids = np.where(truth >= 0, id_column[np.maximum(truth, 0)], -1)
    assert exact.recall(ids, truth_ids).mean() >= 0.95
    assert ((ids != -1).sum(axis=1) == (truth != -1).sum(axis=1)).all()
    assert len(index.manifest.partitions) > 1
