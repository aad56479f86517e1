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
        recalls = [m.recall for m in sorted(rows, key=lambda m: m.rows_scored) if m.method == method]
        assert recalls == sorted(recalls), method
    written = json.load(open(out + ".json"))
    assert len(written["measurements"]) == len(rows)
    assert {h["method"] for h in written["head_to_head"]} == methods and all(h["qps"] > 0 for h in written["head_to_head"])
    markdown = open(out + ".md").read()
    assert markdown.count("\n") == len(rows) + 2 + 1 + 2 + len(methods)  # results, blank line, summary
    assert "beamvec workload is faster by" in markdown
    assert open(out + ".png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_summary_compares_each_method_at_its_fastest_setting_that_reaches_the_target():
    def m(method, setting, recall, selective, qps):
        return compare.Measurement(method, setting, recall, selective, qps, 0.0, 0, 0.0)

    rows = [m("beamvec workload", "a", 0.97, 0.96, 900.0), m("beamvec workload", "b", 0.99, 0.99, 600.0),
            m("faiss", "n1", 0.99, 0.94, 500.0), m("faiss", "n2", 0.99, 0.96, 100.0), m("faiss", "n3", 1.0, 1.0, 50.0),
            m("scann", "s1", 0.90, 0.80, 300.0), m("scann", "s2", 0.94, 0.93, 30.0)]
    chosen = compare.fastest_reaching(rows)
    assert {method: (c.setting, reached) for method, (c, reached) in chosen.items()} == {
        "beamvec workload": ("a", True), "faiss": ("n2", True), "scann": ("s2", False)}  # n1 misses the decile
    # The ratios use the interleaved figures, not the sweep's.
    lines = compare.summary(chosen, {"beamvec workload": 1000.0, "faiss": 125.0, "scann": 20.0}).splitlines()[2:]
    assert lines == ["| beamvec workload | a (0.9700 / 0.9600) | 1,000 |  |",
                     "| faiss | n2 (0.9900 / 0.9600) | 125 | 8.0x |",
                     "| scann | not reached; most accurate: s2 (0.9400 / 0.9300) | 20 | > 50.0x |"]


def test_lowest_reaching_bisects_to_the_lowest_setting_that_meets_the_target():
    tried = []

    def reaches(setting):
        tried.append(setting)
        return setting >= 37

    step = lambda low, high: (low + high) // 2 if high - low > 1 else None
    assert compare.lowest_reaching(reaches, 32, 128, step) == 37
    assert len(tried) == len(set(tried)) <= 7 and all(32 < t < 128 for t in tried)
    # A float setting, to a relative tolerance: the answer reaches and lies within it of the threshold.
    found = compare.lowest_reaching(lambda s: s >= 0.61, 0.5, 1.0, lambda low, high: (low + high) / 2 if high > low * 1.01 else None)
    assert 0.61 <= found <= 0.61 * 1.01


def test_add_lowest_reaching_appends_the_bisected_setting_only_between_a_miss_and_a_hit():
    def at(nprobe):
        recall = 1.0 if nprobe >= 37 else 0.5
        return compare.Measurement("m", str(nprobe), recall, recall, 1.0, 0.0, 0, 0.0)

    step = lambda low, high: (low + high) // 2 if high - low > 1 else None
    for knobs, added in (((8, 32, 128), ["37"]), ((64, 128), []), ((8, 16), []), ((8, 37), [])):
        swept = [at(k) for k in knobs]
        compare.add_lowest_reaching(swept, knobs, lambda k: at(k).recall >= 0.95, step, at, 0.95)
        assert [m.setting for m in swept[len(knobs):]] == added, knobs


def test_head_to_head_reruns_each_chosen_setting_in_turn():
    calls = []
    rows = [compare.Measurement(name, "s", 1.0, 1.0, 1.0, 0.0, 0, 0.0, lambda name=name: calls.append(name))
            for name in ("x", "y")]
    qps = compare.head_to_head(compare.fastest_reaching(rows), 100, 3, log=lambda line: None)
    assert calls == ["x", "y"] * 3 and set(qps) == {"x", "y"} and all(v > 0 for v in qps.values())


def test_scale_point_runs_each_job_in_its_own_process():
    from beamvec.pipelines import scale

    point = scale.point(3_000, dimension=16, num_queries=100)
    assert point["items"] == 3_000 and point["queries_answered"] == 100
    for job in ("build", "query", "global_scann_build"):
        assert point[f"{job}_seconds"] > 0
    for job in ("build", "query", "global_scann"):
        assert point[f"{job}_peak_mib"] > 0
    assert scale.markdown(point).count("|") == scale.HEADER.splitlines()[0].count("|")
