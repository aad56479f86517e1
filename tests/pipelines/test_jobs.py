"""The Beam jobs on real runners: DirectRunner, DirectRunner multi_processing, and the
PortableRunner against Beam's Python job service with an external SDK worker pool."""

import glob

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import Index, exact
from beamvec.pipelines import synthetic
from beamvec.index.columns import masks_of
from beamvec.index.querylog import read_workload
from beamvec.index.schema import validate_items
from beamvec.pipelines import jobs
from beamvec.transforms import BuildSettings
from beamvec.pipelines.demo import _with_bad_queries, _with_bad_rows

DIM = 16
SETTINGS = BuildSettings("workload", min_partition_rows=300, max_partition_rows=1500)


def read(pattern):
    files = sorted(glob.glob(pattern))
    return pa.concat_tables([pq.read_table(f) for f in files])


def neighbors(output):
    return {r["query_id"]: [n["id"] for n in r["neighbors"]] for r in read(f"{output}/results-*.parquet").to_pylist()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    items = synthetic.make_items(4000, DIM, seed=11)
    raw = _with_bad_rows(items)
    pq.write_table(raw.slice(0, 2000), root / "items-0.parquet")
    pq.write_table(raw.slice(2000), root / "items-1.parquet")
    predicates = synthetic.random_predicates(300, seed=11)
    queries = synthetic.make_queries(300, DIM, seed=11, predicates=predicates)
    pq.write_table(_with_bad_queries(queries), root / "queries.parquet")
    (root / "workload.txt").write_text("\n".join(synthetic.random_predicates(600, seed=12)))
    # The same predicates with query vectors: shards then calibrate on them and held-out recall is measured.
    pq.write_table(synthetic.make_queries(600, DIM, seed=11, predicates=synthetic.random_predicates(600, seed=12)),
                   root / "workload.parquet")
    return root, items, queries


def run_jobs(root, name, args, workload="workload.txt"):
    options = PipelineOptions(args)
    index, out = str(root / f"index-{name}"), str(root / f"out-{name}")
    build_counts = jobs.build(str(root / "items-*.parquet"), index, options, str(root / workload), SETTINGS)
    query_counts = jobs.query(index, str(root / "queries.parquet"), out, options, k=10)
    return index, out, build_counts, query_counts


@pytest.fixture(scope="module")
def direct(data):
    return run_jobs(data[0], "direct", [])


def test_counts_reconcile_and_bad_rows_are_dead_lettered(data, direct):
    index, out, build_counts, query_counts = direct
    rejected_items = read(jobs.dead_letters(index))
    assert build_counts["items_read"] == 4003 == build_counts["items_indexed"] + rejected_items.num_rows
    assert sorted(rejected_items.column("reason").to_pylist())[0].startswith("duplicate id 0")
    assert Index.open(index).manifest.num_rows == build_counts["items_indexed"]
    dead = read(f"{out}/rejected-*.parquet")
    assert query_counts["queries_read"] == 302 == len(neighbors(out)) + dead.num_rows
    reasons = dict(zip(dead.column("id").to_pylist(), dead.column("reason").to_pylist()))
    assert reasons["-1"].startswith("predicate does not parse") and "genre" in reasons["-2"]


def test_results_match_the_exact_oracle(data, direct):
    _, items, queries = data
    _, out, _, _ = direct
    valid = validate_items(items)
    predicates = queries.column("predicate").to_pylist()
    masks = masks_of(valid.table, predicates)
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    truth, _ = exact.search(valid.vectors, vectors, 10, "dot_product", [masks[p] for p in predicates])
    got = neighbors(out)
    found = np.array([(got[q] + [-1] * 10)[:10] for q in queries.column("query_id").to_pylist()])
    assert exact.recall(found, truth).mean() >= 0.95  # ids equal row numbers in generated items
    assert ((found >= 0).sum(axis=1) == (truth >= 0).sum(axis=1)).all()


def test_related_items_follow_the_template(data, direct):
    root, items, _ = data
    index = direct[0]
    sample = items.slice(0, 200)
    pq.write_table(sample, root / "sample.parquet")
    counts = jobs.related(index, str(root / "sample.parquet"), "category = {category} AND id != {id}",
                          str(root / "related"), PipelineOptions([]), k=5)
    category = dict(zip(items.column("id").to_pylist(), items.column("category").to_pylist()))
    got = neighbors(str(root / "related"))
    assert counts["queries_answered"] == len(got) == 200
    for item, found in got.items():
        assert len(found) == 5 and item not in found
        assert {category[f] for f in found} == {category[item]}


def test_all_runners_give_the_same_index_and_neighbors(data, direct, portable_options):
    root = data[0]
    runs = {  # with the log that has vectors (same predicates, so the same plan): held-out partials cross processes
        "multi": run_jobs(root, "multi", ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                          "workload.parquet"),
        "portable": run_jobs(root, "portable", portable_options, "workload.parquet"),
    }
    expected = neighbors(direct[1])
    partitions = [(p.id, p.rows, p.description) for p in Index.open(direct[0]).manifest.partitions]
    for name, (index, out, build_counts, query_counts) in runs.items():
        assert [(p.id, p.rows, p.description) for p in Index.open(index).manifest.partitions] == partitions, name
        assert neighbors(out) == expected, name
        assert build_counts["items_indexed"] == direct[2]["items_indexed"], name
    recalls = [Index.open(index).manifest.heldout_recall for index, *_ in runs.values()]
    assert recalls[0] == recalls[1] and recalls[0]["queries"] == 150 and recalls[0]["mean"] == 1.0  # brute-force shards


# --- Workload logs with query vectors ---

def test_read_workload_from_parquet_with_and_without_vectors_and_from_text(tmp_path):
    log = synthetic.make_queries(6, DIM, seed=3)
    vectors = log.column("vector").combine_chunks().values.to_numpy().reshape(-1, DIM)
    pq.write_table(log.select(["predicate"]), tmp_path / "predicates.parquet")
    only = read_workload(str(tmp_path / "predicates.parquet"), DIM)
    assert only.predicates == log.column("predicate").to_pylist() and only.vectors is None and not only.has_vectors
    pq.write_table(log, tmp_path / "log.parquet")
    full = read_workload(str(tmp_path / "log.parquet"), DIM)
    assert full.predicates == only.predicates and full.dropped == 0
    np.testing.assert_array_equal(full.vectors, vectors)
    # Bad vectors leave the vectors part (counted), never the predicates.
    rows = [list(v) for v in vectors]
    rows[1], rows[3][0], rows[4] = rows[1][:-1], float("nan"), None
    bad = pa.table({"predicate": log.column("predicate"), "vector": pa.array(rows, pa.list_(pa.float64()))})
    pq.write_table(bad, tmp_path / "bad.parquet")
    read_bad = read_workload(str(tmp_path / "bad.parquet"), DIM)
    assert read_bad.predicates == only.predicates and read_bad.dropped == 3
    np.testing.assert_array_equal(read_bad.vector_rows, [0, 2, 5])
    np.testing.assert_allclose(read_bad.queries().vectors, vectors[[0, 2, 5]])
    assert read_bad.queries().predicates == [only.predicates[i] for i in (0, 2, 5)]
    (tmp_path / "log.txt").write_text("category = 'rock'\n\nyear > 2000\n")
    text = read_workload(str(tmp_path / "log.txt"))
    assert text.predicates == ["category = 'rock'", "", "year > 2000"] and text.vectors is None
    assert len(read_workload(None)) == 0
    with pytest.raises(ValueError, match="no 'predicate' column"):
        pq.write_table(log.select(["vector"]), tmp_path / "nopredicate.parquet")
        read_workload(str(tmp_path / "nopredicate.parquet"))


def test_beam_build_calibrates_on_the_log_and_reports_held_out_recall(tmp_path, capsys):
    """`beamvec build` on a log with vectors: shards calibrated on log queries, and the held-out
    figure the Beam job merged from per-shard partials equals the in-process measurement of that index."""
    from beamvec.index import querylog
    from beamvec.pipelines import cli

    dim = 32
    items = synthetic.make_items(20_000, dim, seed=21)
    pq.write_table(items.slice(0, 10_000), tmp_path / "items-0.parquet")
    pq.write_table(items.slice(10_000), tmp_path / "items-1.parquet")
    log_table = synthetic.make_queries(1_200, dim, seed=21)
    pq.write_table(log_table, tmp_path / "log.parquet")
    index = str(tmp_path / "index")
    cli.main(["build", "--items", str(tmp_path / "items-*.parquet"), "--output", index,
              "--workload", str(tmp_path / "log.parquet"), "--min-partition-rows", "5000", "--max-partition-rows", "10000"])
    opened = Index.open(index)
    figure = opened.manifest.heldout_recall
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"recall@10 on 300 held-out log queries: {figure['mean']:.4f} "
                    f"(most selective 10%: {figure['selective']:.4f}); build target 0.95")
    calibrations = [opened.shard(o).calibration for o in range(len(opened.manifest.partitions))]
    assert len(calibrations) >= 2 and all(c.log_queries > 0 for c in calibrations)

    valid = validate_items(items)
    log = read_workload(str(tmp_path / "log.parquet"), dim)
    calibration, heldout = querylog.build_parts(log, valid.table.drop_columns(["vector"]).schema, dim)
    assert len(heldout) == 300
    in_process = querylog.measure_index(opened, heldout, valid.table.column("id").combine_chunks(), valid.vectors,
                                        valid.table.drop_columns(["vector"]), target=0.95)
    assert figure == in_process
    # The calibration queries each shard got are the log queries the plan routes to it.
    routed = querylog.route(opened.plan, calibration)
    assert [c.log_queries for c in calibrations] == [min(128, len(routed[int(p.id[1:])]))
                                                     for p in opened.manifest.partitions]


def test_build_without_log_vectors_says_nothing_was_measured(data, direct, capsys):
    from beamvec.pipelines import cli

    assert Index.open(direct[0]).manifest.heldout_recall is None
    assert cli.heldout_line(None, 0.95).startswith("recall not measured: the workload log has no query vectors")
