"""Row layout inside a shard: rows ordered by the columns the workload filters on.

With rows sorted by, say, (category, year), the rows a predicate such as
``category = 'rock' AND year >= 2000`` matches sit in one short run, so exact
pre-filtering scores a contiguous slice of the shard's vectors instead of
gathering scattered rows or scanning the whole shard. The order is fitted from
the workload (:func:`cluster_columns`) and applied per shard (:func:`row_order`);
it is a total order (ties broken by id), so every runner lays rows out alike.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamvec.index.parser import parse

MAX_COLUMNS = 3
MIN_SHARE = 0.05  # a column must appear in at least this share of the workload's predicates


def sortable(t: pa.DataType) -> bool:
    """Whether rows can be ordered by a column of type ``t``."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_temporal(t))


def cluster_columns(workload: Sequence[str | None], schema: pa.Schema) -> tuple[str, ...]:
    """The columns to order shard rows by: those most workload predicates filter on.

    At most :data:`MAX_COLUMNS`, each used by at least :data:`MIN_SHARE` of the
    predicates, most used first (ties by name); only sortable columns of ``schema``.
    """
    uses: Counter[str] = Counter()
    parsed = {}
    for text in workload:
        if text not in parsed:
            parsed[text] = parse(text).columns()
        uses.update(parsed[text])
    names = set(schema.names)
    ranked = sorted(uses.items(), key=lambda item: (-item[1], item[0]))
    return tuple(c for c, n in ranked
                 if c in names and sortable(schema.field(c).type) and n >= MIN_SHARE * len(workload))[:MAX_COLUMNS]


def row_order(ids: pa.Array, attributes: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Row positions sorted by ``columns`` (ascending, nulls last), then by id."""
    keys = {f"c{i}": attributes.column(c) for i, c in enumerate(columns)}
    table = pa.table({**keys, "id": ids})
    return pc.sort_indices(table, sort_keys=[(name, "ascending", "at_end") for name in table.column_names]).to_numpy()
