"""Generated data: queries drawn from any item table hold for the item they came from; the tenants
workload is deterministic, log-like and spans selectivities from none to all of the rows."""

import inspect
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamvec.index.columns import masks_of
from beamvec.pipelines import cli, synthetic
from beamvec.index.parser import parse
from beamvec.index.schema import validate_items


def test_queries_from_items_filter_on_their_own_items_values():
    items = synthetic.make_items(2_000, 8, seed=3)
    queries = synthetic.queries_from_items(items, 300, seed=4)
    vectors = validate_items(items).vectors
    query_vectors = np.asarray(queries.column("vector").combine_chunks().values).reshape(-1, 8)
    predicates = queries.column("predicate").to_pylist()
    assert len(predicates) == 300 and 0 < predicates.count("") < 100
    for vector, text in zip(query_vectors, predicates):
        source = np.flatnonzero((vectors == vector).all(axis=1))
        assert len(source) == 1
        predicate = parse(text)
        assert predicate.evaluate(items)[source[0]], text
        assert not {"id", "vector"} & predicate.columns()
    # Every kind of usable column shows up: strings, numbers and bools.
    columns = set().union(*(parse(p).columns() for p in predicates))
    assert {"category", "year", "explicit"} <= columns


# ------------------------------------------------------------------------------ tenants


def _matched_shares(items, predicates):
    shares = {}
    for text in predicates:
        if text not in shares:
            shares[text] = parse(text).evaluate(items).mean()
    return np.array([shares[text] for text in predicates])


def test_tenant_generator_is_a_pure_function_of_its_seed():
    assert synthetic.make_tenant_items(1_000, 8, seed=1).equals(synthetic.make_tenant_items(1_000, 8, seed=1))
    assert not synthetic.make_tenant_items(1_000, 8, seed=1).equals(synthetic.make_tenant_items(1_000, 8, seed=2))
    assert synthetic.tenant_predicates(300, seed=1) == synthetic.tenant_predicates(300, seed=1)
    assert synthetic.tenant_predicates(300, seed=1) != synthetic.tenant_predicates(300, seed=2)
    queries = synthetic.make_tenant_queries(200, 8, seed=1, k=7)
    assert queries.equals(synthetic.make_tenant_queries(200, 8, seed=1, k=7))
    assert not queries.equals(synthetic.make_tenant_queries(200, 8, seed=2, k=7))


def test_tenant_items_columns():
    items = synthetic.make_tenant_items(3_000, 8, seed=4)
    assert {f.name: str(f.type) for f in items.schema} == {
        "id": "int64", "vector": "fixed_size_list<item: float>[8]", "tenant": "string", "region": "string",
        "created": "int64", "score": "double", "priority": "int64", "archived": "bool", "size_kb": "int64",
    }
    vectors = validate_items(items).vectors
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert 0 < items.column("score").null_count < 300 and 0 < items.column("priority").null_count < 600
    assert len(items.column("region").unique()) == len(synthetic.REGIONS)
    created = items.column("created").to_numpy()
    assert synthetic.FIRST_DAY <= created.min() and created.max() <= synthetic.LAST_DAY
    assert created.max() - created.min() > 3_000
    size = items.column("size_kb").to_numpy()
    assert size.min() >= 1 and size.max() > 50 * np.median(size)  # heavy-tailed
    wider = synthetic.make_tenant_items(3_000, 32, seed=4)
    assert wider.drop_columns("vector").equals(items.drop_columns("vector"))  # attributes ignore the dimension
    strings = synthetic.make_tenant_items(10, 8, seed=4, ids="str")
    assert strings.column("id").to_pylist()[:2] == ["item-0", "item-1"]
    assert strings.drop_columns("id").equals(synthetic.make_tenant_items(10, 8, seed=4).drop_columns("id"))


def test_tenants_are_skewed_and_own_topical_data():
    items = synthetic.make_tenant_items(20_000, 16, seed=5)
    tenant = items.column("tenant").to_numpy(zero_copy_only=False)
    names, counts = np.unique(tenant, return_counts=True)
    order = np.argsort(-counts)
    shares = counts[order] / items.num_rows
    assert len(names) >= 250
    assert shares[:10].sum() > 0.3 and shares[0] > 30 * np.median(shares) and shares[-1] < 0.001
    # A tenant's vectors are concentrated (in its home clusters): their mean is far from 0.
    vectors = validate_items(items).vectors
    rng = np.random.default_rng(0)
    for name in names[order[:5]]:
        own = vectors[tenant == name]
        anyone = vectors[rng.choice(len(vectors), len(own), replace=False)]
        assert np.linalg.norm(own.mean(axis=0)) > 1.5 * np.linalg.norm(anyone.mean(axis=0))


def test_tenant_predicates_parse_and_validate_against_the_items():
    schema = synthetic.make_tenant_items(100, 8, seed=6).schema
    for text in synthetic.tenant_predicates(2_000, seed=6):
        parse(text).validate(schema)


