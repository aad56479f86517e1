"""Cached row masks agree with evaluating each predicate, nulls included; packed bits say the same."""

import numpy as np
import pyarrow as pa
import pytest

from beamvec.index.masks import MaskCache
from beamvec.index.predicate import MATCH_ALL, parse

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
    assert len(cache._masks) <= 16 and len(cache._excluded) <= 16
