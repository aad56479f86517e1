"""The cost model that picks each query group's strategy in a shard: estimated nanoseconds of
exact scoring over a run of rows (alone or in a product shared by many queries), over gathered
rows, or of a ScaNN post-filter, measured side by side (only their ratios matter); and the
batching of overlapping runs into shared masked products (HQI's multi-query optimisation)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from beamvec.index.shardspec import CALIBRATION_K, Calibration, SearchParams, ShardConfig

if TYPE_CHECKING:
    from beamvec.index.shard import _Group

# Nanoseconds, one thread each, on a 2-core AVX2 machine.
_COST_DENSE_ROW = 8.0  # exact scoring, per query and row of a product shared by many queries
_COST_RUN_ROW = 40.0  # per row of a product, once: reading it (dominates for a few queries)
_COST_RUN_CALL = 60_000.0  # per masked product (mask, top-k and call overhead)
_COST_GATHER_ROW = 10.0  # pre-filter over the gathered matching rows, per query
_COST_GATHER_COPY_ROW = 150.0  # copying a matching row out, once per predicate group
_COST_GATHER_GROUP = 6_000.0  # per predicate group gathered (mask to rows, its share of a call scoring many)
_COST_SCANN_QUERY = 10_000.0  # post-filter: fixed cost of one ScaNN query
_COST_AH_ROW = 2.0  # post-filter: asymmetric hashing with 16-entry lookup tables
_COST_REORDER_ROW = 29.0  # post-filter: exact re-scoring of fetched candidates, and filtering them


def post_cost(num_rows: int, config: ShardConfig, calibration: Calibration, matches: int, k: int,
              params: SearchParams) -> tuple[float, int, int]:
    """(cost, fetch, leaves) of a post-filter search for a predicate with ``matches`` of ``num_rows`` rows."""
    n = num_rows
    fetch = k if matches >= n else next_pow2(math.ceil(params.overfetch * k * n / max(matches, 1)))
    fetch = min(n, fetch)
    if config.brute_force:
        return n * _COST_DENSE_ROW, fetch, 0
    leaves = params.leaves_to_search or calibration.leaves_for(fetch, config.num_leaves)
    leaves = max(1, min(config.num_leaves, round(leaves * params.leaves_scale)))
    scanned = leaves * n / config.num_leaves
    return _COST_SCANN_QUERY + scanned * _COST_AH_ROW + reorder_for(n, config, fetch) * _COST_REORDER_ROW, fetch, leaves


def pre_costs(num_rows: int, run_rows: int, matches: int, queries: int) -> tuple[float, float]:
    """Per-query cost of exact scoring for a group of ``queries``: over the ``run_rows`` rows holding its
    ``matches`` (alone, or at most as in a product shared by many queries), or over its gathered rows."""
    m = queries
    run = min(run_cost(run_rows, m) / m, num_rows * _COST_DENSE_ROW)
    gathered = matches * (_COST_GATHER_ROW + _COST_GATHER_COPY_ROW / m) + _COST_GATHER_GROUP / m
    return run, gathered


def reorder_for(num_rows: int, config: ShardConfig, fetch: int) -> int:
    """Candidates re-scored exactly for a fetch size: the config's reorder per 10 results."""
    return min(num_rows, max(config.reorder, fetch * config.reorder // CALIBRATION_K))


def rows_scanned(num_rows: int, config: ShardConfig, fetch: int, leaves: int) -> int:
    """Rows a ScaNN search touches: those in the searched leaves (all, for brute force)."""
    if config.brute_force:
        return num_rows
    return round(leaves * num_rows / config.num_leaves) + reorder_for(num_rows, config, fetch)


def run_cost(rows: int, queries: int) -> float:
    """Estimated cost of one masked product of ``queries`` queries over ``rows`` consecutive rows."""
    return _COST_RUN_CALL + rows * (_COST_RUN_ROW + queries * _COST_DENSE_ROW)


def shared_runs(groups: list["_Group"]) -> list[list["_Group"]]:
    """Groups batched into shared masked products. In order of where their runs start, a
    group joins the open batch (one still overlapping it, or the newest) where one product
    over the union saves most against two, or starts its own."""
    done: list[list] = []
    batches: list[list] = []  # open: [lo, hi, queries, groups]
    for g in sorted(groups, key=lambda g: (g.lo, g.hi)):
        m = len(g.members)
        done += [b for b in batches[:-1] if b[1] <= g.lo]
        batches = [b for b in batches[:-1] if b[1] > g.lo] + batches[-1:]
        best, saved = None, 0.0
        for b in batches:
            union = max(b[1], g.hi) - min(b[0], g.lo)
            gain = run_cost(b[1] - b[0], b[2]) + run_cost(g.hi - g.lo, m) - run_cost(union, b[2] + m)
            if gain >= saved:
                best, saved = b, gain
        if best is None:
            batches.append([g.lo, g.hi, m, [g]])
        else:
            best[0], best[1], best[2] = min(best[0], g.lo), max(best[1], g.hi), best[2] + m
            best[3].append(g)
    return [b[3] for b in done + batches]


def next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())