def test_tenant_predicates_mix_like_a_query_log():
    predicates = synthetic.tenant_predicates(2_000, seed=7)
    assert 0.05 <= predicates.count("") / len(predicates) <= 0.1
    assert len(set(predicates)) >= 0.3 * len(predicates)  # a long tail...
    top = Counter(p for p in predicates if p).most_common(3)
    assert all(count >= 20 for _, count in top)  # ...and a few hot ones
    text = "\n".join(predicates)
    for needle in (" OR ", "NOT archived", "NOT (region IN (", "tenant IN (", "region IN (", "IS NULL",
                   "IS NOT NULL", "BETWEEN", "created >=", "size_kb"):
        assert needle in text, needle
    equalities = Counter(re.findall(r"tenant = '(t\d+)'", text))
    assert len(equalities) >= 150  # hundreds of tenants, skewed popularity
    assert equalities.most_common(1)[0][1] > 10 * np.median(list(equalities.values()))
    lists = [len(parse(p).atoms()[0].values) for p in predicates if p.startswith(("tenant IN", "region IN"))]
    assert min(lists) == 2 and max(lists) == 6


def test_tenant_predicates_span_selectivities():
    items = synthetic.make_tenant_items(50_000, 4, seed=8)
    predicates = [p for p in synthetic.tenant_predicates(1_000, seed=8) if p]
    shares = _matched_shares(items, predicates)
    assert shares.min() <= 0.0005 and shares.max() >= 0.9
    counts, _ = np.histogram(shares, bins=[0, 0.001, 0.01, 0.1, 0.5, 1.01])
    assert (counts >= 0.08 * len(shares)).all(), counts


def test_tenant_queries_search_their_tenants_data():
    items = synthetic.make_tenant_items(20_000, 16, seed=9)
    queries = synthetic.make_tenant_queries(400, 16, seed=9, k=10)
    assert queries.column_names == ["query_id", "vector", "predicate", "k"]
    assert queries.column("query_id").to_pylist() == list(range(400))
    assert queries.column("predicate").to_pylist() == synthetic.tenant_predicates(400, seed=9)
    assert synthetic.make_tenant_queries(3, 16, seed=9, predicates=["", "a = 1", ""]).column_names == [
        "query_id", "vector", "predicate"]
    vectors = validate_items(items).vectors
    tenant = items.column("tenant").to_numpy(zero_copy_only=False)
    query_vectors = np.asarray(queries.column("vector").combine_chunks().values).reshape(-1, 16)
    own, share = [], []
    for vector, text in zip(query_vectors, queries.column("predicate").to_pylist()):
        if match := re.fullmatch(r"tenant = '(t\d+)'", text):
            nearest = np.argsort(-(vectors @ vector))[:50]
            own.append(np.mean(tenant[nearest] == match.group(1)))
            share.append(np.mean(tenant == match.group(1)))
    assert len(own) > 50 and np.mean(own) > 3 * np.mean(share)


def test_generators_share_signatures():
    assert set(synthetic.GENERATORS) == set(cli.GENERATOR_NAMES)
    for field in synthetic.Generator._fields:
        signatures = [inspect.signature(getattr(g, field)).parameters for g in synthetic.GENERATORS.values()]
        positional = [[(p.name, p.default) for p in s.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
                      for s in signatures]
        assert all(p == positional[0] for p in positional), field
    for generator in synthetic.GENERATORS.values():
        items = generator.items(500, 8, 3)
        predicates = generator.predicates(50, 3)
        queries = generator.queries(50, 8, 3, predicates=predicates, k=5)
        assert queries.column_names == ["query_id", "vector", "predicate", "k"]
        for text in predicates:
            parse(text).validate(items.schema)


def test_tag_generator_follows_the_clusters_and_spans_selectivities():
    items = synthetic.make_tag_items(20_000, 16, 4)
    assert items.equals(synthetic.make_tag_items(20_000, 16, 4))
    assert items.schema.field("tags").type == pa.list_(pa.string())
    lengths = pc.fill_null(pc.list_value_length(items.column("tags")), 0).to_numpy()
    assert items.column("tags").null_count > 0 and (lengths == 0).any() and lengths.max() > 15
    predicates = synthetic.tag_predicates(400, 4)
    assert predicates == synthetic.tag_predicates(400, 4)
    masks = masks_of(items.drop_columns(["vector"]), predicates)
    selectivity = np.array([masks[p].mean() for p in predicates])
    assert selectivity.max() > 0.03 and np.quantile(selectivity[selectivity > 0], 0.1) < 0.001
    assert (selectivity > 0).mean() > 0.7  # the rarest tags and pairs match none of 20,000 rows
    assert sum("CONTAINS ALL" in p for p in predicates) > 100
    # A query lies near rows holding its tag: its nearest items match far more often than rows at large.
    queries = synthetic.make_tag_queries(400, 16, 4, predicates=predicates)
    vectors = items.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, 16)
    q = queries.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, 16)
    nearest = np.argsort(-(q @ vectors.T), axis=1)[:, :200]
    # (tags at large, the most common ones, follow no cluster: the median query's tag is a local one)
    lift = [masks[p][nearest[i]].mean() / masks[p].mean() for i, p in enumerate(predicates) if masks[p].sum() >= 20]
    assert np.median(lift) > 3, np.median(lift)
