"""Multi-valued attributes: CONTAINS / CONTAINS ALL / CONTAINS ANY on list columns, checked against
a row-by-row evaluator, through zone maps, and through a real index against the exact answer."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beamvec.index import Index, build_index, exact
from beamvec.index.boxes import Box, may_match
from beamvec.index.columns import Columns, masks_of
from beamvec.index.masks import MaskCache
from beamvec.index.parser import parse
from beamvec.index.plan import AttributePlan, plan_from_json
from beamvec.index.qdtree import QdTreePlan, Workload
from beamvec.index.predicate import And, Compare, Contains, Not, Or, PredicateError, from_json, not_true
from beamvec.index.schema import check_item_schema
from beamvec.index.zones import ZoneMaps

TAGS = ["beach", "sunset", "dog", "cat", "it's", "x y"]
NUMS = [0, 1, 2, -3, 2**40]

lists = st.one_of(st.none(), st.lists(st.one_of(st.sampled_from(TAGS), st.none()), max_size=4))
int_lists = st.one_of(st.none(), st.lists(st.sampled_from(NUMS), max_size=3))


def contains(column, pool):
    return st.builds(Contains, st.just(column), st.lists(st.sampled_from(pool), min_size=1, max_size=3).map(tuple),
                     st.sampled_from(["all", "any"]), st.booleans())


atoms = st.one_of(contains("tags", TAGS), contains("nums", NUMS),
                  st.builds(Compare, st.just("x"), st.sampled_from(["=", "<", ">="]), st.integers(0, 5)))
predicates = st.recursive(atoms, lambda inner: st.one_of(
    st.builds(Not, inner), st.lists(inner, min_size=2, max_size=3).map(lambda p: And(tuple(p))),
    st.lists(inner, min_size=2, max_size=3).map(lambda p: Or(tuple(p)))), max_leaves=6)
tables = st.integers(1, 25).flatmap(lambda n: st.tuples(
    st.lists(lists, min_size=n, max_size=n), st.lists(int_lists, min_size=n, max_size=n),
    st.lists(st.one_of(st.none(), st.integers(0, 5)), min_size=n, max_size=n)))


def naive(p, row) -> bool | None:
    """SQL three-valued truth of ``p`` on one row (a dict), row by row."""
    if isinstance(p, Not):
        inner = naive(p.part, row)
        return None if inner is None else not inner
    if isinstance(p, (And, Or)):
        parts = [naive(q, row) for q in p.parts]
        decided = (False in parts) if isinstance(p, And) else (True in parts)
        if decided:
            return not isinstance(p, And)
        return None if None in parts else isinstance(p, And)
    value = row[p.column]
    if value is None:
        return None
    if isinstance(p, Compare):
        return {"=": value == p.value, "<": value < p.value, ">=": value >= p.value}[p.op]
    found = (all if p.mode == "all" else any)(v in value for v in p.values)
    return found != p.negated


def table_of(rows) -> pa.Table:
    tags, nums, x = rows
    return pa.table({"tags": pa.array(tags, pa.list_(pa.string())), "nums": pa.array(nums, pa.list_(pa.int64())),
                     "x": pa.array(x, pa.int64())})


@given(predicates)
def test_text_and_json_round_trip(p):
    assert parse(p.to_text()) == p
    assert from_json(p.to_json()) == p


@settings(max_examples=300, deadline=None)
@given(predicates, tables)
def test_evaluation_matches_a_row_by_row_evaluator(p, rows):
    table = table_of(rows)
    want = [naive(p, row) is True for row in table.to_pylist()]
    assert p.evaluate(table).tolist() == want
    # and where it is not true, exactly as not_true says (nulls included)
    assert not_true(p).evaluate(table).tolist() == [not w for w in want]


@settings(max_examples=150, deadline=None)
@given(predicates, tables, st.integers(1, 4))
def test_zone_maps_never_skip_a_partition_holding_a_match(p, rows, parts):
    columns = Columns(table_of(rows))
    n = columns.num_rows
    cuts = np.linspace(0, n, parts + 1).astype(int)
    zones = ZoneMaps([columns.segment(a, b) for a, b in zip(cuts[:-1], cuts[1:])])
    matches = p.evaluate(columns)
    may = zones.may_match(p)
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        assert may[i] or not matches[a:b].any()
        if isinstance(p, Contains) and not p.negated:  # judged from the posting lists: exactly
            assert may[i] == matches[a:b].any()
        assert (p.evaluate(table_of(rows).slice(a, b - a)) == matches[a:b]).all()  # a segment reads its own rows


@settings(max_examples=200, deadline=None)
@given(predicates, tables, st.integers(1, 3))
def test_shard_masks_from_posting_lists_match_the_evaluator(p, rows, parts):
    """A shard's runs and masks (posting lists for list conditions, the other conjuncts over their span,
    the sort column narrowed by binary search) over its rows of an index's columns."""
    tags, nums, xs = rows
    order = sorted(range(len(xs)), key=lambda i: (xs[i] is None, xs[i] or 0))  # as the layout sorts: nulls last
    table = table_of(tuple([column[i] for i in order] for column in rows))
    columns = Columns(table)
    matches = p.evaluate(table)
    cuts = np.linspace(0, columns.num_rows, parts + 1).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):
        cache = MaskCache(columns, sorted_by=("x",), rows=(int(a), int(b)))
        run = cache.run(p)
        assert cache.mask(p).tolist() == matches[a:b].tolist()
        assert run.matches == int(matches[a:b].sum())
        assert run.local is None or run.local.tolist() == matches[a:b][run.lo:run.hi].tolist()


