"""Reindex: only changed partitions rebuilt, the same answers as a full build, drift re-plans."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.index import Index, build_index, versions
from beamvec.index.plan import plan_from_json
from beamvec.index.querylog import QueryLog, read_from_index
from beamvec.index.schema import vectors_array
from beamvec.pipelines import cli, jobs, synthetic
from beamvec.transforms import BuildSettings

DIM = 16
SETTINGS = BuildSettings("workload", min_partition_rows=300, max_partition_rows=1200, shard_spec="Tree8,AH2,Reorder40")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reindex")
    items, queries, log = synthetic.generate("catalog", 6000, DIM, 200, seed=3)
    pq.write_table(items, root / "items.parquet")
    pq.write_table(log, root / "workload.parquet")
    counts = jobs.build(str(root / "items.parquet"), str(root / "index"), PipelineOptions([]),
                        str(root / "workload.parquet"), SETTINGS)
    vectors = np.asarray(queries.column("vector").combine_chunks().values.to_numpy(), np.float32).reshape(-1, DIM)
    return root, items, (vectors, queries.column("predicate").to_pylist()), counts


def answers(path, queries):
    return Index.open(str(path)).search(*queries, k=10)


def same(a, b):
    assert np.array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def full_build_like(root, index, items, name):
    """A full in-process build of ``items`` with the published version's plan, settings and log."""
    path, manifest = versions.open_manifest(str(index))
    b = manifest.build
    vectors = np.asarray(items.column("vector").combine_chunks().values.to_numpy(), np.float32).reshape(-1, DIM)
    build_index(str(root / name), items.column("id").combine_chunks(), vectors, items.drop_columns(["vector"]),
                plan=plan_from_json(manifest.plan), config=b["shard_spec"], recall_target=b["recall_target"],
                seed=b["seed"], log=read_from_index(path, manifest.workload, DIM))
    return root / name


def changed(items, where, shift=0.5):
    """``items`` with the vectors of the rows ``where`` moved."""
    vectors = np.asarray(items.column("vector").combine_chunks().values.to_numpy(), np.float32).reshape(-1, DIM)
    vectors = vectors.copy()
    vectors[where] += np.float32(shift)
    return items.set_column(items.column_names.index("vector"), "vector", vectors_array(vectors))


def test_an_unchanged_snapshot_rebuilds_nothing_and_answers_alike(world, tmp_path):
    root, items, queries, built = world
    want = answers(root / "index", queries)
    counts = jobs.reindex(str(root / "index"), str(root / "items.parquet"), PipelineOptions([]))
    manifest = versions.open_manifest(str(root / "index"))[1]
    assert counts.get("shards_built", 0) == 0 and counts["shards_reused"] == len(manifest.partitions) > 2
    assert counts["items_read"] == counts["items_indexed"] + counts.get("items_rejected", 0) == 6000
    same(answers(root / "index", queries), want)
    history = versions.read_pointer(str(root / "index")).history[-1]
    assert history["kind"] == "reindex" and history["reused"] == len(manifest.partitions) and not history["replanned"]


def test_a_changed_category_rebuilds_only_its_partitions_and_answers_as_a_full_build(world, tmp_path):
    root, items, queries, _ = world
    index = tmp_path / "index"
    import shutil

    shutil.copytree(root / "index", index)
    where = np.flatnonzero(pc.equal(items.column("category"), "jazz").to_numpy(zero_copy_only=False))[:60]
    final = changed(items, where)
    pq.write_table(final, tmp_path / "changed.parquet")
    counts = jobs.reindex(str(index), str(tmp_path / "changed.parquet"), PipelineOptions([]))
    partitions = len(versions.open_manifest(str(index))[1].partitions)
    assert 1 <= counts["shards_built"] < partitions / 2, counts
    assert counts["shards_built"] + counts["shards_reused"] == partitions
    same(answers(index, queries), answers(full_build_like(tmp_path, index, final, "full"), queries))


