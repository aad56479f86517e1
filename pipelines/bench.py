"""`beamvec bench`: recall and throughput measured side by side, in one run.

Suite ``selectivity``: one index of generated items in a single shard; for each
predicate selectivity, the same queries through ``Index.search`` and through the
exact oracle (numpy matrix products, queries grouped by predicate), timed back to
back; recall@k of the index against the oracle.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Callable, Sequence

import numpy as np

from beamvec.index import Index, build_index, exact, synthetic
from beamvec.index.predicate import parse
from beamvec.index.schema import validate_items


@dataclasses.dataclass
class SelectivityRow:
    """One selectivity's figures."""

    selectivity: float
    recall: float
    short_results: int
    index_qps: float
    oracle_qps: float
    prefiltered: int
    postfiltered: int
    fallbacks: int

    def markdown(self) -> str:
        return (f"| {self.selectivity:.1%} | {self.recall:.4f} | {self.short_results} | {self.index_qps:,.0f} | "
                f"{self.oracle_qps:,.0f} | {self.index_qps / self.oracle_qps:.1f}x | "
                f"{self.prefiltered}/{self.postfiltered}/{self.fallbacks} |")


SELECTIVITY_HEADER = ("| selectivity | recall@10 | short | Index.search q/s | oracle q/s | speed-up | pre/post/fallback |\n"
                      "|---|---|---|---|---|---|---|")


def _median_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def selectivity_suite(num_items: int, dimension: int, num_queries: int, selectivities: Sequence[float],
                      k: int = 10, repeats: int = 3, seed: int = 0, log: Callable[[str], None] = print) -> list[SelectivityRow]:
    """Build one single-shard index, then measure each selectivity (median of ``repeats`` runs)."""
    items = validate_items(synthetic.make_items(num_items, dimension, seed))
    queries = synthetic.make_queries(num_queries, dimension, seed)
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, dimension)
    rows = []
    with tempfile.TemporaryDirectory(prefix="beamvec-bench-") as path:
        start = time.perf_counter()
        build_index(path, items.table.column("id").combine_chunks(), items.vectors,
                    items.table.drop_columns(["vector"]), seed=seed)
        log(f"built {num_items} x {dimension} in {time.perf_counter() - start:.1f} s")
        index = Index.open(path)
        shard = index.shard(0)
        log(f"shard {shard.config.spec()}, calibration {shard.calibration.leaves}")
        ids_column = items.table.column("id").to_numpy()
        for s in selectivities:
            text = synthetic.selectivity_predicate(s)
            predicates = [text] * num_queries
            index.search(vectors[:100], predicates[:100], k)  # warm-up: loads, caches the mask
            before = dataclasses.replace(index.stats)
            index_seconds, (ids, _) = _median_time(lambda: index.search(vectors, predicates, k), repeats)
            mask = parse(text).evaluate(items.table) if text else None
            oracle_seconds, (truth, _) = _median_time(
                lambda: exact.search(items.vectors, vectors, k, index.metric, [mask] * num_queries), repeats)
            truth_ids = np.where(truth >= 0, ids_column[np.maximum(truth, 0)], -1)
            delta = {f.name: (getattr(index.stats, f.name) - getattr(before, f.name)) // repeats
                     for f in dataclasses.fields(index.stats)}
            row = SelectivityRow(s, float(exact.recall(ids, truth_ids).mean()),
                                 int(((ids != -1).sum(axis=1) < (truth != -1).sum(axis=1)).sum()),
                                 num_queries / index_seconds, num_queries / oracle_seconds,
                                 delta["prefiltered"], delta["postfiltered"], delta["fallbacks"])
            log(row.markdown())
            rows.append(row)
    return rows
