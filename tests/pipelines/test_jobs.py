"""The Beam jobs on real runners: DirectRunner, DirectRunner multi_processing, and the
PortableRunner against Beam's Python job service with an external SDK worker pool."""

import glob
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import Index, exact, synthetic
from beamvec.index.predicate import parse
from beamvec.index.schema import validate_items
from beamvec.pipelines import jobs
from beamvec.pipelines.demo import _with_bad_queries, _with_bad_rows

DIM = 16
SETTINGS = jobs.BuildSettings("workload", min_partition_rows=300, max_partition_rows=1500)


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
    return root, items, queries


def run_jobs(root, name, args):
    options = PipelineOptions(args)
    index, out = str(root / f"index-{name}"), str(root / f"out-{name}")
    build_counts = jobs.build(str(root / "items-*.parquet"), index, options, str(root / "workload.txt"), SETTINGS)
    query_counts = jobs.query(index, str(root / "queries.parquet"), out, options, k=10)
    return index, out, build_counts, query_counts


@pytest.fixture(scope="module")
def direct(data):
    return run_jobs(data[0], "direct", [])


def test_counts_reconcile_and_bad_rows_are_dead_lettered(data, direct):
    index, out, build_counts, query_counts = direct
    rejected_items = read(f"{index}/rejected/*.parquet")
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
    masks = {p: parse(p).evaluate(valid.table) if p else None for p in set(predicates)}
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


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_for(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listening on port {port}")


@pytest.fixture(scope="module")
def portable_services():
    """Beam's Python job service and an external SDK worker pool, started with this venv's python."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    job_port, pool_port = free_port(), free_port()
    services = [
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                          "--port", str(job_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                          "--service_port", str(pool_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        wait_for(job_port)
        wait_for(pool_port)
        yield job_port, pool_port
    finally:
        for s in services:
            s.terminate()
            s.wait(timeout=30)


def test_all_runners_give_the_same_index_and_neighbors(data, direct, portable_services):
    root = data[0]
    job_port, pool_port = portable_services
    runs = {
        "multi": run_jobs(root, "multi", ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
        "portable": run_jobs(root, "portable", [
            "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"]),
    }
    expected = neighbors(direct[1])
    partitions = [(p.id, p.rows, p.description) for p in Index.open(direct[0]).manifest.partitions]
    for name, (index, out, build_counts, query_counts) in runs.items():
        assert [(p.id, p.rows, p.description) for p in Index.open(index).manifest.partitions] == partitions, name
        assert neighbors(out) == expected, name
        assert build_counts["items_indexed"] == direct[2]["items_indexed"], name