def test_upserts_and_deletes_read_only_the_partitions_they_touch(world, tmp_path):
    root, items, queries, _ = world
    index = tmp_path / "index"
    import shutil

    shutil.copytree(root / "index", index)
    jazz = np.flatnonzero(pc.equal(items.column("category"), "jazz").to_numpy(zero_copy_only=False))
    upserts = changed(items.take(pa.array(jazz[:40])), slice(None))
    new = items.take(pa.array(jazz[40:45]))
    new = new.set_column(0, "id", pa.array(np.arange(10_000, 10_005), pa.int64()))
    upserts = pa.concat_tables([upserts, new])
    bad = changed(items.take(pa.array(jazz[50:51])), slice(None), shift=np.nan)  # rejected: the old copy stays
    pq.write_table(pa.concat_tables([upserts, bad]), tmp_path / "upserts.parquet")
    deleted = [int(i) for i in jazz[45:50]]
    (tmp_path / "deletes.txt").write_text("\n".join(map(str, deleted)))
    counts = jobs.reindex(str(index), str(tmp_path / "upserts.parquet"), PipelineOptions([]), upserts=True,
                          deletes=str(tmp_path / "deletes.txt"))
    assert counts["items_read"] + counts["base_items_read"] == counts["items_indexed"] + counts.get(
        "items_rejected", 0) + counts["items_replaced"] + counts["items_deleted"]
    assert counts["items_replaced"] == 40 and counts["items_deleted"] == 5 and counts["items_indexed"] == 6000
    assert counts["items_rejected"] == 1
    partitions = len(versions.open_manifest(str(index))[1].partitions)
    assert 1 <= counts["shards_built"] < partitions / 2, counts
    keep = ~np.isin(items.column("id").to_numpy(), np.r_[jazz[:40], deleted])
    final = pa.concat_tables([items.filter(pa.array(keep)), upserts])
    same(answers(index, queries), answers(full_build_like(tmp_path, index, final, "full"), queries))


def test_a_drifted_workload_replans_and_a_fitting_one_does_not(world, tmp_path, capsys):
    root, items, queries, _ = world
    index = tmp_path / "index"
    import shutil

    shutil.copytree(root / "index", index)
    # The plan's cuts come from category and year; a workload on price and bucket fits it badly.
    rng = np.random.default_rng(9)
    drifted = [f"bucket = {int(b)} AND price < {float(p)}" for b, p in zip(rng.integers(0, 100, 300),
                                                                            rng.integers(5, 40, 300))]
    pq.write_table(pa.table({"predicate": drifted}), tmp_path / "drifted.parquet")
    assert cli.main(["reindex", "--index", str(index), "--items", str(root / "items.parquet"),
                     "--workload", str(tmp_path / "drifted.parquet")]) == 0
    out = capsys.readouterr().out
    history = versions.read_pointer(str(index)).history[-1]
    assert history["replanned"] and history["reused"] == 0, history
    assert "re-plan and rebuild every partition" in out and "fit 0." in out
    manifest = versions.open_manifest(str(index))[1]
    assert read_from_index(versions.resolve(str(index)), manifest.workload, DIM).predicates == drifted
    # The workload the index was built with fits its plan: kept, nothing rebuilt.
    assert cli.main(["reindex", "--index", str(index), "--items", str(root / "items.parquet"),
                     "--workload", str(tmp_path / "drifted.parquet")]) == 0
    history = versions.read_pointer(str(index)).history[-1]
    assert not history["replanned"] and history["rebuilt"] == 0, history
    assert "keep the plan" in capsys.readouterr().out


