"""`beamvec bench --suite scale`: build and query time and peak memory as the collection grows.

Each size runs in its own process (``python -m beamvec.pipelines.scale``), so
peak memory is that size's alone: generate items and queries as Parquet, run
``beamvec build`` and ``beamvec query`` on the DirectRunner, then build one
global ScaNN index over the same vectors for comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import exact, synthetic
from beamvec.index.shard import ShardConfig
from beamvec.pipelines import jobs


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def point(num_items: int, dimension: int, num_queries: int, seed: int = 0) -> dict:
    """One size's figures (run in a fresh process for a meaningful peak memory)."""
    out = {"items": num_items}
    with tempfile.TemporaryDirectory(prefix="beamvec-scale-") as work:
        items = synthetic.make_items(num_items, dimension, seed)
        bounds = np.linspace(0, num_items, 9).astype(int)
        for part, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            pq.write_table(items.slice(lo, hi - lo), f"{work}/items-{part}.parquet")
        vectors = items.column("vector").combine_chunks().values.to_numpy().reshape(-1, dimension)
        del items
        predicates = synthetic.random_predicates(num_queries, seed)
        pq.write_table(synthetic.make_queries(num_queries, dimension, seed, predicates=predicates), f"{work}/queries.parquet")
        with open(f"{work}/workload.txt", "w") as f:
            f.write("\n".join(synthetic.random_predicates(5_000, seed + 1)))
        out["generate_peak_mib"] = _peak_mib()
        options = PipelineOptions([])
        settings = jobs.BuildSettings("workload", max(2_000, num_items // 40), max(10_000, num_items // 8), seed=seed)
        start = time.perf_counter()
        jobs.build(f"{work}/items-*.parquet", f"{work}/index", options, f"{work}/workload.txt", settings)
        out["build_seconds"] = time.perf_counter() - start
        out["build_peak_mib"] = _peak_mib()
        start = time.perf_counter()
        counts = jobs.query(f"{work}/index", f"{work}/queries.parquet", f"{work}/out", options)
        out["query_seconds"] = time.perf_counter() - start
        out["queries_answered"] = counts.get("queries_answered", 0)
        out["query_peak_mib"] = _peak_mib()
    from scann.scann_ops.py import scann_ops_pybind as sp

    all_vectors = exact.prepare(vectors, "dot_product")
    config = ShardConfig.for_shape(num_items, dimension)
    start = time.perf_counter()
    sp.create_searcher(all_vectors, config.scann_config(all_vectors, "dot_product"), 0)
    out["global_scann_build_seconds"] = time.perf_counter() - start
    return out


HEADER = ("| items | beamvec build s | beamvec query s | global ScaNN build s | build / ScaNN | peak MiB (build) | "
          "peak MiB (query) |\n|---|---|---|---|---|---|---|")


def markdown(p: dict) -> str:
    return (f"| {p['items']:,} | {p['build_seconds']:.1f} | {p['query_seconds']:.1f} | {p['global_scann_build_seconds']:.1f} | "
            f"{p['build_seconds'] / p['global_scann_build_seconds']:.1f}x | {p['build_peak_mib']:,.0f} | "
            f"{p['query_peak_mib']:,.0f} |")


def curve(sizes: Sequence[int], dimension: int, num_queries: int, seed: int = 0,
          log: Callable[[str], None] = print) -> list[dict]:
    """Each size in its own process; one Markdown row per size as it finishes."""
    log(HEADER)
    points = []
    for n in sizes:
        proc = subprocess.run([sys.executable, "-m", "beamvec.pipelines.scale", "--num-items", str(n),
                               "--dimension", str(dimension), "--num-queries", str(num_queries), "--seed", str(seed)],
                              capture_output=True, text=True, check=True)
        points.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        log(markdown(points[-1]))
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-items", type=int, required=True)
    parser.add_argument("--dimension", type=int, default=96)
    parser.add_argument("--num-queries", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(point(args.num_items, args.dimension, args.num_queries, args.seed)))


if __name__ == "__main__":
    main()
