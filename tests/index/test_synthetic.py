"""Generated data: queries drawn from any item table hold for the item they came from."""

import numpy as np

from beamvec.index import synthetic
from beamvec.index.predicate import parse
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
