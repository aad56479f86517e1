"""The benchmark's comparison on a small generated set: every method measured, outputs written."""

import json

from beamvec.pipelines import compare


def test_compare_measures_every_method_and_writes_outputs(tmp_path):
    out = str(tmp_path / "bench")
    rows = compare.run(out, num_items=4000, dimension=16, num_queries=200, partition_rows=(300, 1500), repeats=1,
                       log=lambda line: None)
    methods = {m.method for m in rows}
    assert methods == {"exact pre-filter", "beamvec workload", "beamvec hash", "beamvec attribute:category",
                       "beamvec kmeans", "ScaNN global post-filter", "faiss IVFFlat pre-filter"}
    assert all(0 <= m.recall <= 1 and m.qps > 0 for m in rows)
    # Exact partitions of this size are brute force: the workload-aware index must be exact too.
    assert max(m.recall for m in rows if m.method == "beamvec workload") == 1.0
    # Recall grows with the effort each baseline is given.
    for method in ("faiss IVFFlat pre-filter", "beamvec kmeans"):
        recalls = [m.recall for m in rows if m.method == method]
        assert recalls == sorted(recalls), method
    assert len(json.load(open(out + ".json"))) == len(rows)
    assert open(out + ".md").read().count("\n") == len(rows) + 2
    assert open(out + ".png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_scale_point_runs_each_job_in_its_own_process():
    from beamvec.pipelines import scale

    point = scale.point(3_000, dimension=16, num_queries=100)
    assert point["items"] == 3_000 and point["queries_answered"] == 100
    for job in ("build", "query", "global_scann_build"):
        assert point[f"{job}_seconds"] > 0
    for job in ("build", "query", "global_scann"):
        assert point[f"{job}_peak_mib"] > 0
    assert scale.markdown(point).count("|") == scale.HEADER.splitlines()[0].count("|")
