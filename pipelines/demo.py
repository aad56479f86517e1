"""`beamvec demo`: generate a data set and workload, build an index, query it, check it.

Everything is generated (no download): clustered vectors with correlated
attributes, a skewed mix of hybrid queries. The demo validates the items (a few
deliberately bad rows go to the dead-letter count), builds the index, answers
the queries in one batch, and reports recall@10 against the exact oracle and
queries/second of both.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time

import numpy as np
import pyarrow as pa

from beamvec.index import Index, build_index, exact, synthetic
from beamvec.index.predicate import parse
from beamvec.index.schema import validate_items, validate_queries


@dataclasses.dataclass
class DemoReport:
    """The figures the demo prints."""

    items_read: int
    items_indexed: int
    items_rejected: int
    rejection_reasons: dict[str, int]
    queries: int
    partitions: int
    shard_spec: str
    leaves_to_search: int
    build_seconds: float
    search_qps: float
    oracle_qps: float
    recall_at_k: float
    recall_most_selective_decile: float
    short_results: int
    prefiltered: int
    postfiltered: int
    fallbacks: int
    rows_scored_per_query: float

    def lines(self) -> list[str]:
        return [
            f"items: {self.items_read} read = {self.items_indexed} indexed + {self.items_rejected} rejected "
            f"({', '.join(f'{n} {r}' for r, n in self.rejection_reasons.items()) or 'none'})",
            f"index: {self.partitions} partition(s), shard {self.shard_spec}, "
            f"{self.leaves_to_search} leaves searched, built in {self.build_seconds:.1f} s",
            f"queries: {self.queries}, {self.prefiltered} pre-filtered, {self.postfiltered} post-filtered, "
            f"{self.fallbacks} fell back; {self.rows_scored_per_query:.0f} rows scored per query",
            f"recall@10 vs exact: {self.recall_at_k:.4f} (most selective 10% of queries: "
            f"{self.recall_most_selective_decile:.4f}); queries short of min(k, matches): {self.short_results}",
            f"throughput: Index.search {self.search_qps:.0f} queries/s, exact oracle {self.oracle_qps:.0f} queries/s "
            f"({self.search_qps / self.oracle_qps:.1f}x)",
        ]


def _with_bad_rows(items: pa.Table) -> pa.Table:
    """The items plus three broken rows: a duplicate id, a NaN vector, a short vector."""
    d = items.schema.field("vector").type.list_size
    bad = items.slice(0, 3).to_pylist()
    bad[1]["id"] = -1
    bad[1]["vector"] = [float("nan")] * d
    bad[2]["id"] = -2
    bad[2]["vector"] = [0.0] * (d - 1)
    broken = pa.Table.from_pylist(bad, schema=items.schema.set(1, pa.field("vector", pa.list_(pa.float32()))))
    return pa.concat_tables([items.cast(broken.schema), broken])


def run(num_items: int = 50_000, num_queries: int = 5_000, dimension: int = 64, k: int = 10,
        seed: int = 0, index_dir: str | None = None) -> DemoReport:
    """Run the demo end to end and return its figures."""
    items = validate_items(_with_bad_rows(synthetic.make_items(num_items, dimension, seed)))
    queries = validate_queries(synthetic.make_queries(num_queries, dimension, seed), dimension)
    attributes = items.table.drop_columns(["vector"])
    with tempfile.TemporaryDirectory(prefix="beamvec-demo-") as tmp:
        path = index_dir or tmp
        start = time.perf_counter()
        build_index(path, items.table.column("id").combine_chunks(), items.vectors, attributes, metric="dot_product", seed=seed)
        build_seconds = time.perf_counter() - start
        index = Index.open(path)
        predicates = queries.table.column("predicate").to_pylist()
        start = time.perf_counter()
        ids, _ = index.search(queries.vectors, predicates, k)
        search_seconds = time.perf_counter() - start
        shard = index.shard(0)
    start = time.perf_counter()
    masks = {p: parse(p).evaluate(items.table) if p else None for p in set(predicates)}
    truth_rows, _ = exact.search(items.vectors, queries.vectors, k, "dot_product", [masks[p] for p in predicates])
    oracle_seconds = time.perf_counter() - start
    id_column = items.table.column("id").to_numpy()
    truth = np.where(truth_rows >= 0, id_column[np.maximum(truth_rows, 0)], -1)
    recall = exact.recall(ids, truth)
    matches = np.array([len(id_column) if masks[p] is None else int(masks[p].sum()) for p in predicates])
    selective = matches <= np.quantile(matches, 0.1)
    reasons: dict[str, int] = {}
    for r in items.rejections:
        reason = r.reason.split(" (")[0].split(" -")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    stats = index.stats
    return DemoReport(
        items_read=items.table.num_rows + len(items.rejections), items_indexed=items.table.num_rows,
        items_rejected=len(items.rejections), rejection_reasons=reasons, queries=len(predicates),
        partitions=len(index.manifest.partitions), shard_spec=shard.config.spec(),
        leaves_to_search=shard.calibration.leaves_to_search, build_seconds=build_seconds,
        search_qps=len(predicates) / search_seconds, oracle_qps=len(predicates) / oracle_seconds,
        recall_at_k=float(recall.mean()), recall_most_selective_decile=float(recall[selective].mean()),
        short_results=int(((ids != -1).sum(axis=1) < np.minimum(k, matches)).sum()),
        prefiltered=stats.prefiltered, postfiltered=stats.postfiltered, fallbacks=stats.fallbacks,
        rows_scored_per_query=stats.rows_scored / len(predicates),
    )