def test_versions_and_gc_on_the_command_line(world, tmp_path, capsys):
    root, items, queries, _ = world
    index = tmp_path / "index"
    import shutil

    shutil.copytree(root / "index", index)
    assert cli.main(["reindex", "--index", str(index), "--items", str(root / "items.parquet")]) == 0
    capsys.readouterr()
    assert cli.main(["versions", str(index)]) == 0
    out = capsys.readouterr().out
    listed = versions.list_versions(str(index))
    assert out.count("\n| v2") == len(listed) >= 2 and "| current | 6,000 |" in out and "reindex: rebuilt 0, reused" in out
    assert cli.main(["gc", str(index), "--keep", "1"]) == 0
    assert f"removed {len(listed) - 1} version" in capsys.readouterr().out
    assert len(versions.list_versions(str(index))) == 1
    same(answers(index, queries), answers(root / "index", queries))


def test_a_reindex_that_lost_a_race_publishes_nothing(world, tmp_path):
    root, items, queries, _ = world
    index = tmp_path / "index"
    import shutil

    from beamvec.transforms import ReadItems, Reindex

    shutil.copytree(root / "index", index)
    import apache_beam as beam

    p = beam.Pipeline()
    _ = p | ReadItems(str(root / "items.parquet")) | Reindex(str(index))
    jobs.reindex(str(index), str(root / "items.parquet"), PipelineOptions([]))  # published meanwhile
    current = versions.read_pointer(str(index)).current
    with pytest.raises(Exception, match="was published while"):
        p.run().wait_until_finish()
    assert versions.read_pointer(str(index)).current == current


def test_reindex_refuses_what_it_cannot_do(world, tmp_path):
    root, items, queries, _ = world
    from beamvec.transforms import Reindex

    with pytest.raises(ValueError, match="no published version"):
        Reindex(str(tmp_path))
    with pytest.raises(ValueError, match="needs every item"):
        Reindex(str(root / "index"), upserts=True, workload=QueryLog(["year > 2000"]))
    with pytest.raises(ValueError, match="leave the deleted items out"):
        Reindex(str(root / "index"), deletes=[1])


def test_upserts_into_an_index_with_a_codec_answer_as_a_full_build_with_that_codec(world, tmp_path):
    import dataclasses

    from beamvec.index.search import index_codec

    root, items, queries, _ = world
    index = tmp_path / "index"
    jobs.build(str(root / "items.parquet"), str(index), PipelineOptions([]), str(root / "workload.parquet"),
               dataclasses.replace(SETTINGS, codec="SQ8,Rerank"))
    jazz = np.flatnonzero(pc.equal(items.column("category"), "jazz").to_numpy(zero_copy_only=False))
    upserts = changed(items.take(pa.array(jazz[:30])), slice(None))
    pq.write_table(upserts, tmp_path / "upserts.parquet")
    counts = jobs.reindex(str(index), str(tmp_path / "upserts.parquet"), PipelineOptions([]), upserts=True)
    assert counts["items_replaced"] == 30 and counts["shards_reused"] >= 1
    path, manifest = versions.open_manifest(str(index))
    final = pa.concat_tables([items.filter(pa.array(~np.isin(items.column("id").to_numpy(), jazz[:30]))), upserts])
    vectors = np.asarray(final.column("vector").combine_chunks().values.to_numpy(), np.float32).reshape(-1, DIM)
    build_index(str(tmp_path / "full"), final.column("id").combine_chunks(), vectors, final.drop_columns(["vector"]),
                plan=plan_from_json(manifest.plan), config=SETTINGS.shard_spec, seed=0,
                log=read_from_index(path, manifest.workload, DIM), codec=index_codec(path, manifest))
    same(answers(index, queries), answers(tmp_path / "full", queries))
    sq8 = tmp_path / "sq8"
    jobs.build(str(root / "items.parquet"), str(sq8), PipelineOptions([]), str(root / "workload.parquet"),
               dataclasses.replace(SETTINGS, codec="SQ8"))
    from beamvec.transforms import Reindex

    with pytest.raises(ValueError, match="keep only SQ8 codes"):
        Reindex(str(sq8), upserts=True)
