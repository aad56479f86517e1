"""`beamvec bench --suite scale`: build and query time and peak memory as the collection grows.

For each size, items, queries and a workload are generated as Parquet; then
``beamvec build`` and ``beamvec query`` (DirectRunner) and one global ScaNN build
over the same vectors each run in a process of their own
(``python -m beamvec.pipelines.scale --job ...``), so each reports its own time
and peak memory, not the generator's.
"""

from __future__ import annotations

import argparse
import glob
import json
import resource
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.pipelines import synthetic

_FILES = 8


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(work: str, num_items: int, dimension: int, num_queries: int, seed: int = 0) -> None:
    """Items (in several files), queries and a 5,000-predicate workload under ``work``."""
    items = synthetic.make_items(num_items, dimension, seed)
    bounds = np.linspace(0, num_items, _FILES + 1).astype(int)
    for part, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        pq.write_table(items.slice(lo, hi - lo), f"{work}/items-{part}.parquet")
    predicates = synthetic.random_predicates(num_queries, seed)
    pq.write_table(synthetic.make_queries(num_queries, dimension, seed, predicates=predicates), f"{work}/queries.parquet")
    with open(f"{work}/workload.txt", "w") as f:
        f.write("\n".join(synthetic.random_predicates(5_000, seed + 1)))


def partition_rows(num_items: int) -> tuple[int, int]:
    """Partition size bounds for a collection: about 8 to 40 partitions."""
    return max(10_000, num_items // 40), max(100_000, num_items // 8)


def run_job(job: str, work: str, num_items: int, seed: int = 0) -> dict:
    """One job in this process: its seconds and this process's peak memory.

    Libraries (Beam, ScaNN) are imported before the clock starts, for every job alike: a
    one-off cost of the process, not of the work.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    from beamvec.index.shardspec import scann
    from beamvec.pipelines import jobs
    from beamvec.transforms import BuildSettings

    scann()
    options = PipelineOptions([])
    start = time.perf_counter()
    out: dict = {}
    if job == "build":
        settings = BuildSettings("workload", *partition_rows(num_items), seed=seed)
        jobs.build(f"{work}/items-*.parquet", f"{work}/index", options, f"{work}/workload.txt", settings)
    elif job == "query":
        out["queries_answered"] = jobs.query(f"{work}/index", f"{work}/queries.parquet", f"{work}/out", options).get(
            "queries_answered", 0)
    elif job == "scann":
        from beamvec.pipelines.compare import global_scann

        files = sorted(glob.glob(f"{work}/items-*.parquet"))
        column = pa.concat_tables([pq.read_table(f, columns=["vector"]) for f in files]).column("vector").combine_chunks()
        vectors = column.values.to_numpy().reshape(len(column), -1)
        start = time.perf_counter()
        global_scann(vectors)
    else:
        raise ValueError(f"unknown job {job!r}")
    out.update(seconds=time.perf_counter() - start, peak_mib=_peak_mib())
    return out


def _child(job: str, work: str, num_items: int, seed: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "beamvec.pipelines.scale", "--job", job, "--work", work,
                           "--num-items", str(num_items), "--seed", str(seed)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def point(num_items: int, dimension: int, num_queries: int, seed: int = 0) -> dict:
    """One size's figures: each job in its own process."""
    with tempfile.TemporaryDirectory(prefix="beamvec-scale-") as work:
        generate(work, num_items, dimension, num_queries, seed)
        build = _child("build", work, num_items, seed)
        query = _child("query", work, num_items, seed)
        baseline = _child("scann", work, num_items, seed)
    return {"items": num_items, "build_seconds": build["seconds"], "build_peak_mib": build["peak_mib"],
            "query_seconds": query["seconds"], "query_peak_mib": query["peak_mib"],
            "queries_answered": query["queries_answered"], "global_scann_build_seconds": baseline["seconds"],
            "global_scann_peak_mib": baseline["peak_mib"]}


HEADER = ("| items | beamvec build s | beamvec query s | global ScaNN build s | build / ScaNN | peak MiB (build) | "
          "peak MiB (query) | peak MiB (global ScaNN build) |\n|---|---|---|---|---|---|---|---|")


def markdown(p: dict) -> str:
    return (f"| {p['items']:,} | {p['build_seconds']:.1f} | {p['query_seconds']:.1f} | {p['global_scann_build_seconds']:.1f} | "
            f"{p['build_seconds'] / p['global_scann_build_seconds']:.1f}x | {p['build_peak_mib']:,.0f} | "
            f"{p['query_peak_mib']:,.0f} | {p['global_scann_peak_mib']:,.0f} |")


def curve(sizes: Sequence[int], dimension: int, num_queries: int, seed: int = 0,
          log: Callable[[str], None] = print) -> list[dict]:
    """:func:`point` for each size; one Markdown row per size as it finishes."""
    log(HEADER)
    points = []
    for n in sizes:
        points.append(point(n, dimension, num_queries, seed))
        log(markdown(points[-1]))
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", choices=["point", "build", "query", "scann"], default="point")
    parser.add_argument("--work", help="directory of generated data (build, query, scann)")
    parser.add_argument("--num-items", type=int, required=True)
    parser.add_argument("--dimension", type=int, default=96)
    parser.add_argument("--num-queries", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.job == "point":
        print(json.dumps(point(args.num_items, args.dimension, args.num_queries, args.seed)))
    else:
        print(json.dumps(run_job(args.job, args.work, args.num_items, args.seed)))


if __name__ == "__main__":
    main()
