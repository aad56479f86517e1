"""Workload drift: how well an index's partition plan still fits the queries it now gets.

A plan fits a workload when its queries scan few rows beyond those that match them. On a sample
of the items, :func:`plan_cost` measures a plan against a log: rows scanned per query (the rows
of the partitions it is routed to), the lower bound (its matching rows: no plan scans fewer) and
shards searched per query. :func:`decide` compares the current plan with one fitted to the new
log: the *fit* is the refitted plan's rows scanned over the current plan's (1: as good as a fresh
plan; 0.5: the current plan scans twice the rows), and a fit below the threshold calls for a
re-plan (a full rebuild), which :class:`beamvec.transforms.Reindex` then does.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from beamvec.index.columns import masks_of
from beamvec.index.plan import PartitionPlan, rows_scanned
from beamvec.index.querylog import QueryLog

DEFAULT_THRESHOLD = 0.67


class PlanCost(NamedTuple):
    """A plan's cost on a workload, per query, scaled to the whole collection."""

    rows_scanned: float
    lower_bound: float
    shards: float

    def to_json(self) -> dict:
        return {"rows_scanned": round(self.rows_scanned, 1), "lower_bound": round(self.lower_bound, 1),
                "shards": round(self.shards, 2)}


def plan_cost(plan: PartitionPlan, attributes: pa.Table, vectors: np.ndarray, log: QueryLog,
              total_rows: int) -> PlanCost:
    """``plan`` on the log's queries over a sample (``attributes`` with id, ``vectors``) of a collection
    of ``total_rows``. Queries without vectors are routed by their predicate alone (a vector-routed
    plan then sends them to its first probes of a zero vector)."""
    predicates = [p or None for p in log.predicates]
    query_vectors = np.zeros((len(predicates), vectors.shape[1]), np.float32)
    if log.vectors is not None:
        query_vectors[log.vector_rows] = log.vectors
    scale = total_rows / max(attributes.num_rows, 1)
    sizes = np.bincount(plan.assign(attributes, vectors), minlength=plan.num_partitions)
    scanned = rows_scanned(plan, sizes, predicates, query_vectors)
    masks = masks_of(attributes, predicates)
    lower = np.array([attributes.num_rows if masks[p] is None else int(masks[p].sum()) for p in predicates])
    shards = rows_scanned(plan, (sizes > 0).astype(np.int64), predicates, query_vectors)
    return PlanCost(float(scanned.mean()) * scale, float(lower.mean()) * scale, float(shards.mean()))


class Decision(NamedTuple):
    """Whether to re-plan: ``replan``, ``fit`` (refitted rows scanned / current), the threshold, both
    plans' costs and a sentence saying why."""

    replan: bool
    fit: float
    threshold: float
    current: PlanCost
    refitted: PlanCost
    why: str

    def to_json(self) -> dict:
        return {"replan": self.replan, "fit": round(self.fit, 4), "threshold": self.threshold,
                "current": self.current.to_json(), "refitted": self.refitted.to_json(), "why": self.why}


def decide(current: PartitionPlan, refitted: PartitionPlan, attributes: pa.Table, vectors: np.ndarray,
           log: QueryLog, total_rows: int, threshold: float = DEFAULT_THRESHOLD) -> Decision:
    """Keep ``current`` or re-plan to ``refitted`` (fitted on ``log``), by their costs on the log."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the drift threshold must be in (0, 1], got {threshold}")
    now = plan_cost(current, attributes, vectors, log, total_rows)
    fresh = plan_cost(refitted, attributes, vectors, log, total_rows)
    fit = min(1.0, fresh.rows_scanned / now.rows_scanned) if now.rows_scanned > 0 else 1.0
    replan = fit < threshold
    why = (f"on the new workload the current plan scans {now.rows_scanned:,.0f} rows and {now.shards:.1f} shards per "
           f"query (lower bound {now.lower_bound:,.0f} rows), a plan fitted to it {fresh.rows_scanned:,.0f} rows and "
           f"{fresh.shards:.1f} shards: fit {fit:.2f} {'<' if replan else '>='} threshold {threshold:g}, so "
           + ("re-plan and rebuild every partition" if replan else "keep the plan and rebuild only changed partitions"))
    return Decision(replan, fit, threshold, now, fresh, why)