def test_a_null_list_whose_slot_spans_elements_holds_none_of_them():
    tags = pa.ListArray.from_arrays(pa.array([0, 2, 3, 5]), pa.array(["a", "b", "a", "a", "c"]),
                                    mask=pa.array([False, True, False]))
    table = pa.table({"tags": tags})
    assert parse("tags CONTAINS 'a'").evaluate(table).tolist() == [True, False, True]
    assert parse("tags CONTAINS 'c'").evaluate(table).tolist() == [False, False, True]
    assert parse("tags NOT CONTAINS 'b'").evaluate(table).tolist() == [False, False, True]


def test_null_and_empty_lists():
    table = pa.table({"tags": pa.array([None, [], ["a"], ["a", None]], pa.list_(pa.string()))})
    assert parse("tags CONTAINS 'a'").evaluate(table).tolist() == [False, False, True, True]
    assert parse("tags NOT CONTAINS 'a'").evaluate(table).tolist() == [False, True, False, False]
    assert parse("NOT tags CONTAINS ANY ('a', 'b')").evaluate(table).tolist() == [False, True, False, False]
    assert parse("tags IS NULL").evaluate(table).tolist() == [True, False, False, False]


@pytest.mark.parametrize("text, position, expected", [
    ("tags CONTAINS", 13, "a string, an integer, ALL or ANY"),
    ("tags CONTAINS ALL 'a'", 18, "'('"),
    ("tags CONTAINS ANY ('a',", 23, "a string or an integer"),
    ("tags CONTAINS ANY ('a' 'b')", 23, "',' or ')'"),
    ("tags CONTAINS 1.5", 14, "a string or an integer"),
    ("tags CONTAINS ALL (TRUE)", 19, "a string or an integer"),
    ("tags NOT LIKE 'a'", 9, "BETWEEN, IN or CONTAINS"),
    ("CONTAINS 'a'", 0, "a column name, '(' or NOT"),
])
def test_malformed_contains_names_the_position(text, position, expected):
    with pytest.raises(PredicateError) as error:
        parse(text)
    assert (error.value.position, error.value.expected) == (position, expected)


@pytest.mark.parametrize("text, message", [
    ("x CONTAINS 1", "CONTAINS needs a list column"),
    ("tags = 'a'", "a list column is tested with CONTAINS"),
    ("tags IN ('a')", "a list column is tested with CONTAINS"),
    ("tags BETWEEN 'a' AND 'b'", "a list column is tested with CONTAINS"),
    ("nums CONTAINS 'a'", "cannot compare it with 'a'"),
    ("tags CONTAINS 1", "cannot compare it with 1"),
    ("tags", "only a bool column"),
])
def test_validation_refuses_mismatched_columns(text, message):
    with pytest.raises(PredicateError, match=message):
        parse(text).validate(table_of(([["a"]], [[1]], [1])).schema)


def test_list_attributes_are_valid_item_columns():
    vector = pa.field("vector", pa.list_(pa.float32()))
    check_item_schema(pa.schema([("id", pa.int64()), vector, ("tags", pa.list_(pa.string())),
                                 ("codes", pa.large_list(pa.int32()))]))
    with pytest.raises(ValueError, match="list<string>"):
        check_item_schema(pa.schema([("id", pa.int64()), vector, ("scores", pa.list_(pa.float32()))]))


