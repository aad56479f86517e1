"""Generated data sets: realistic enough to exercise every part, small enough to ship as code.

Independent workloads, so that nothing is tuned to one generator; :data:`GENERATORS`
names them, each a :class:`Generator` of (items, predicates, queries):

* ``catalog``, music-like: :func:`make_items` makes unit-norm clustered vectors with
  attributes that correlate with the clusters, as real catalogues do: ``category``
  (skewed, most rows of a cluster share a few categories), ``year`` (int, 3% null),
  ``price`` (float, 2% null), ``explicit`` (bool) and ``bucket`` (uniform 0..999, for
  predicates of an exact selectivity: ``bucket < 10`` matches 1% of rows).
  :func:`random_predicates` draws a skewed mix (most filter on a few popular
  categories) and :func:`make_queries` query vectors near the items.
* ``tenants``, a multi-tenant SaaS collection: :func:`make_tenant_items` has
  ``tenant`` (300 of them, Zipf-sized, each owning a few topical clusters),
  ``region`` (8), ``created`` (day number, 15 years), ``score`` (float, 5% null),
  ``priority`` (0..9, 10% null), ``archived`` (bool, more likely for old rows) and
  ``size_kb`` (heavy-tailed). :func:`tenant_predicates` is a log-like mix (hot
  tenants, a long tail; ranges of random width, IN, OR, NOT, IS NULL) matching from
  none to all of the rows, and :func:`make_tenant_queries` searches near the
  clusters of the tenant a query names.

* ``tags``, the NeurIPS'23 filtered track's shape: :func:`make_tag_items` gives each item a bag of
  tags (list<string>, a Zipf vocabulary of 10,000, tags following the vectors' clusters),
  :func:`tag_predicates` requires one tag or two (CONTAINS / CONTAINS ALL), matching from a few
  rows to 10%, and :func:`make_tag_queries` searches near the named tag's home cluster.

Also :func:`selectivity_predicate`, a predicate matching a given fraction of rows, and
:func:`queries_from_items`: queries and predicates taken from any item table (each
query is an item's vector, filtered on that item's own attribute values).

Everything is a pure function of its arguments and seed.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def _centers(dimension: int, clusters: int, seed: int, stream: int = 1) -> np.ndarray:
    return np.random.default_rng([seed, stream]).standard_normal((clusters, dimension)).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    weights = _zipf_weights(len(centers), 0.5)
    assignment = rng.choice(len(centers), n, p=weights)
    noise = rng.standard_normal((n, centers.shape[1])).astype(np.float32)
    return _normalise(centers[assignment] + spread * noise), assignment


def _around(rng: np.random.Generator, centers: np.ndarray, cluster: np.ndarray, spread: float = 0.8) -> np.ndarray:
    """Unit vectors near ``centers[cluster]`` (in place, as float32: fast for millions)."""
    vectors = rng.standard_normal((len(cluster), centers.shape[1]), dtype=np.float32)
    vectors *= spread
    vectors += centers[cluster]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


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


TENANTS = 300
REGIONS = ("us", "eu", "uk", "de", "ca", "in", "jp", "br")
FIRST_DAY, LAST_DAY = 14_610, 20_088
"""The range of ``created``: days since 1970-01-01, from 2010-01-01 to 2024-12-31."""
_HOMES = 3  # clusters a tenant's data mostly lives in
_NAMED_TENANT = re.compile(r"\btenant\s*(?:=|IN\s*\()\s*'t(\d+)'", re.IGNORECASE)


class _Tenants(NamedTuple):
    names: pa.Array  # 't0000', 't0001', ...
    weight: np.ndarray  # each tenant's share of the rows
    homes: np.ndarray  # (tenants, _HOMES) clusters
    region: np.ndarray  # home region
    start: np.ndarray  # first ``created`` day


def _tenant_ranking(seed: int, tenants: int) -> np.ndarray:
    """Tenant numbers, biggest (and most queried) first."""
    return np.random.default_rng([seed, 21]).permutation(tenants)


def _tenants(seed: int, tenants: int, clusters: int) -> _Tenants:
    rng = np.random.default_rng([seed, 22])
    weight = np.empty(tenants)
    weight[_tenant_ranking(seed, tenants)] = _zipf_weights(tenants, 1.0)
    return _Tenants(
        names=pa.array([f"t{i:04d}" for i in range(tenants)]),
        weight=weight,
        homes=rng.choice(clusters, (tenants, _HOMES), p=_zipf_weights(clusters, 0.5)),
        region=rng.choice(len(REGIONS), tenants, p=_zipf_weights(len(REGIONS))),
        start=rng.integers(FIRST_DAY, LAST_DAY - 30, tenants),
    )


def make_tenant_items(
    n: int, dimension: int = 64, seed: int = 0, clusters: int = 64, ids: str = "int", *, tenants: int = TENANTS,
) -> pa.Table:
    """``n`` rows of a multi-tenant collection: ``id`` (as in :func:`make_items`), ``vector``,
    ``tenant``, ``region``, ``created``, ``score``, ``priority``, ``archived``, ``size_kb``.

    80% of a tenant's rows lie in its few home clusters, 90% in its home region; each
    tenant's ``created`` runs from its sign-up day to :data:`LAST_DAY`, growing over time.
    The attributes do not depend on ``dimension``.
    """
    layout = _tenants(seed, tenants, clusters)
    rng = np.random.default_rng([seed, 23])
    tenant = rng.choice(tenants, n, p=layout.weight)
    cluster = np.where(rng.random(n) < 0.8, layout.homes[tenant, rng.integers(0, _HOMES, n)],
                       rng.choice(clusters, n, p=_zipf_weights(clusters, 0.5)))
    vectors = _around(np.random.default_rng([seed, 26]), _centers(dimension, clusters, seed, stream=20), cluster)
    region = np.where(rng.random(n) < 0.9, layout.region[tenant], rng.integers(0, len(REGIONS), n))
    start = layout.start[tenant]
    created = start + ((LAST_DAY - start) * np.sqrt(rng.random(n))).astype(np.int64)
    age = (LAST_DAY - created) / (LAST_DAY - FIRST_DAY)
    id_values = pa.array(np.arange(n, dtype=np.int64))
    return pa.table({
        "id": id_values if ids == "int" else pc.binary_join_element_wise("item-", id_values.cast(pa.string()), ""),
        "vector": vectors_array(vectors),
        "tenant": layout.names.take(pa.array(tenant)),
        "region": pa.array(REGIONS).take(pa.array(region)),
        "created": pa.array(created),
        "score": pa.array(np.round(rng.beta(2, 5, n), 3), mask=rng.random(n) < 0.05),
        "priority": pa.array(rng.choice(10, n, p=_zipf_weights(10, 0.7)), mask=rng.random(n) < 0.1),
        "archived": pa.array(rng.random(n) < 0.05 + 0.6 * age),
        "size_kb": pa.array(np.ceil(rng.lognormal(3.0, 1.6, n)).astype(np.int64)),
    })


TENANT_PREDICATE_MIX = {
    "tenant": 0.25,  # tenant = 't0042'
    "tenant_range": 0.20,  # ... AND created / size_kb in a range of random width
    "tenant_in": 0.08,  # tenant IN (2..6 tenants)
    "region_in": 0.07,  # region IN (2..6 regions) [AND priority >= p]
    "archived": 0.08,  # NOT archived AND tenant IN (...), archived AND tenant = ...
    "or": 0.08,  # region = 'eu' OR priority >= 8, tenant = ... AND (... OR ...)
    "not_region": 0.05,  # NOT (region IN (...)) [AND created >= d]
    "null": 0.06,  # IS NULL / IS NOT NULL, alone or with a tenant or region
    "range": 0.06,  # created, size_kb or score alone
    "none": 0.07,  # ''
}
"""The kinds of :func:`tenant_predicates` and their shares."""


def tenant_predicates(n: int, seed: int = 0) -> list[str]:
    """``n`` predicates over :func:`make_tenant_items` columns, drawn like a query log.

    Kinds and shares are :data:`TENANT_PREDICATE_MIX`. Tenants are picked by a Zipf law
    over their size (big tenants query most, a long tail of small ones), regions by
    popularity; range widths are log-uniform (1 day to 14 years, 1 kB to 100 MB), so
    most texts are distinct and they match anywhere from no rows to all of them.
    """
    rng = np.random.default_rng([seed, 24])
    ranking = _tenant_ranking(seed, TENANTS)
    tenant_p, region_p = _zipf_weights(TENANTS, 0.9), _zipf_weights(len(REGIONS))
    kinds = np.asarray(list(TENANT_PREDICATE_MIX))[rng.choice(len(TENANT_PREDICATE_MIX), n,
                                                              p=list(TENANT_PREDICATE_MIX.values()))]
    tenants = ranking[rng.choice(TENANTS, n, p=tenant_p)]
    regions = np.asarray(REGIONS)[rng.choice(len(REGIONS), n, p=region_p)]
    variants = rng.integers(0, 3, n)

    def some_tenants(low: int, high: int) -> list[str]:
        chosen = rng.choice(TENANTS, int(rng.integers(low, high + 1)), replace=False, p=tenant_p)
        return [f"'t{t:04d}'" for t in ranking[chosen]]

    def some_regions(low: int, high: int) -> str:
        chosen = rng.choice(len(REGIONS), int(rng.integers(low, high + 1)), replace=False, p=region_p)
        return ", ".join(f"'{REGIONS[r]}'" for r in chosen)

    def window() -> str:
        if rng.random() < 0.6:
            days = int(10 ** rng.uniform(0, 3.7))
            if rng.random() < 0.5:
                return f"created >= {LAST_DAY - days}"
            low = int(rng.integers(FIRST_DAY, LAST_DAY - days))
            return f"created BETWEEN {low} AND {low + days}"
        kb = int(10 ** rng.uniform(0, 5))
        return (f"size_kb >= {kb}", f"size_kb < {kb}",
                f"size_kb BETWEEN {kb} AND {kb * int(rng.integers(2, 100))}")[int(rng.integers(3))]

    out = []
    for kind, t, r, variant in zip(kinds, tenants, regions, variants):
        tenant, region = f"tenant = 't{t:04d}'", f"region = '{r}'"
        if kind == "tenant":
            out.append(tenant)
        elif kind == "tenant_range":
            out.append(f"{tenant} AND {window()}")
        elif kind == "tenant_in":
            out.append(f"tenant IN ({', '.join(some_tenants(2, 6))})")
        elif kind == "region_in":
            regions_in = f"region IN ({some_regions(2, 6)})"
            out.append(f"{regions_in} AND priority >= {int(rng.integers(1, 9))}" if variant == 0 else regions_in)
        elif kind == "archived":
            out.append((f"NOT archived AND tenant IN ({', '.join(some_tenants(2, 6))})",
                        f"NOT archived AND {tenant}", f"archived AND {tenant}")[variant])
        elif kind == "or":
            if variant == 0:
                out.append(f"{region} OR priority >= {int(rng.integers(7, 10))}")
            elif variant == 1:
                score = f"score >= {rng.uniform(0.3, 0.9):.2f}"
                out.append(f"{tenant} AND (priority >= {int(rng.integers(5, 10))} OR {score})")
            else:
                out.append(f"({' OR '.join(f'tenant = {x}' for x in some_tenants(2, 2))}) AND NOT archived")
        elif kind == "not_region":
            not_in = f"NOT (region IN ({some_regions(1, 3)}))"
            out.append(f"{not_in} AND {window()}" if variant == 0 else not_in)
        elif kind == "null":
            out.append((f"{tenant} AND score IS NULL", f"priority IS NULL AND {region}",
                        ("score IS NOT NULL", "priority IS NOT NULL")[int(rng.integers(2))])[variant])
        elif kind == "range":
            out.append(f"score >= {rng.uniform(0, 0.9):.2f}" if variant == 0 else window())
        else:
            out.append("")
    return out


def make_tenant_queries(
    n: int, dimension: int = 64, seed: int = 0, clusters: int = 64,
    predicates: list[str] | None = None, k: int | None = None,
) -> pa.Table:
    """``n`` queries near items made with the same ``seed`` and ``clusters`` (and default tenants).

    ``predicates`` defaults to :func:`tenant_predicates`. A query whose predicate names a
    tenant (``tenant = ...`` or ``tenant IN (...)``, the first one) mostly searches that
    tenant's home clusters. Columns as in :func:`make_queries`.
    """
    predicates = predicates if predicates is not None else tenant_predicates(n, seed)
    layout = _tenants(seed, TENANTS, clusters)
    named = np.array([int(m.group(1)) if (m := _NAMED_TENANT.search(p or "")) else -1 for p in predicates],
                     dtype=np.int64)
    named[named >= TENANTS] = -1
    rng = np.random.default_rng([seed, 25])
    home = layout.homes[np.maximum(named, 0), rng.integers(0, _HOMES, n)]
    cluster = np.where((named >= 0) & (rng.random(n) < 0.9), home,
                       rng.choice(clusters, n, p=_zipf_weights(clusters, 0.5)))
    return _queries_table(_around(rng, _centers(dimension, clusters, seed, stream=20), cluster), predicates, k)


VOCABULARY = 10_000
_NAMED_TAG = re.compile(r"CONTAINS\s*(?:ALL\s*\(|ANY\s*\()?\s*'tag(\d+)'", re.IGNORECASE)


class _Tags(NamedTuple):
    weight: np.ndarray  # each tag's share of all tag draws (Zipf over a seeded ranking)
    home: np.ndarray  # the cluster each tag mostly describes
    ranking: np.ndarray  # tag numbers, most used first


def _tag_layout(seed: int, clusters: int) -> _Tags:
    rng = np.random.default_rng([seed, 31])
    ranking = rng.permutation(VOCABULARY)
    weight = np.empty(VOCABULARY)
    weight[ranking] = _zipf_weights(VOCABULARY, 0.8)
    return _Tags(weight, rng.choice(clusters, VOCABULARY, p=_zipf_weights(clusters, 0.5)), ranking)


def _tag_names(numbers: np.ndarray) -> np.ndarray:
    return np.char.add("tag", np.char.zfill(numbers.astype(str), 5))


def make_tag_items(n: int, dimension: int = 64, seed: int = 0, clusters: int = 64, ids: str = "int") -> pa.Table:
    """``n`` images-like items with a bag of tags, as the NeurIPS'23 filtered track's YFCC data has:
    ``id``, ``vector`` and ``tags`` (list<string> from a Zipf vocabulary of :data:`VOCABULARY` tags,
    1 to 40 per item, about 5 on average; 2% of lists empty, 1% null). Each tag has a home cluster:
    70% of an item's tags are drawn among its own cluster's tags, so tags follow the vectors."""
    layout = _tag_layout(seed, clusters)
    rng = np.random.default_rng([seed, 32])
    vectors, cluster = _clustered(rng, _centers(dimension, clusters, seed, stream=30), n, spread=0.8)
    counts = np.clip(np.round(rng.lognormal(np.log(4), 0.8, n)), 1, 40).astype(np.int64)
    counts[rng.random(n) < 0.02] = 0
    owner = np.repeat(np.arange(n), counts)
    # Draws among one cluster's tags: the tags ordered by home, cumulative weight within each home.
    by_home = np.lexsort((-layout.weight, layout.home))
    within = layout.weight[by_home]
    totals = np.bincount(layout.home, weights=layout.weight, minlength=clusters)
    home_of = layout.home[by_home]
    scale = np.where(totals > 0, totals, 1.0)
    cumulative = home_of + (np.cumsum(within) - np.concatenate([[0], np.cumsum(totals)])[home_of]) / scale[home_of]
    local = by_home[np.minimum(np.searchsorted(cumulative, cluster[owner] + rng.random(len(owner))), VOCABULARY - 1)]
    anywhere = rng.choice(VOCABULARY, len(owner), p=layout.weight)
    tags = np.where(rng.random(len(owner)) < 0.7, local, anywhere)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    null = rng.random(n) < 0.01
    id_values = pa.array(np.arange(n, dtype=np.int64))
    return pa.table({
        "id": id_values if ids == "int" else pc.binary_join_element_wise("item-", id_values.cast(pa.string()), ""),
        "vector": vectors_array(vectors),
        "tags": pa.ListArray.from_arrays(pa.array(offsets), pa.array(_tag_names(np.arange(VOCABULARY))).take(tags),
                                         mask=pa.array(null)),
    })


def tag_predicates(n: int, seed: int = 0, *, clusters: int = 64) -> list[str]:
    """``n`` filtered-track queries' predicates over :func:`make_tag_items`: half require one tag
    (``tags CONTAINS 'tag01234'``), half two (``tags CONTAINS ALL (...)``: the second a tag of the first
    one's home cluster, so that most pairs co-occur). The first tag's popularity rank is log-uniform,
    so selectivities run from the rarest tags (a few rows in a million) to the most common (10-20%)."""
    layout = _tag_layout(seed, clusters)
    rng = np.random.default_rng([seed, 33])
    first = layout.ranking[np.minimum((10 ** rng.uniform(0, np.log10(VOCABULARY), n)).astype(np.int64) - 1,
                                      VOCABULARY - 1)]
    out = []
    for tag, two in zip(first, rng.random(n) < 0.5):
        if not two:
            out.append(f"tags CONTAINS '{_tag_names(np.array([tag]))[0]}'")
            continue
        mates = np.flatnonzero(layout.home == layout.home[tag])
        mates = mates[mates != tag] if len(mates) > 1 else np.flatnonzero(np.arange(VOCABULARY) != tag)
        mate = rng.choice(mates, p=layout.weight[mates] / layout.weight[mates].sum())
        out.append(f"tags CONTAINS ALL ({', '.join(repr(str(t)) for t in _tag_names(np.array([tag, mate])))})")
    return out


def make_tag_queries(
    n: int, dimension: int = 64, seed: int = 0, clusters: int = 64,
    predicates: list[str] | None = None, k: int | None = None,
) -> pa.Table:
    """``n`` queries near :func:`make_tag_items` items of the same ``seed``: a query naming a tag
    (the first one) searches that tag's home cluster 80% of the time. Columns as in :func:`make_queries`."""
    predicates = predicates if predicates is not None else tag_predicates(n, seed, clusters=clusters)
    layout = _tag_layout(seed, clusters)
    named = np.array([int(m.group(1)) if (m := _NAMED_TAG.search(p or "")) else -1 for p in predicates], np.int64)
    named[named >= VOCABULARY] = -1
    rng = np.random.default_rng([seed, 34])
    cluster = np.where((named >= 0) & (rng.random(n) < 0.8), layout.home[np.maximum(named, 0)],
                       rng.choice(clusters, n, p=_zipf_weights(clusters, 0.5)))
    return _queries_table(_around(rng, _centers(dimension, clusters, seed, stream=30), cluster), predicates, k)


def _queries_table(vectors: np.ndarray, predicates: list[str], k: int | None) -> pa.Table:
    """Columns as in :func:`make_queries`: query_id, vector, predicate (and k when given)."""
    columns = {
        "query_id": pa.array(np.arange(len(vectors), dtype=np.int64)),
        "vector": vectors_array(vectors),
        "predicate": pa.array(predicates, pa.string()),
    }
    if k is not None:
        columns["k"] = pa.array(np.full(len(vectors), k, np.int64))
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


class Generator(NamedTuple):
    """A workload: ``items(n, dimension, seed, clusters, ids)``, ``predicates(n, seed)`` and
    ``queries(n, dimension, seed, clusters, predicates=None, k=None)``, queries near the items
    of the same seed."""

    items: Callable[..., pa.Table]
    predicates: Callable[..., list[str]]
    queries: Callable[..., pa.Table]


GENERATORS: dict[str, Generator] = {
    "catalog": Generator(make_items, random_predicates, make_queries),
    "tenants": Generator(make_tenant_items, tenant_predicates, make_tenant_queries),
    "tags": Generator(make_tag_items, tag_predicates, make_tag_queries),
}
"""The workload generators by name."""


def generate(generator: str, num_items: int, dimension: int, num_queries: int,
             seed: int = 0) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Items, queries and a workload log (predicates with their query vectors) from
    ``GENERATORS[generator]``. The queries and the log are the two halves of one draw of
    2 x ``num_queries`` queries of the items' seed: independent draws from the same distribution
    (a draw of another seed would be a different world: its query vectors lie around other
    cluster centres, and for tenants other tenants are the big ones)."""
    make = GENERATORS[generator]
    items = make.items(num_items, dimension, seed)
    both = make.queries(2 * num_queries, dimension, seed, predicates=make.predicates(2 * num_queries, seed))
    log = both.slice(num_queries).drop_columns(["query_id"])
    return items, both.slice(0, num_queries), log
