"""The workload-aware partitioner: HQI's qd-tree (Mohoney et al., SIGMOD 2023; Yang et al., SIGMOD 2020).

A binary tree whose cuts are atomic conditions taken from past queries'
predicates. Fitting is greedy: at each node, the cut that saves the workload the most wins,
as long as both children keep at least the minimum size; a node no cut improves
becomes a leaf. A cut saves the rows it lets queries skip (summed over queries,
weighted by frequency), less a fixed cost, counted in rows, for each query that
must now search both children instead of one: searching a shard at all has a
price (a ScaNN search, a matrix product, a merge) that rows skipped must repay.
Each leaf is described by the conjunction of the cuts on its path, which is what
routing tests a query's predicate against. A leaf larger than the maximum size is
split further by k-means on its vectors, so no shard outgrows a worker.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamvec.index import kmeans
from beamvec.index.plan import PartitionPlan
from beamvec.index.boxes import Box, may_match
from beamvec.index.predicate import MATCH_ALL, Compare, In, Predicate, and_, not_true
from beamvec.index.parser import parse

# Columns tested for equality that get candidate range cuts, and cuts per column (at quantiles).
RANGE_CUT_COLUMNS = 2
RANGE_CUTS = 16
# The fixed cost of searching one more shard for one query, in rows scanned: about a
# ScaNN search's own cost (10-20 us here) over an exact row's (~6 us per 1,000 rows).
PAIR_COST_ROWS = 2_000


@dataclasses.dataclass(frozen=True)
class Workload:
    """Distinct past predicates with their frequencies."""

    predicates: tuple[Predicate, ...]
    weights: tuple[float, ...]

    @classmethod
    def of(cls, texts: Sequence[str | None], weights: Sequence[float] | None = None, max_distinct: int = 256) -> "Workload":
        """Group equal predicates (summing weights) and keep the ``max_distinct`` most frequent."""
        totals: dict[Predicate, float] = {}
        parsed: dict[str | None, Predicate] = {}
        for i, text in enumerate(texts):
            p = parsed.setdefault(text, parse(text))
            totals[p] = totals.get(p, 0.0) + (1.0 if weights is None else float(weights[i]))
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0].to_text()))[:max_distinct]
        return cls(tuple(p for p, _ in ranked), tuple(w for _, w in ranked))


class QdTreePlan(PartitionPlan):
    """A fitted qd-tree: cut nodes ``{"cut", "left", "right"}`` and leaves ``{"first", "centroids"}``.

    A leaf owns partitions ``first .. first + len(centroids) - 1`` (one when it has no
    centroids); node 0 is the root.
    """

    kind = "workload"

    def __init__(self, nodes: list[dict]):
        self.nodes = nodes
        self._cuts = {i: parse(n["cut"]) for i, n in enumerate(nodes) if "cut" in n}
        self._descriptions: list[Predicate] = []
        self._box_cache: list[Box] = []
        self._describe(0, [], Box.everything())

    def _describe(self, node: int, path: list[Predicate], box: Box) -> None:
        """Collect each leaf's description and box: the left child takes the cut, the right its
        negation, which includes the rows where the cut is null."""
        n = self.nodes[node]
        if "cut" in n:
            cut = self._cuts[node]
            self._describe(n["left"], path + [cut], box.restrict(cut, True))
            self._describe(n["right"], path + [not_true(cut)], box.restrict(cut, False))
        else:
            pieces = max(1, len(n.get("centroids") or []))
            self._descriptions += [and_(*path) if path else MATCH_ALL] * pieces
            self._box_cache += [box] * pieces

    @property
    def num_partitions(self) -> int:
        return len(self._descriptions)

    def descriptions(self) -> list[Predicate]:
        return list(self._descriptions)

    def assign(self, attributes: pa.Table, vectors: np.ndarray) -> np.ndarray:
        out = np.full(attributes.num_rows, -1, np.int64)
        stack = [(0, np.arange(attributes.num_rows))]
        while stack:
            node, rows = stack.pop()
            n = self.nodes[node]
            if "cut" in n:
                holds = self._cuts[node].evaluate(attributes)[rows]  # whole block: cheaper than taking rows
                stack += [(n["left"], rows[holds]), (n["right"], rows[~holds])]
            elif n.get("centroids"):
                out[rows] = n["first"] + kmeans.assign(vectors[rows], np.asarray(n["centroids"], np.float32))
            else:
                out[rows] = n["first"]
        return out

    def _json(self) -> dict:
        return {"kind": self.kind, "nodes": self.nodes}

    @classmethod
    def from_json(cls, obj: dict) -> "QdTreePlan":
        return cls(list(obj["nodes"]))

    @classmethod
    def fit(
        cls,
        attributes: pa.Table,
        vectors: np.ndarray,
        workload: Workload,
        min_rows: int,
        max_rows: int,
        total_rows: int | None = None,
        max_cuts: int = 64,
        seed: int = 0,
        pair_cost_rows: float = PAIR_COST_ROWS,
    ) -> "QdTreePlan":
        """Fit on a sample: ``attributes`` and ``vectors`` of the sampled rows.

        ``total_rows`` is the size of the whole collection (default: the sample's);
        ``min_rows`` and ``max_rows`` bound partition sizes in the whole collection;
        ``pair_cost_rows`` prices one more shard searched by one query (0: cut
        while any row is skipped).
        """
        return _Fitter(attributes, vectors, workload, min_rows, max_rows, total_rows or attributes.num_rows,
                       max_cuts, seed, pair_cost_rows).plan()


class _Fitter:
    """Greedy top-down construction of a qd-tree over a sample."""

    def __init__(self, attributes, vectors, workload, min_rows, max_rows, total_rows, max_cuts, seed, pair_cost_rows):
        if min_rows < 1 or max_rows < min_rows:
            raise ValueError(f"need 1 <= min_rows <= max_rows, got {min_rows} and {max_rows}")
        for p in workload.predicates:
            p.validate(attributes.schema)
        self.vectors = np.asarray(vectors, np.float32)
        self.queries = workload.predicates
        self.weights = np.asarray(workload.weights, np.float64)
        self.scale = total_rows / max(1, attributes.num_rows)
        self.min_rows, self.max_rows, self.seed = min_rows, max_rows, seed
        self.pair_cost = pair_cost_rows / self.scale  # in sampled rows, the unit of the rows skipped
        self.cuts = self._candidate_cuts(attributes, max_cuts)
        self.masks = [c.evaluate(attributes) for c in self.cuts]
        # A cut narrows the box on its own column only, so it can exclude only the
        # queries that read that column; the others keep reaching both children.
        self.query_columns = [tuple(sorted(q.columns())) for q in self.queries]
        self.affected = [np.array([bool(c.columns() & set(cols)) for cols in self.query_columns]) for c in self.cuts]
        self.nodes: list[dict] = []
        self.partitions = 0
        self._may: dict[tuple, bool] = {}

    def _candidate_cuts(self, attributes: pa.Table, max_cuts: int) -> list[Predicate]:
        """The workload's most used atoms, and range cuts on the columns it tests for equality."""
        weight: dict[Predicate, float] = {}
        by_value: dict[str, float] = {}
        values: dict[str, set] = {}
        for p, w in zip(self.queries, self.weights):
            for atom in p.atoms():
                weight[atom] = weight.get(atom, 0.0) + w
                if (isinstance(atom, Compare) and atom.op == "=") or (isinstance(atom, In) and not atom.negated):
                    by_value[atom.column] = by_value.get(atom.column, 0.0) + w
                    values.setdefault(atom.column, set()).update(
                        (atom.value,) if isinstance(atom, Compare) else atom.values)
        ranked = sorted(weight.items(), key=lambda item: (-item[1], item[0].to_text()))
        cuts = [a for a, _ in ranked[:max_cuts]]
        # A cut `x < v` keeps every `x = value` query on one side of it. Where the workload tests
        # more values than could each get a cut of their own (a tenant among hundreds), range cuts
        # let each value reach one shard instead of all of them.
        many = [c for c in by_value if len(values[c]) > max_cuts // 2]
        for column in sorted(many, key=lambda c: (-by_value[c], c))[:RANGE_CUT_COLUMNS]:
            cuts += [c for c in _range_cuts(attributes.column(column), column) if c not in cuts]
        return cuts

    def may(self, query: int, box: Box) -> bool:
        # Only the bounds on the query's own columns matter: boxes that agree there share the answer.
        key = (query, tuple(box.bounds(c) for c in self.query_columns[query]))
        if key not in self._may:
            self._may[key] = may_match(self.queries[query], box)
        return self._may[key]

    def plan(self) -> QdTreePlan:
        everything = Box.everything()
        reaching = np.array([q for q in range(len(self.queries)) if self.may(q, everything)], np.int64)
        self._grow(np.arange(len(self.vectors)), everything, reaching)
        return QdTreePlan(self.nodes)

    def _grow(self, rows: np.ndarray, box: Box, reaching: np.ndarray) -> int:
        node = len(self.nodes)
        self.nodes.append({})
        best = self._best_cut(rows, box, reaching)
        if best is None:
            self.nodes[node] = self._leaf(rows)
            return node
        cut, holds = best
        left_box, right_box = box.restrict(self.cuts[cut], True), box.restrict(self.cuts[cut], False)
        left = self._grow(rows[holds], left_box, self._still_reaching(cut, left_box, reaching))
        right = self._grow(rows[~holds], right_box, self._still_reaching(cut, right_box, reaching))
        self.nodes[node] = {"cut": self.cuts[cut].to_text(), "left": left, "right": right}
        return node

    def _best_cut(self, rows: np.ndarray, box: Box, reaching: np.ndarray) -> tuple[int, np.ndarray] | None:
        """The cut saving the most (weighted rows skipped, less the searches added), with both
        children large enough, or None when no cut saves anything."""
        best, best_gain = None, 0.0
        for c, mask in enumerate(self.masks):
            holds = mask[rows]
            n_left = int(holds.sum())
            if min(n_left, len(rows) - n_left) * self.scale < self.min_rows:
                continue
            left_box, right_box = box.restrict(self.cuts[c], True), box.restrict(self.cuts[c], False)
            affected = self.affected[c][reaching]
            gain = -self.pair_cost * float(self.weights[reaching[~affected]].sum())  # they reach both children
            for q in reaching[affected]:
                left, right = self.may(q, left_box), self.may(q, right_box)
                gain += self.weights[q] * ((not left) * n_left + (not right) * (len(rows) - n_left)
                                           - (left and right) * self.pair_cost)
            if gain > best_gain:
                best, best_gain = (c, holds), gain
        return best

    def _still_reaching(self, cut: int, box: Box, reaching: np.ndarray) -> np.ndarray:
        """The queries of ``reaching`` that may match rows of a child ``box`` made by ``cut``."""
        return np.array([q for q in reaching if not self.affected[cut][q] or self.may(q, box)], np.int64)

    def _leaf(self, rows: np.ndarray) -> dict:
        leaf: dict = {"first": self.partitions, "centroids": None}
        pieces = math.ceil(len(rows) * self.scale / self.max_rows)
        if pieces > 1 and len(rows) > 1:
            leaf["centroids"] = kmeans.fit(self.vectors[rows], pieces, self.seed).tolist()
        self.partitions += len(leaf["centroids"] or [None])
        return leaf


def _range_cuts(column: pa.ChunkedArray, name: str) -> list[Predicate]:
    """``name < v`` at the quantiles of the column's distinct sampled values (strings and integers)."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_integer(column.type)):
        return []
    values = pc.drop_null(column).to_numpy(zero_copy_only=False)
    if len(values) == 0:
        return []
    ordered = np.sort(values)
    picks = dict.fromkeys(ordered[len(ordered) * q // RANGE_CUTS] for q in range(1, RANGE_CUTS))
    return [Compare(name, "<", v.item() if isinstance(v, np.generic) else v) for v in picks if v != ordered[0]]
