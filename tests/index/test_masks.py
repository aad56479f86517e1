"""Cached row masks and runs agree with evaluating each predicate, nulls included; packed bits say the same."""

import numpy as np
import pyarrow as pa
import pytest

from beamvec.index import layout
from beamvec.pipelines import synthetic
from beamvec.index.masks import MaskCache
from beamvec.index.predicate import MATCH_ALL
from beamvec.index.parser import parse

TABLE = pa.table({
    "category": ["rock", "pop", None, "rock", "jazz", "pop", "rock", None, "blues", "rock", "pop"],
    "year": [1999, 2005, 2010, None, 1980, 2001, 2003, 1995, None, 2020, 1990],
})
PREDICATES = ["category = 'rock'", "category = 'rock' AND year >= 2000", "NOT (category = 'rock')",
              "category IN ('rock', 'pop') OR year < 1990", "NOT (year >= 2000 OR category = 'pop')",
              "category IS NULL", "year BETWEEN 1990 AND 2005 AND NOT category IN ('jazz')"]


@pytest.mark.parametrize("text", PREDICATES)
def test_cached_mask_and_packed_bits_agree_with_evaluate(text):
    cache = MaskCache(TABLE)
    predicate = parse(text)
    want = np.asarray(predicate.evaluate(TABLE))
    for _ in range(2):  # computed, then served from the cache
        np.testing.assert_array_equal(cache.mask(predicate), want)
        bits = cache.excluded_bits(predicate)
        assert bits.dtype == np.uint8 and len(bits) == (TABLE.num_rows + 7) // 8
        np.testing.assert_array_equal(np.unpackbits(bits, count=TABLE.num_rows, bitorder="little").view(bool), ~want)


def test_match_all_has_no_mask_and_the_cache_stays_bounded():
    cache = MaskCache(TABLE, budget=0)  # the smallest capacity: 16 masks
    assert cache.mask(MATCH_ALL) is None and cache.excluded_bits(MATCH_ALL) is None
    for year in range(1950, 2000):
        predicate = parse(f"year >= {year}")
        np.testing.assert_array_equal(cache.mask(predicate), np.asarray(predicate.evaluate(TABLE)))
        cache.excluded_bits(predicate)
    assert len(cache._runs) <= 16 and len(cache._excluded) <= 16


@pytest.mark.parametrize("generator", ["catalog", "tenants"])
def test_runs_on_sorted_rows_agree_with_evaluate(generator):
    """Rows sorted by the workload's columns: runs found by binary search, the rest evaluated on the run."""
    make = synthetic.GENERATORS[generator]
    items = make.items(3000, 8, 3).drop_columns(["vector"])
    texts = sorted({t for t in make.predicates(600, 4) if t})
    sorted_by = layout.cluster_columns(texts, items.schema)
    assert len(sorted_by) >= 2
    table = items.take(layout.row_order(items.column("id"), items, sorted_by))
    cache = MaskCache(table, sorted_by=sorted_by)
    narrowed = 0
    for text in texts + [f"{sorted_by[0]} IS NULL", f"{sorted_by[0]} IS NOT NULL AND {sorted_by[1]} IS NULL"]:
        predicate = parse(text)
        want = predicate.evaluate(table)
        run = cache.run(predicate)
        assert run.matches == want.sum(), text
        if run.matches:
            assert want[run.lo] and want[run.hi - 1] and not want[:run.lo].any() and not want[run.hi:].any(), text
            narrowed += run.hi - run.lo < table.num_rows
        np.testing.assert_array_equal(cache.mask(predicate), want, err_msg=text)
    assert narrowed > len(texts) // 4  # most runs are narrower than the table
