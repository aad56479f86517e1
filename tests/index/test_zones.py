"""Zone maps route soundly (a partition with a matching row is never skipped) and skip most others."""

import numpy as np
import pyarrow as pa
import pytest

from beamvec.pipelines import synthetic
from beamvec.index.columns import Columns
from beamvec.index.parser import parse
from beamvec.index.zones import MAX_LISTED, ZoneMaps


@pytest.mark.parametrize("generator", ["catalog", "tenants"])
def test_zone_maps_never_skip_a_partition_with_a_match(generator):
    make = synthetic.GENERATORS[generator]
    items = make.items(13000, 8, 5).drop_columns(["vector"])
    # Partitions by the first string column: some columns listed, others (ids, numbers) ranges.
    first = next(f.name for f in items.schema if pa.types.is_string(f.type))
    keys = np.asarray(items.column(first).to_pylist(), object)
    distinct = sorted(set(keys))
    parts = [items.filter(pa.array(np.isin(keys, distinct[i::6]))) for i in range(6)]
    zones = ZoneMaps([Columns(p) for p in parts])
    texts = sorted({t for t in make.predicates(800, 6) if t})
    skipped = 0
    for text in texts + ["id = 17", "id BETWEEN 10 AND 20", "NOT id IN (1, 2)", "id != 3"]:
        predicate = parse(text)
        may = zones.may_match(predicate)
        matches = np.array([predicate.evaluate(p).any() for p in parts])
        assert not (matches & ~may).any(), f"{text}: skipped a partition holding a match"
        skipped += int((~may).sum())
    assert skipped > len(texts)  # the zones do skip partitions
    assert len(zones._column("id").ranged) >= 2 and len(zones._column(first).ranged) == 0  # ids: ranges
    assert all(len(set(p.column(first).to_pylist())) <= MAX_LISTED for p in parts)
