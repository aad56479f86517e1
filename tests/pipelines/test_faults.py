"""Faults: builds and reindexes SIGKILLed at several points, a DoFn retried by the runner, and the
same index on every runner."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import Index, versions
from beamvec.index.schema import vectors_array
from beamvec.pipelines import jobs, synthetic
from beamvec.transforms import BuildSettings

DIM = 8
SETTINGS = BuildSettings("workload", min_partition_rows=300, max_partition_rows=1000)
FLAGS = ["--min-partition-rows", "300", "--max-partition-rows", "1000"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    items, queries, log = synthetic.generate("catalog", 4000, DIM, 100, seed=5)
    pq.write_table(items, root / "items.parquet")
    pq.write_table(log, root / "workload.parquet")
    vectors = np.asarray(items.column("vector").combine_chunks().values.to_numpy(), np.float32).reshape(-1, DIM)
    moved = vectors.copy()
    moved[np.random.default_rng(1).choice(len(vectors), len(vectors) // 20, replace=False)] += 0.7  # 5% moved
    pq.write_table(items.set_column(1, "vector", vectors_array(moved)), root / "moved.parquet")
    qv = np.asarray(queries.column("vector").combine_chunks().values.to_numpy(), np.float32).reshape(-1, DIM)
    return root, (qv, queries.column("predicate").to_pylist())


def answers(index, queries):
    return Index.open(str(index)).search(*queries, k=10)


def _command(kind, root, index, items):
    if kind == "build":
        return [sys.executable, "-m", "beamvec.pipelines.cli", "build", "--items", str(items), "--output", str(index),
                "--workload", str(root / "workload.parquet"), *FLAGS]
    return [sys.executable, "-m", "beamvec.pipelines.cli", "reindex", "--index", str(index), "--items", str(items)]


def _new_versions(index, before):
    return [n for n in sorted(os.listdir(index / "versions")) if n not in before]


def _reached(point, index, before):
    new = _new_versions(index, before)
    if point == "first write":
        return bool(new)
    if not new:
        return False
    version = index / "versions" / new[0]
    if point == "first shard":
        shards = version / "shards"
        return shards.exists() and any((shards / s / "shard.json").exists() for s in os.listdir(shards))
    return (version / "manifest.json").exists()  # "manifest": the last write before the pointer


def _kill_at(command, point, index, seconds=None):
    before = set(os.listdir(index / "versions"))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    try:
        while proc.poll() is None:
            if (seconds is not None and time.monotonic() - start >= seconds) or (
                    seconds is None and _reached(point, index, before)):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.wait()
    return proc.returncode


@pytest.mark.parametrize("kind", ["build", "reindex"])
def test_a_killed_job_leaves_the_published_version_answering_alike_and_the_next_one_succeeds(world, tmp_path, kind):
    root, queries = world
    index = tmp_path / "index"
    jobs.build(str(root / "items.parquet"), str(index), PipelineOptions([]), str(root / "workload.parquet"), SETTINGS)
    want, published = answers(index, queries), versions.read_pointer(str(index))
    command = _command(kind, root, index, root / "moved.parquet")
    start = time.monotonic()
    clean = tmp_path / "timing"
    subprocess.run(_command(kind, root, index, root / "moved.parquet") if kind == "reindex" else
                   _command(kind, root, clean, root / "moved.parquet"), check=True, capture_output=True)
    seconds = time.monotonic() - start
    if kind == "reindex":  # the timing run published: start again from the first version
        jobs.build(str(root / "items.parquet"), str(index), PipelineOptions([]), str(root / "workload.parquet"),
                   SETTINGS)
        want, published = answers(index, queries), versions.read_pointer(str(index))
    killed = []
    for point, at in (("first write", None), ("first shard", None), ("manifest", None), ("80% of its time", 0.8)):
        code = _kill_at(command, point, index, None if at is None else at * seconds)
        pointer = versions.read_pointer(str(index))
        if pointer.current == published.current:  # killed before it published: nothing changed for readers
            got = answers(index, queries)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1], equal_nan=True), point
            killed.append((point, code))
        else:  # it had published: a whole, verified version
            versions.verify(versions.resolve(str(index)))
    # The first two points always come before the publish; the later ones may land on either side of it.
    assert [p for p, _ in killed][:2] == ["first write", "first shard"], killed
    assert all(code == -signal.SIGKILL for _, code in killed), killed
    subprocess.run(command, check=True, capture_output=True)
    after = answers(index, queries)
    assert not np.array_equal(after[1], want[1], equal_nan=True)  # the moved vectors are indexed
    assert versions.read_pointer(str(index)).current != published.current


def test_a_shard_builder_that_fails_once_is_retried_and_the_index_is_the_same(world, tmp_path, monkeypatch):
    root, queries = world
    clean = tmp_path / "clean"
    jobs.build(str(root / "items.parquet"), str(clean), PipelineOptions([]), str(root / "workload.parquet"), SETTINGS)
    import beamvec.transforms.build as build

    real, calls = build.write_shard, []

    def fails_once(path, pid, shard, description):
        calls.append(pid)
        entry = real(path, pid, shard, description)  # the shard is written, then the worker dies
        if len(calls) == 1:
            raise RuntimeError("injected: the first attempt fails after writing its shard")
        return entry

    monkeypatch.setattr(build, "write_shard", fails_once)
    retried = tmp_path / "retried"
    jobs.build(str(root / "items.parquet"), str(retried), PipelineOptions(["--runner=BundleBasedDirectRunner"]),
               str(root / "workload.parquet"), SETTINGS)
    assert len(calls) > len(set(calls))  # a partition was built twice
    assert _manifest(retried) == _manifest(clean)
    a, b = answers(retried, queries), answers(clean, queries)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1], equal_nan=True)


def _manifest(index):
    with open(os.path.join(versions.resolve(str(index)), "manifest.json")) as f:
        return json.load(f)


def test_the_same_build_and_reindex_on_every_runner(world, tmp_path, portable_options):
    root, queries = world
    runs = {"direct": [], "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
            "portable": portable_options}
    manifests = {}
    for name, flags in runs.items():
        index = tmp_path / name
        jobs.build(str(root / "items.parquet"), str(index), PipelineOptions(flags), str(root / "workload.parquet"),
                   SETTINGS)
        built = _manifest(index)
        counts = jobs.reindex(str(index), str(root / "moved.parquet"), PipelineOptions(flags))
        assert counts["items_indexed"] == 4000, (name, counts)
        manifests[name] = (built, _manifest(index))
    assert manifests["multi_processing"] == manifests["direct"]
    assert manifests["portable"] == manifests["direct"]
    a, b = answers(tmp_path / "direct", queries), answers(tmp_path / "portable", queries)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1], equal_nan=True)
