"""Partition plans: which partition each row goes to, and which partitions each query visits.

A plan is fitted once on a sample (see ``fit_plan``), serialised into the index
manifest, and applied to every row (``assign``) and every query (``route``).
Plans route soundly: a partition holding a row that matches a query's predicate
is never skipped (vector-space plans, which cannot route by predicate, probe the
partitions nearest the query instead).

Kinds: ``workload`` (the HQI qd-tree, :mod:`beamvec.index.qdtree`), ``hash``,
``attribute:COL`` and ``kmeans``.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar, Sequence

import numpy as np
import pyarrow as pa

from beamvec.index import kmeans, layout
from beamvec.index.hashing import id_hashes
from beamvec.index.boxes import Box, may_match
from beamvec.index.predicate import MATCH_ALL, Predicate, literal_text, quote_identifier
from beamvec.index.parser import parse

_ROUTE_CACHE = 100_000


class PartitionPlan(abc.ABC):
    """Assigns rows to partitions 0..num_partitions-1 and routes queries to them.

    ``row_order``: the columns each partition's shard sorts its rows by (fitted from
    the workload, see :mod:`beamvec.index.layout`; empty for id order).
    """

    kind: ClassVar[str]
    row_order: tuple[str, ...] = ()

    @property
    @abc.abstractmethod
    def num_partitions(self) -> int:
        """How many partitions the plan makes."""

    @abc.abstractmethod
    def descriptions(self) -> list[Predicate]:
        """Per partition, a predicate every row in it satisfies (MATCH_ALL when none)."""

    @abc.abstractmethod
    def assign(self, attributes: pa.Table, vectors: np.ndarray) -> np.ndarray:
        """The partition of each row (int array), from its attributes (with ``id``) and vector."""

    @abc.abstractmethod
    def _json(self) -> dict:
        """This kind's fields, with its ``kind`` key."""

    def to_json(self) -> dict:
        """A plain JSON-able dict with a ``kind`` key; :func:`plan_from_json` inverts it."""
        return {**self._json(), "row_order": list(self.row_order)} if self.row_order else self._json()

    routes_by_vector = False
    """Whether :meth:`route` looks at query vectors (else only at predicates, as descriptions do)."""

    def route(self, groups: dict[Predicate, np.ndarray], vectors: np.ndarray) -> list[np.ndarray]:
        """Per partition, the positions of the queries that must visit it.

        ``groups`` maps each distinct predicate to its query positions. This default
        routes by description: a query visits every partition whose description can
        hold together with its predicate.
        """
        routed: list[list[np.ndarray]] = [[] for _ in range(self.num_partitions)]
        for p, members in groups.items():
            for ordinal in self._reachable(p):
                routed[ordinal].append(members)
        return [np.sort(np.concatenate(r)) if r else np.zeros(0, np.int64) for r in routed]

    def _reachable(self, predicate: Predicate) -> list[int]:
        """The partitions whose description may hold together with ``predicate`` (cached)."""
        if not hasattr(self, "_route_cache"):
            self._route_cache: dict[Predicate, list[int]] = {}
        reachable = self._route_cache.get(predicate)
        if reachable is None:
            reachable = [o for o, box in enumerate(self._boxes()) if may_match(predicate, box)]
            if len(self._route_cache) >= _ROUTE_CACHE:
                self._route_cache.pop(next(iter(self._route_cache)))
            self._route_cache[predicate] = reachable
        return reachable

    def clear_caches(self) -> None:
        """Forget the routes of predicates seen so far (a fresh batch pays for its own routing)."""
        self._route_cache = {}

    def _boxes(self) -> list[Box]:
        if not hasattr(self, "_box_cache"):
            self._box_cache = [Box.everything().restrict(d, True) for d in self.descriptions()]
        return self._box_cache


class SinglePlan(PartitionPlan):
    """Everything in one partition."""

    kind = "single"

    @property
    def num_partitions(self) -> int:
        return 1

    def descriptions(self) -> list[Predicate]:
        return [MATCH_ALL]

    def assign(self, attributes: pa.Table, vectors: np.ndarray) -> np.ndarray:
        return np.zeros(len(vectors), np.int64)

    def _json(self) -> dict:
        return {"kind": self.kind}


