"""Generated data sets: realistic enough to exercise every part, small enough to ship as code.

* :func:`make_items`: unit-norm clustered vectors with attributes that correlate
  with the clusters, as real catalogues do: ``category`` (skewed, most rows of a
  cluster share a few categories), ``year`` (int, 3% null), ``price`` (float, 2%
  null), ``explicit`` (bool) and ``bucket`` (uniform 0..999, for predicates of an
  exact selectivity: ``bucket < 10`` matches 1% of rows).
* :func:`make_queries`: query vectors near the items, each with a predicate drawn
  from a skewed mix (most filter on a few popular categories).
* :func:`selectivity_predicate`: a predicate matching a given fraction of rows.
* :func:`queries_from_items`: queries and predicates taken from any item table
  (each query is an item's vector, filtered on that item's own attribute values).

Everything is a pure function of its arguments and seed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from beamvec.index.predicate import BoolColumn, Compare, Predicate, and_, not_
from beamvec.index.schema import ID, VECTOR, validate_items, vectors_array

CATEGORIES = (
    "rock", "pop", "jazz", "classical", "hiphop", "electronic", "folk", "blues",
    "country", "metal", "soul", "reggae", "latin", "punk", "ambient", "funk",
    "gospel", "disco", "opera", "ska", "grunge", "techno", "house", "swing",
)
BUCKETS = 1000


def _zipf_weights(n: int, exponent: float = 1.1) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()


def _centers(dimension: int, clusters: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 1]).standard_normal((clusters, dimension)).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    weights = _zipf_weights(len(centers), 0.5)
    assignment = rng.choice(len(centers), n, p=weights)
    noise = rng.standard_normal((n, centers.shape[1])).astype(np.float32)
    return _normalise(centers[assignment] + spread * noise), assignment


def make_items(n: int, dimension: int = 64, seed: int = 0, clusters: int = 64, ids: str = "int") -> pa.Table:
    """``n`` items: ``id`` (int64, or 'item-<n>' strings with ids='str'), ``vector`` and attributes."""
    rng = np.random.default_rng([seed, 2])
    centers = _centers(dimension, clusters, seed)
    vectors, cluster = _clustered(rng, centers, n, spread=0.8)
    category_weights = _zipf_weights(len(CATEGORIES))
    home = np.random.default_rng([seed, 3]).choice(len(CATEGORIES), (clusters, 2), p=category_weights)
    own = rng.random(n) < 0.7
    category = np.where(own, home[cluster, rng.integers(0, 2, n)],
                        rng.choice(len(CATEGORIES), n, p=category_weights))
    era = np.random.default_rng([seed, 4]).integers(1960, 2015, clusters)
    year = np.clip(era[cluster] + rng.integers(-10, 11, n), 1950, 2024)
    price = np.round(rng.lognormal(2.5, 0.7, n), 2)
    id_values = np.arange(n, dtype=np.int64)
    return pa.table({
        "id": pa.array(id_values) if ids == "int" else pa.array([f"item-{i}" for i in id_values]),
        "vector": vectors_array(vectors),
        "category": pa.array(np.asarray(CATEGORIES)[category]),
        "year": pa.array(year, mask=rng.random(n) < 0.03),
        "price": pa.array(price, mask=rng.random(n) < 0.02),
        "explicit": pa.array(rng.random(n) < 0.15),
        "bucket": pa.array(rng.integers(0, BUCKETS, n)),
    })


def selectivity_predicate(fraction: float) -> str:
    """A predicate on ``bucket`` that matches about ``fraction`` of the items ('' for all)."""
    if fraction >= 1:
        return ""
    return f"bucket < {max(1, round(fraction * BUCKETS))}"


def random_predicates(n: int, seed: int = 0) -> list[str]:
    """``n`` predicates from a skewed mix: most filter on a few popular categories."""
    rng = np.random.default_rng([seed, 5])
    popular = _zipf_weights(len(CATEGORIES), 1.6)
    out = []
    for kind in rng.choice(6, n, p=[0.35, 0.2, 0.15, 0.12, 0.1, 0.08]):
        c1, c2 = np.asarray(CATEGORIES)[rng.choice(len(CATEGORIES), 2, replace=False, p=popular)]
        year = int(rng.integers(1970, 2020))
        if kind == 0:
            out.append(f"category = '{c1}'")
        elif kind == 1:
            out.append(f"category = '{c1}' AND year >= {year}")
        elif kind == 2:
            out.append(f"year BETWEEN {year} AND {year + int(rng.integers(2, 10))}")
        elif kind == 3:
            out.append(f"category IN ('{c1}', '{c2}') AND NOT explicit")
        elif kind == 4:
            out.append(f"category = '{c1}' AND price < {float(rng.integers(5, 30))}")
        else:
            out.append("")
    return out


def make_queries(
    n: int, dimension: int = 64, seed: int = 0, clusters: int = 64,
    predicates: list[str] | None = None, k: int | None = None,
) -> pa.Table:
    """``n`` queries near items made with the same ``seed`` and ``clusters``.

    ``predicates`` defaults to :func:`random_predicates`; a ``k`` column is added when given.
    """
    rng = np.random.default_rng([seed, 6])
    vectors, _ = _clustered(rng, _centers(dimension, clusters, seed), n, spread=0.8)
    columns = {
        "query_id": pa.array(np.arange(n, dtype=np.int64)),
        "vector": vectors_array(vectors),
        "predicate": pa.array(predicates if predicates is not None else random_predicates(n, seed)),
    }
    if k is not None:
        columns["k"] = pa.array(np.full(n, k, np.int64))
    return pa.table(columns)


def _filter_columns(items: pa.Table, max_distinct_share: float = 0.01) -> list[str]:
    """Attribute columns a predicate can sensibly filter on: numbers, bools, and strings
    with few distinct values (at most 100 or 1% of the rows: not free text or ids)."""
    out = []
    for field in items.schema:
        if field.name in (ID, VECTOR):
            continue
        t = field.type
        if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
            out.append(field.name)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            if len(items.column(field.name).unique()) <= max(100, max_distinct_share * items.num_rows):
                out.append(field.name)
    return out


def _condition(column: str, value, rng: np.random.Generator) -> Predicate:
    if isinstance(value, bool):
        return BoolColumn(column) if value else not_(BoolColumn(column))
    if isinstance(value, str):
        return Compare(column, "=", value)
    return Compare(column, ">=" if rng.random() < 0.5 else "<=", value)


def queries_from_items(items: pa.Table, n: int, seed: int = 0, unfiltered: float = 0.125) -> pa.Table:
    """``n`` queries drawn from ``items`` ("more like this item, with its own attributes").

    Each query is a random valid item's vector; its predicate holds for that item:
    one or two of its attribute values (strings and bools by equality, numbers by
    a range bounded by the item's value), or no filter for a share ``unfiltered``.
    Columns: query_id, vector, predicate.
    """
    valid = validate_items(items)
    rng = np.random.default_rng([seed, 7])
    rows = np.sort(rng.choice(valid.table.num_rows, min(n, valid.table.num_rows), replace=False))
    columns = _filter_columns(valid.table)
    records = valid.table.select(columns).take(pa.array(rows)).to_pylist() if columns else [{}] * len(rows)
    predicates = []
    for record in records:
        usable = [c for c in columns if record[c] is not None]
        if not usable or rng.random() < unfiltered:
            predicates.append("")
            continue
        chosen = rng.choice(len(usable), min(len(usable), int(rng.integers(1, 3))), replace=False)
        predicates.append(and_(*(_condition(usable[c], record[usable[c]], rng) for c in sorted(chosen))).to_text())
    return pa.table({
        "query_id": pa.array(np.arange(len(rows), dtype=np.int64)),
        "vector": vectors_array(valid.vectors[rows]),
        "predicate": pa.array(predicates, pa.string()),
    })
