"""The `beamvec` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata


def _demo(args: argparse.Namespace) -> int:
    from beamvec.pipelines import demo

    print(f"beamvec demo: {args.num_items} items x {args.dimension}-d, {args.num_queries} hybrid queries, k={args.k}",
          flush=True)
    report = demo.run(args.num_items, args.num_queries, args.dimension, args.k, args.seed, args.index_dir)
    for line in report.lines():
        print(line)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from beamvec.pipelines import bench

    print(f"beamvec bench {args.suite}: {args.num_items} items x {args.dimension}-d, {args.num_queries} queries", flush=True)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.suite == "selectivity":
        print(bench.SELECTIVITY_HEADER, flush=True)
        bench.selectivity_suite(args.num_items, args.dimension, args.num_queries, args.selectivities, args.k,
                                args.repeats, args.seed, log=log)
    else:
        print(bench.PARTITION_HEADER, flush=True)
        bench.partition_suite(args.num_items, args.dimension, args.num_queries, args.min_partition_rows,
                              args.max_partition_rows, args.k, args.repeats, args.seed, log=log)
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser, with every subcommand."""
    p = argparse.ArgumentParser(prog="beamvec", description="Batch-scale hybrid vector search on Apache Beam.")
    p.add_argument("--version", action="version", version=f"beamvec {metadata.version('beamvec')}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="generate data, build an index, run hybrid queries, report recall and speed")
    demo.add_argument("--num-items", type=int, default=50_000)
    demo.add_argument("--num-queries", type=int, default=5_000)
    demo.add_argument("--dimension", type=int, default=64)
    demo.add_argument("--k", type=int, default=10)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--index-dir", help="keep the index here (default: a temporary directory)")
    demo.set_defaults(run=_demo)
    bench = sub.add_parser("bench", help="measure recall and throughput side by side")
    bench.add_argument("--suite", choices=["selectivity", "partitions"], default="selectivity")
    bench.add_argument("--num-items", type=int, default=200_000)
    bench.add_argument("--num-queries", type=int, default=10_000)
    bench.add_argument("--dimension", type=int, default=96)
    bench.add_argument("--selectivities", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    bench.add_argument("--min-partition-rows", type=int, default=5_000)
    bench.add_argument("--max-partition-rows", type=int, default=50_000)
    bench.add_argument("--k", type=int, default=10)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--seed", type=int, default=0)
    bench.set_defaults(run=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