class HashPlan(PartitionPlan):
    """Workload-oblivious: partition = a stable hash of the id, modulo ``partitions``."""

    kind = "hash"

    def __init__(self, partitions: int):
        self.partitions = partitions

    @property
    def num_partitions(self) -> int:
        return self.partitions

    def descriptions(self) -> list[Predicate]:
        return [MATCH_ALL] * self.partitions

    def assign(self, attributes: pa.Table, vectors: np.ndarray) -> np.ndarray:
        return (id_hashes(attributes.column("id").combine_chunks()) % np.uint64(self.partitions)).astype(np.int64)

    def _json(self) -> dict:
        return {"kind": self.kind, "partitions": self.partitions}


class AttributePlan(PartitionPlan):
    """A partition key: one partition per value (or value range) of one column.

    Strings and bools: one partition per value seen in the sample, one for values not
    seen, one for null. Numbers and timestamps: ranges between sample quantiles, and
    one for null.
    """

    kind = "attribute"

    def __init__(self, column: str, parts: Sequence[Predicate]):
        self.column = column
        self.parts = list(parts)

    @classmethod
    def fit(cls, sample: pa.Table, column: str, max_ranges: int = 16) -> "AttributePlan":
        """Partitions of ``column`` from a sample of the items."""
        if column not in sample.column_names:
            raise ValueError(f"attribute:{column}: no such column; columns are {', '.join(sample.column_names)}")
        values = sample.column(column)
        if not (pa.types.is_string(values.type) or pa.types.is_boolean(values.type)
                or pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
            raise ValueError(f"attribute:{column}: type {values.type} cannot key partitions (strings, bools, numbers can)")
        name = quote_identifier(column)
        distinct = sorted({v for v in values.to_pylist() if v is not None}, key=repr)
        if pa.types.is_string(values.type) or pa.types.is_boolean(values.type) or len(distinct) <= max_ranges:
            literal = [literal_text(v) for v in distinct]
            parts = [parse(f"{name} = {v}") for v in literal]
            if literal and not pa.types.is_boolean(values.type):
                parts.append(parse(f"{name} NOT IN ({', '.join(literal)})"))
        else:
            numbers = np.asarray([v for v in values.to_pylist() if v is not None])
            cuts = sorted(set(np.quantile(numbers, np.linspace(0, 1, max_ranges + 1)[1:-1], method="lower").tolist()))
            cuts = [literal_text(c) for c in cuts]
            parts = [parse(f"{name} < {cuts[0]}")]
            parts += [parse(f"{name} >= {a} AND {name} < {b}") for a, b in zip(cuts, cuts[1:])]
            parts.append(parse(f"{name} >= {cuts[-1]}"))
        parts.append(parse(f"{name} IS NULL"))
        return cls(column, parts)

    @property
    def num_partitions(self) -> int:
        return len(self.parts)

    def descriptions(self) -> list[Predicate]:
        return list(self.parts)

    def assign(self, attributes: pa.Table, vectors: np.ndarray) -> np.ndarray:
        out = np.full(attributes.num_rows, -1, np.int64)
        for ordinal, part in enumerate(self.parts):
            out[(out < 0) & part.evaluate(attributes)] = ordinal
        if (out < 0).any():
            raise ValueError(f"attribute:{self.column}: {int((out < 0).sum())} rows fit no partition")
        return out

    def _json(self) -> dict:
        return {"kind": self.kind, "column": self.column, "parts": [p.to_text() for p in self.parts]}


class KMeansPlan(PartitionPlan):
    """Vector-space partitions (IVF-like): rows go to the nearest centroid, queries probe the nearest few."""

    kind = "kmeans"
    routes_by_vector = True

    def __init__(self, centroids: np.ndarray, probes: int):
        self.centroids = np.asarray(centroids, np.float32)
        self.probes = probes

    @classmethod
    def fit(cls, vectors: np.ndarray, partitions: int, probes: int | None = None, seed: int = 0) -> "KMeansPlan":
        centroids = kmeans.fit(vectors, partitions, seed)
        return cls(centroids, probes or max(1, math.ceil(len(centroids) / 4)))

    @property
    def num_partitions(self) -> int:
        return len(self.centroids)

    def descriptions(self) -> list[Predicate]:
        return [MATCH_ALL] * len(self.centroids)

    def assign(self, attributes: pa.Table, vectors: np.ndarray) -> np.ndarray:
        return kmeans.assign(vectors, self.centroids).astype(np.int64)

    def route(self, groups: dict[Predicate, np.ndarray], vectors: np.ndarray) -> list[np.ndarray]:
        n = sum(len(m) for m in groups.values())
        nearest = kmeans.nearest(vectors[:n], self.centroids, self.probes)
        return [np.flatnonzero((nearest == ordinal).any(axis=1)) for ordinal in range(len(self.centroids))]

    def _json(self) -> dict:
        return {"kind": self.kind, "probes": self.probes, "centroids": self.centroids.tolist()}


def fit_plan(
    spec: str,
    attributes: pa.Table,
    vectors: np.ndarray,
    workload: Sequence[str | None] | None = None,
    min_rows: int = 10_000,
    max_rows: int = 100_000,
    total_rows: int | None = None,
    partitions: int | None = None,
    seed: int = 0,
) -> PartitionPlan:
    """Fit the plan ``spec`` names (workload, hash, attribute:COL, kmeans, single) on a sample.

    ``attributes`` (with ``id``) and ``vectors`` are the sampled rows; ``total_rows``
    the whole collection's size (default: the sample's). ``partitions`` sets the count
    for hash and kmeans (default: enough for ``max_rows`` each). With a ``workload``,
    the plan also orders each shard's rows by the columns it filters on most.
    """
    plan = _fit_kind(spec, attributes, vectors, workload, min_rows, max_rows, total_rows, partitions, seed)
    if workload:
        plan.row_order = layout.cluster_columns(workload, attributes.schema)
    return plan


def _fit_kind(spec: str, attributes: pa.Table, vectors: np.ndarray, workload: Sequence[str | None] | None,
              min_rows: int, max_rows: int, total_rows: int | None, partitions: int | None,
              seed: int) -> PartitionPlan:
    total_rows = total_rows or attributes.num_rows
    count = partitions or max(1, math.ceil(total_rows / max_rows))
    if spec == "workload":
        from beamvec.index.qdtree import QdTreePlan, Workload

        if not workload:
            raise ValueError("the workload partitioner needs a workload: a list of past query predicates")
        return QdTreePlan.fit(attributes, vectors, Workload.of(workload), min_rows, max_rows, total_rows, seed=seed)
    if spec == "hash":
        return HashPlan(count)
    if spec.startswith("attribute:"):
        return AttributePlan.fit(attributes, spec.split(":", 1)[1])
    if spec == "kmeans":
        return KMeansPlan.fit(vectors, count, seed=seed)
    check_partitioner(spec)
    return SinglePlan()


def check_partitioner(spec: str) -> str:
    """``spec`` if it names a partitioner (workload, hash, attribute:COL, kmeans, single); ValueError otherwise."""
    if spec in ("workload", "hash", "kmeans", "single") or (spec.startswith("attribute:") and spec[len("attribute:"):]):
        return spec
    raise ValueError(f"unknown partitioner {spec!r}; expected workload, hash, attribute:COL, kmeans or single")


def plan_from_json(obj: dict | None) -> PartitionPlan:
    """The plan a manifest holds (a single partition when it holds none)."""
    plan = _plan_from_json(obj)
    plan.row_order = tuple(str(c) for c in (obj or {}).get("row_order", ()))
    return plan


def _plan_from_json(obj: dict | None) -> PartitionPlan:
    if obj is None:
        return SinglePlan()
    kind = obj.get("kind")
    if kind == "single":
        return SinglePlan()
    if kind == "hash":
        return HashPlan(int(obj["partitions"]))
    if kind == "attribute":
        return AttributePlan(obj["column"], [parse(t) for t in obj["parts"]])
    if kind == "kmeans":
        return KMeansPlan(np.asarray(obj["centroids"], np.float32), int(obj["probes"]))
    if kind == "workload":
        from beamvec.index.qdtree import QdTreePlan

        return QdTreePlan.from_json(obj)
    raise ValueError(f"unknown partition plan kind {kind!r}")


def rows_scanned(plan: PartitionPlan, sizes: np.ndarray, predicates: Sequence[str | Predicate | None],
                 vectors: np.ndarray) -> np.ndarray:
    """Per query, the rows of the partitions it is routed to (``sizes``: rows per partition)."""
    groups: dict[Predicate, list[int]] = {}
    for i, p in enumerate(predicates):
        groups.setdefault(p if isinstance(p, Predicate) else parse(p), []).append(i)
    out = np.zeros(len(predicates), np.int64)
    for part, members in enumerate(plan.route({p: np.asarray(m) for p, m in groups.items()}, vectors)):
        out[members] += int(sizes[part])
    return out