def tag_items(n=3000, dim=16, seed=0):
    """Clustered vectors whose tags follow their cluster (a Zipf vocabulary per cluster)."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 6, n)
    centers = rng.normal(size=(6, dim)).astype(np.float32)
    vectors = (centers[cluster] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    ranks = 1.0 / np.arange(1, 41) ** 1.1
    tags = []
    for c in cluster:
        count = int(rng.integers(0, 6))
        tags.append(None if count == 5 else [f"t{c}_{r}" for r in rng.choice(40, count, False, ranks / ranks.sum())])
    return vectors, pa.table({"group": pa.array([f"g{c}" for c in cluster]), "tags": pa.array(tags, pa.list_(pa.string()))})


def test_an_index_answers_tag_queries_as_the_exact_search_does(tmp_path):
    vectors, attributes = tag_items()
    plan = AttributePlan("group", [parse(f"group = 'g{c}'") for c in range(6)] + [parse("group IS NULL")])
    build_index(str(tmp_path), pa.array(np.arange(len(vectors))), vectors, attributes, plan=plan)
    index = Index.open(str(tmp_path))
    rng = np.random.default_rng(1)
    queries = vectors[rng.integers(0, len(vectors), 40)] + 0.1 * rng.normal(size=(40, 16)).astype(np.float32)
    texts = [f"tags CONTAINS 't{i % 6}_{i % 7}'" if i % 3 else f"tags CONTAINS ALL ('t{i % 6}_0', 't{i % 6}_1')"
             for i in range(40)]
    ids, _ = index.search(queries, texts, 10)
    masks = masks_of(attributes, texts)
    rows, _ = exact.search(vectors, queries, 10, "dot_product", [masks[t] for t in texts])
    hits = sum(len(set(r[r >= 0]) & set(i[i >= 0])) for r, i in zip(rows, ids))
    assert hits / max(1, (rows >= 0).sum()) >= 0.95
    assert ((ids >= 0).sum(axis=1) == (rows >= 0).sum(axis=1)).all()
    # Tags follow the groups: zone maps send each query to its one group's shard.
    assert index.partitions_searched <= len(texts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(contains("tags", TAGS), st.booleans()), max_size=4), predicates, tables)
def test_tag_cuts_keep_boxes_sound(cuts, query, rows):
    """A qd-tree path of tag cuts (each taken true or not true): every row on it lies in the box, and a
    query true on one of them may match the box; the box survives a JSON round trip."""
    table = table_of(rows)
    box, on_path = Box.everything(), np.ones(table.num_rows, bool)
    for cut, holds in cuts:
        box = box.restrict(cut, holds)
        on_path &= cut.evaluate(table) if holds else not_true(cut).evaluate(table)
    assert not (on_path & ~box.contains(table)).any()
    if (on_path & query.evaluate(table)).any():
        assert may_match(query, box)
    assert Box.from_json(box.to_json()) == box


def test_a_tag_cut_separates_the_queries_on_its_tag():
    box = Box.everything()
    inside, outside = box.restrict(parse("tags CONTAINS 'dog'")), box.restrict(parse("tags CONTAINS 'dog'"), False)
    assert may_match(parse("tags CONTAINS ALL ('dog', 'cat')"), inside)
    assert not may_match(parse("tags CONTAINS ALL ('dog', 'cat')"), outside)
    assert not may_match(parse("tags NOT CONTAINS 'dog'"), inside)
    assert may_match(parse("tags CONTAINS ANY ('dog', 'cat')"), outside)
    assert not may_match(parse("tags CONTAINS ANY ('dog', 'cat')"), outside.restrict(parse("tags CONTAINS 'cat'"), False))


def test_a_workload_on_hot_tags_cuts_on_them_and_routes_every_match():
    vectors, attributes = tag_items(seed=2)
    attributes = attributes.drop_columns(["group"])
    hot = [f"tags CONTAINS 't{c}_0'" for c in range(4)]
    plan = QdTreePlan.fit(attributes, vectors, Workload.of(hot * 50), 100, 3000, pair_cost_rows=0)
    cuts = [node["cut"] for node in plan.to_json()["nodes"] if "cut" in node]
    assert any(cut in hot for cut in cuts), cuts
    assert plan_from_json(plan.to_json()).descriptions() == plan.descriptions()
    # Routing by description never skips a partition holding a match, for the workload's queries and others.
    assigned = plan.assign(attributes, vectors)
    rng = np.random.default_rng(3)
    texts = hot + [f"tags CONTAINS ANY ('t{rng.integers(6)}_{rng.integers(40)}', 't{rng.integers(6)}_0')"
                   for _ in range(20)] + [f"tags NOT CONTAINS 't{c}_0'" for c in range(4)]
    groups = {parse(t): np.array([i]) for i, t in enumerate(texts)}
    routes = plan.route(groups, vectors[:len(texts)])
    for i, text in enumerate(texts):
        holding = set(np.unique(assigned[parse(text).evaluate(attributes)]).tolist())
        reached = {o for o, members in enumerate(routes) if i in members}
        assert holding <= reached, text
    assert len({o for o, members in enumerate(routes) if 0 in members}) < plan.num_partitions
