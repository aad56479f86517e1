"""The `beamvec` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from importlib import metadata

from beamvec.pipelines import quiet


# `bench --suite compare --methods`: beamvec.pipelines.compare.METHODS (not imported: it loads the index).
_COMPARE_METHODS = ("workload", "hash", "attribute", "kmeans", "scann", "faiss", "exact")
# `--generator`: beamvec.pipelines.synthetic.GENERATORS.
GENERATOR_NAMES = ("catalog", "tenants", "tags")


def _demo(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.pipelines import demo

    print(f"beamvec demo: {args.num_items} items x {args.dimension}-d, {args.num_queries} hybrid queries, k={args.k}",
          flush=True)
    demo.run(args.num_items, args.num_queries, args.dimension, args.k, args.seed, extra,
             log=lambda line: print(line, flush=True))
    return 0


def _generate(args: argparse.Namespace, extra: list[str]) -> int:
    import os

    import pyarrow.parquet as pq

    from beamvec.pipelines import synthetic

    items, queries, log = synthetic.generate(args.generator, args.num_items, args.dimension, args.num_queries,
                                             args.seed)
    os.makedirs(args.output, exist_ok=True)
    for name, table in (("items", items), ("queries", queries), ("workload", log)):
        path = os.path.join(args.output, f"{name}.parquet")
        pq.write_table(table, path)
        print(f"{path}: {table.num_rows:,} rows ({', '.join(table.column_names)})")
    return 0


def _bench(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.pipelines import bench

    items = args.items or (", ".join(f"{n:,}" for n in args.sizes) if args.suite == "scale" else f"{args.num_items:,}")
    if args.suite == "codecs":
        also = f" and {args.items}" if args.items else ""
        print(f"beamvec bench codecs: {args.generator} {args.num_items:,} x {args.dimension}-d{also}, "
              f"{args.num_queries} queries", flush=True)
    elif args.suite == "embed":
        texts = f"{args.num_items:,}" if args.num_items else "all"
        print(f"beamvec bench embed: {texts} texts of {args.items}, models {', '.join(args.models)}", flush=True)
    else:
        print(f"beamvec bench {args.suite}: {items} items x {args.dimension}-d, {args.num_queries} queries", flush=True)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.suite == "compare":
        from beamvec.pipelines import compare

        compare.run(args.output, args.items, args.queries, args.workload, args.num_items, args.dimension,
                    args.num_queries, args.k, args.attribute, (args.min_partition_rows, args.max_partition_rows),
                    args.repeats, args.seed, log=log, generator=args.generator, methods=args.methods)
    elif args.suite == "scale":
        from beamvec.pipelines import scale

        scale.curve(args.sizes, args.dimension, args.num_queries, args.seed, log=log)
    elif args.suite == "selectivity":
        print(bench.SELECTIVITY_HEADER, flush=True)
        bench.selectivity_suite(args.num_items, args.dimension, args.num_queries, args.selectivities, args.k,
                                args.repeats, args.seed, log=log)
    elif args.suite == "embed":
        if not args.items:
            raise SystemExit("beamvec bench --suite embed: give --items, Parquet with a text column (and the "
                             "reference vectors, as ../shared/data/docstrings/base.parquet has)")
        bench.embed_suite(args.items, args.num_items, args.models, args.batch_size, args.seed, extra, log=log)
    elif args.suite == "codecs":
        from beamvec.pipelines import codecbench, compare, synthetic
        from beamvec.index.querylog import read_workload

        import os

        datasets = [(f"{args.generator} {args.num_items // 1000}k", *compare.generated(
            args.generator, args.num_items, args.dimension, args.num_queries, args.seed))]
        if args.items:  # queries drawn from the items; the workload log from a second, independent draw
            import pyarrow.parquet as pq

            items = pq.read_table(args.items)
            log_table = synthetic.queries_from_items(items, args.num_queries, args.seed + 1)
            workload = read_workload(args.workload) if args.workload else compare.log_of(log_table)
            datasets.append((os.path.basename(args.items), items,
                             synthetic.queries_from_items(items, args.num_queries, args.seed), workload))
        codecbench.suite(datasets, args.repeats, log, args.output, args.codecs)
    elif args.suite == "reindex":
        from beamvec.pipelines import reindexbench, synthetic

        items, _, workload = synthetic.generate(args.generator, args.num_items, args.dimension, args.num_queries,
                                                args.seed)
        reindexbench.suite(items, workload, extra, args.share, (args.min_partition_rows, args.max_partition_rows),
                           args.repeats, args.seed, log=log)
    elif args.suite == "beam":
        bench.beam_suite(args.num_items, args.dimension, args.num_queries, args.min_partition_rows,
                         args.max_partition_rows, args.k, args.repeats, args.seed, extra, log=log,
                         generator=args.generator)
    else:
        print(bench.PARTITION_HEADER, flush=True)
        bench.partition_suite(args.num_items, args.dimension, args.num_queries, args.min_partition_rows,
                              args.max_partition_rows, args.k, args.repeats, args.seed, log=log)
    return 0


def beam_options(extra: list[str]):
    """Beam's pipeline options from the flags beamvec does not own; SystemExit naming any flag that
    neither beamvec nor Beam knows (a mistyped flag is an error, not silently dropped)."""
    import logging

    from apache_beam.options.pipeline_options import PipelineOptions

    logging.getLogger("apache_beam.options.pipeline_options").setLevel(logging.ERROR)  # we report unknown flags
    options = PipelineOptions(extra)
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
    if unknown:
        raise SystemExit(f"beamvec: unknown flag{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join('--' + u for u in unknown)}: not a beamvec flag of this command "
                         f"(see --help) nor a Beam pipeline option")
    return options


def _print_counts(counts: dict[str, int]) -> None:
    for name in sorted(counts):
        print(f"{name}: {counts[name]:,}")
    lines = []
    # Rows embedded first are read by the embedding stage; its rejections count with the stage after it.
    read = counts.get("embed_read")
    embed_rejected = counts.get("embed_rejected", 0)
    if "base_items_read" in counts:  # reindex of upserts
        read, base = counts.get("items_read", 0), counts["base_items_read"]
        parts = [("indexed", counts.get("items_indexed", 0)), ("rejected", counts.get("items_rejected", 0)),
                 ("replaced", counts.get("items_replaced", 0)), ("deleted", counts.get("items_deleted", 0))]
        total = sum(n for _, n in parts)
        print(f"items: read {read:,} + {base:,} of the current version = "
              + " + ".join(f"{name} {n:,}" for name, n in parts)
              + ("" if read + base == total else "  (these do not add up: please report it)"))
    elif "items_indexed" in counts:  # build
        lines.append(("items", "indexed", read if read is not None else counts.get("items_read", 0),
                      counts["items_indexed"], counts.get("items_rejected", 0) + embed_rejected))
    elif "items_read" in counts:  # related: one query per item
        lines.append(("items", "answered", counts["items_read"], counts.get("queries_answered", 0),
                      counts.get("items_rejected", 0) + counts.get("queries_rejected", 0)))
    elif "queries_read" in counts:  # query
        lines.append(("queries", "answered", read if read is not None else counts["queries_read"],
                      counts.get("queries_answered", 0), counts.get("queries_rejected", 0) + embed_rejected))
    elif read is not None:  # embed
        lines.append(("rows", "embedded", read, counts.get("embedded", 0), embed_rejected))
    for kind, what, read, done, rejected in lines:
        print(f"{kind}: read {read:,} = {what} {done:,} + rejected {rejected:,}"
              + ("" if read == done + rejected else "  (these do not add up: please report it)"))


def _build(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.index.codec import CodecError
    from beamvec.index.versions import open_manifest
    from beamvec.pipelines import jobs
    from beamvec.transforms import BuildSettings

    try:
        settings = BuildSettings(args.partitioner, args.min_partition_rows, args.max_partition_rows, args.metric,
                                 args.sample_rows, args.seed, args.recall_target, args.shard_spec, args.codec,
                                 args.max_bytes_per_vector).checked()
    except ValueError as e:
        raise SystemExit(f"beamvec build: {e}") from None
    try:
        counts = jobs.build(args.items, args.output, beam_options(extra), args.workload, settings,
                            embed_column=args.embed_column, model=args.model)
    except CodecError as e:  # e.g. --codec auto found none within the budget
        raise SystemExit(f"beamvec build: {e}") from None
    _print_counts(counts)
    path, manifest = open_manifest(args.output)
    print(f"published version {path.rsplit('/', 1)[-1]}: {manifest.num_rows:,} items in "
          f"{len(manifest.partitions)} partitions")
    if counts.get("items_rejected", 0) or counts.get("embed_rejected", 0):
        print(f"dead letters: {jobs.dead_letters(args.output)}")
    if manifest.codec is not None:
        print(f"codec: {manifest.codec['spec']}")
    print(heldout_line(manifest.heldout_recall, settings.recall_target))
    return 0


def _reindex(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.index import versions
    from beamvec.pipelines import jobs

    counts = jobs.reindex(args.index, args.items, beam_options(extra), args.workload, args.upserts, args.deletes,
                          args.drift_threshold)
    _print_counts(counts)
    published = versions.read_pointer(args.index).history[-1]
    print(f"reindex: rebuilt {published['rebuilt']} partitions, reused {published['reused']} unchanged; "
          f"{published['why']}")
    path, manifest = versions.open_manifest(args.index)
    print(f"published version {published['version']}: {manifest.num_rows:,} items in "
          f"{len(manifest.partitions)} partitions")
    if counts.get("items_rejected", 0):
        print(f"dead letters: {jobs.dead_letters(args.index)}")
    print(heldout_line(manifest.heldout_recall, manifest.build["recall_target"]))
    return 0


def _versions(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.index import versions

    if args.publish:
        versions.publish(args.index, args.publish, kind="rollback")
        print(f"published version {args.publish} (checked: every shard matches its checksum)")

    print("| version | created | state | items | partitions | model | codec | held-out recall@10 | made by |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in versions.list_versions(args.index):
        m, h = v.manifest, v.lineage or {}
        made = "" if not h else h.get("kind", "build") + (
            f": rebuilt {h['rebuilt']}, reused {h['reused']}" if "rebuilt" in h else "")
        if m is None:
            print(f"| {v.name} | {v.created} | {v.state} | | | | | | |")
            continue
        recall = f"{m.heldout_recall['mean']:.4f}" if m.heldout_recall and m.heldout_recall.get("queries") else "-"
        model = f"{m.model['name']} {m.model['checksum'][:12]}" if m.model else "-"
        codec = f"{m.codec['spec']} {m.codec['checksum'][7:19]}" if m.codec else "-"
        print(f"| {v.name} | {v.created} | {v.state} | {m.num_rows:,} | {len(m.partitions)} | {model} | {codec} | "
              f"{recall} | {made} |")
    return 0


def _gc(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.index import versions

    removed = versions.gc(args.index, args.keep)
    print(f"removed {len(removed)} version{'s' if len(removed) != 1 else ''}" + (f": {', '.join(removed)}"
                                                                                 if removed else ""))
    return 0


def heldout_line(recall: dict | None, target: float) -> str:
    """The closing line of ``beamvec build``: the recall measured on held-out log queries, or why there is none."""
    if not recall or not recall.get("queries"):
        return ("recall not measured: the workload log has no query vectors "
                "(give --workload a Parquet file with predicate and vector columns)")
    return (f"recall@{recall['k']} on {recall['queries']} held-out log queries: {recall['mean']:.4f} "
            f"(most selective 10%: {recall['selective']:.4f}); build target {target:g}")


def _query(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.pipelines import jobs

    from beamvec.index.encoder import ModelError

    try:
        counts = jobs.query(args.index, args.queries, args.output, beam_options(extra), args.k,
                            args.query_text_column, args.model)
    except ModelError as e:
        raise SystemExit(f"beamvec query: {e}") from None
    _print_counts(counts)
    return 0


def _embed(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.pipelines import jobs

    _print_counts(jobs.embed(args.input, args.column, args.output, beam_options(extra), args.model,
                             args.batch_size))
    return 0


def _model_export(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.index import encoder

    if args.name != encoder.BUILTIN:
        raise SystemExit(f"beamvec model export: the built-in model is {encoder.BUILTIN!r}, not {args.name!r}")
    card = encoder.export(args.output, args.precision)
    print(f"{card['name']} ({card['dimension']}-d, {card['precision']}) written to {args.output}; "
          f"identity {card['identity']['checksum'][:12]}")
    return 0


def _related(args: argparse.Namespace, extra: list[str]) -> int:
    from beamvec.pipelines import jobs

    _print_counts(jobs.related(args.index, args.items, args.predicate_template, args.output, beam_options(extra),
                               args.k))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser, with every subcommand."""
    p = argparse.ArgumentParser(prog="beamvec", description="Batch-scale hybrid vector search on Apache Beam.")
    p.add_argument("--version", action="version", version=f"beamvec {metadata.version('beamvec')}")
    p.add_argument("--verbose", action="store_true", help="show Beam's, ScaNN's and TensorFlow's own log lines")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = sub.add_parser("build", help="build an index from items Parquet (a Beam job; Beam options pass through)")
    build.add_argument("--items", required=True, help="items Parquet file or glob")
    build.add_argument("--output", required=True, help="index directory to write")
    build.add_argument("--workload", help="past queries: Parquet with a predicate column (and optionally a vector "
                       "column: then shards calibrate on them and recall on held-out ones is reported), "
                       "or text, one predicate per line")
    build.add_argument("--partitioner", default="workload",
                       help="workload | hash | attribute:COL | kmeans | single (default workload; without "
                       "--workload: hash)")
    build.add_argument("--min-partition-rows", type=_positive, default=10_000)
    build.add_argument("--max-partition-rows", type=_positive, default=100_000)
    build.add_argument("--metric", default="dot_product", choices=["dot_product", "cosine", "squared_l2"])
    build.add_argument("--sample-rows", type=_positive, default=50_000,
                       help="items sampled to fit the partition plan")
    build.add_argument("--shard-spec", help="every shard's ScaNN spec, e.g. Tree100,AH2,Reorder100, or Brute "
                       "(default: by the shard's size)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--recall-target", type=float, default=0.95,
                       help="recall@10 each shard calibrates its search for")
    build.add_argument("--codec", help="quantize the vectors: a codec spec, e.g. SQ8, F16, PQ24, PCA48,SQ8, "
                       "OOD24,SQ8,Rerank (OOD fits on the workload's query vectors), or auto: the smallest "
                       "meeting --recall-target within --max-bytes-per-vector")
    build.add_argument("--max-bytes-per-vector", type=float, help="with --codec auto: the budget for a vector's code")
    build.add_argument("--embed-column", help="the items carry no vectors: embed them from this text column")
    build.add_argument("--model", default="all-MiniLM-L6-v2", help="with --embed-column: all-MiniLM-L6-v2 "
                       "(built in), all-MiniLM-L6-v2:bfloat16, or a SavedModel / .keras path")
    build.set_defaults(run=_build)
    reindex = sub.add_parser("reindex", help="a new version of an index from changed items, rebuilding only the "
                             "partitions whose content changed (a Beam job)")
    reindex.add_argument("--index", required=True, help="the index directory (its published version is the base)")
    reindex.add_argument("--items", required=True, help="items Parquet: every item (a full snapshot), or with "
                         "--upserts the new and changed ones")
    reindex.add_argument("--upserts", action="store_true", help="--items holds only new and changed items")
    reindex.add_argument("--deletes", help="with --upserts: ids to remove (Parquet with an id column, or text, one "
                         "per line)")
    reindex.add_argument("--workload", help="a new workload log: re-plan (a full rebuild) if the plan no longer fits it")
    reindex.add_argument("--drift-threshold", type=float, help="re-plan when a plan fitted to the new workload scans "
                         "less than this share of the current plan's rows (default 0.67)")
    reindex.set_defaults(run=_reindex)
    versions_cmd = sub.add_parser("versions", help="list an index's versions")
    versions_cmd.add_argument("index")
    versions_cmd.add_argument("--publish", metavar="VERSION", help="publish this complete version again (roll back "
                              "to it), once its shards are checked")
    versions_cmd.set_defaults(run=_versions)
    gc = sub.add_parser("gc", help="remove old and unfinished versions of an index (never the current one or newer)")
    gc.add_argument("index")
    gc.add_argument("--keep", type=_positive, default=2, help="complete versions to keep, the current one included")
    gc.set_defaults(run=_gc)
    query = sub.add_parser("query", help="answer a file of hybrid queries (a Beam job; Beam options pass through)")
    query.add_argument("--index", required=True)
    query.add_argument("--queries", required=True, help="queries Parquet: query_id, vector, predicate, k")
    query.add_argument("--output", required=True, help="directory for results-*.parquet and rejected-*.parquet")
    query.add_argument("--k", type=_positive, default=10, help="neighbours per query without a k of its own")
    query.add_argument("--query-text-column", help="the queries carry texts, not vectors: embed this column "
                       "with the index's model")
    query.add_argument("--model", help="with --query-text-column: the model to embed with (must be the index's; "
                       "default: the one the index records)")
    query.set_defaults(run=_query)
    embed = sub.add_parser("embed", help="add a vector column embedded from a text column (a Beam job)")
    embed.add_argument("--input", required=True, help="Parquet file or glob")
    embed.add_argument("--column", default="text", help="the text column (or a list column of numeric features)")
    embed.add_argument("--output", required=True, help="directory for embedded-*.parquet and rejected-*.parquet")
    embed.add_argument("--model", default="all-MiniLM-L6-v2", help="all-MiniLM-L6-v2 (built in), "
                       "all-MiniLM-L6-v2:bfloat16, or a SavedModel / .keras path")
    embed.add_argument("--batch-size", type=_positive, default=64, help="texts per inference batch")
    embed.set_defaults(run=_embed)
    model = sub.add_parser("model", help="the built-in model")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    export = model_sub.add_parser("export", help="write all-MiniLM-L6-v2 as a SavedModel with a JSON card")
    export.add_argument("name", help="all-MiniLM-L6-v2")
    export.add_argument("--output", required=True, help="directory (any filesystem TensorFlow writes: gs://...)")
    export.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                        help="the matrix products' precision (bfloat16: faster on CPUs with bfloat16 instructions)")
    export.set_defaults(run=_model_export)
    related = sub.add_parser("related", help="each item's k most similar items under a predicate template")
    related.add_argument("--index", required=True)
    related.add_argument("--items", required=True)
    related.add_argument("--predicate-template", required=True, help="e.g. \"category = {category} AND id != {id}\"")
    related.add_argument("--output", required=True)
    related.add_argument("--k", type=_positive, default=10)
    related.set_defaults(run=_related)
    generate = sub.add_parser("generate", help="write generated items, queries and a workload log (Parquet) to try "
                              "beamvec on")
    generate.add_argument("--output", required=True, help="directory for items.parquet, queries.parquet, "
                          "workload.parquet")
    generate.add_argument("--generator", choices=sorted(GENERATOR_NAMES), default="catalog")
    generate.add_argument("--num-items", type=_positive, default=20_000)
    generate.add_argument("--num-queries", type=_positive, default=1_000)
    generate.add_argument("--dimension", type=_positive, default=32)
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(run=_generate)
    demo = sub.add_parser("demo", help="generate data, build an index, run hybrid queries, report recall and speed")
    demo.add_argument("--num-items", type=int, default=50_000)
    demo.add_argument("--num-queries", type=int, default=5_000)
    demo.add_argument("--dimension", type=int, default=64)
    demo.add_argument("--k", type=int, default=10)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    bench = sub.add_parser("bench", help="measure recall and throughput side by side")
    bench.add_argument("--suite", choices=["compare", "scale", "selectivity", "partitions", "beam", "embed", "codecs",
                                                 "reindex"],
                       default="compare")
    bench.add_argument("--codecs", nargs="+", help="codecs: the codecs to compare (default: none, F16, SQ8, PQ d/4, "
                       "PCA to d/2 and d/4 with and without SQ8 and Rerank; OOD against PCA is always run)")
    bench.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2", "all-MiniLM-L6-v2:bfloat16"],
                       help="embed: the models to time")
    bench.add_argument("--batch-size", type=int, default=64, help="embed: texts per inference batch")
    bench.add_argument("--items", help="items Parquet (default: generated)")
    bench.add_argument("--queries", help="queries Parquet (default with --items: drawn from the items, filtered on their own values)")
    bench.add_argument("--workload", help="workload log (predicates, optionally vectors) for the workload partitioner "
                       "and calibration (compare default: an independent draw like the queries, with vectors)")
    bench.add_argument("--attribute", help="column for the attribute:COL partitioner (default: category; "
                       "tenants generator: tenant; tags generator: none, the method is left out)")
    bench.add_argument("--generator", choices=sorted(GENERATOR_NAMES), default="catalog",
                       help="compare: synthetic generator of items, queries and workload log (without --items)")
    bench.add_argument("--methods", nargs="+", default=list(_COMPARE_METHODS), choices=_COMPARE_METHODS,
                       metavar="METHOD", help=f"compare: methods to run, of {' '.join(_COMPARE_METHODS)} (default all)")
    bench.add_argument("--output", default="bench", help="compare: writes OUTPUT.json, .md and .png")
    bench.add_argument("--num-items", type=int, default=200_000)
    bench.add_argument("--num-queries", type=int, default=10_000)
    bench.add_argument("--dimension", type=int, default=96)
    bench.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000],
                       help="scale: collection sizes")
    bench.add_argument("--selectivities", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    bench.add_argument("--min-partition-rows", type=int, default=10_000)
    bench.add_argument("--max-partition-rows", type=int, default=100_000)
    bench.add_argument("--share", type=float, default=0.01, help="reindex: the share of items changed")
    bench.add_argument("--k", type=int, default=10)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--seed", type=int, default=0)
    bench.set_defaults(run=_bench)
    return p


USAGE_EXIT = 2
"""The exit code of a command refused for its input (a bad flag, file, column, value): argparse's."""

# The errors a user can fix (bad input or settings), by name: how a runner that runs stages in other
# processes (PortableRunner, multi_processing) reports them, as text in a RuntimeError.
_USER_ERRORS = ("ValueError", "PredicateError", "SchemaError", "ManifestError", "CodecError", "ModelError",
                "InputError", "ArrowInvalid", "ArrowTypeError", "ArrowNotImplementedError", "FileNotFoundError",
                "NotADirectoryError", "IsADirectoryError")
_REMOTE_ERROR = re.compile(rf"^(?:[\w.]+\.)?(?:{'|'.join(_USER_ERRORS)}): (.+)$", re.MULTILINE)
_STEP = re.compile(r" \[while running '[^']*'\]")


def user_error(error: BaseException) -> str | None:
    """The message of the user-facing error behind ``error`` (itself, a cause or context of it, as Beam
    re-raises a stage's error, or one a remote worker reported), without Beam's step annotations; None
    for anything else (a bug: it keeps its traceback)."""
    import pyarrow as pa

    local = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, pa.ArrowInvalid,
             pa.ArrowTypeError, pa.ArrowNotImplementedError)
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, local):
            message = str(error.args[0]) if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
            break
        remote = _REMOTE_ERROR.findall(str(error)) if isinstance(error, RuntimeError) else []
        if remote:
            message = remote[-1]
            break
        error = error.__cause__ or error.__context__
    else:
        return None
    message = _STEP.sub("", message).strip()
    return message if len(message) <= 1000 else message[:997] + "..."


def _refuse(message: str) -> SystemExit:
    """``message`` on stderr, and the SystemExit (code :data:`USAGE_EXIT`, ``str()`` the message) to raise."""
    print(message, file=sys.stderr, flush=True)
    refused = SystemExit(message)
    refused.code = USAGE_EXIT
    return refused


def main(argv: list[str] | None = None) -> int:
    """Run a command. An error in its input is ``beamvec <command>: <message>`` on stderr and exit code
    :data:`USAGE_EXIT` (with ``--verbose``, after its traceback); other errors propagate."""
    args, extra = parser().parse_known_args(argv)
    quiet.configure(args.verbose)
    command = " ".join(c for c in (args.command, getattr(args, "model_command", None)) if c)
    try:
        if extra:
            beam_options(extra)  # every flag is beamvec's or Beam's
        return args.run(args, extra)
    except SystemExit as e:
        if isinstance(e.code, str):  # a command's own refusal, already "beamvec <command>: ..."
            raise _refuse(e.code) from None
        raise
    except Exception as e:
        message = user_error(e)
        if message is None:
            raise
        if args.verbose:
            traceback.print_exc()
        raise _refuse(f"beamvec {command}: {message}") from None


if __name__ == "__main__":
    sys.exit(main())
