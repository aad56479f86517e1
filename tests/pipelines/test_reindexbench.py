"""The reindex benchmark on a small generated set: every job timed, the shard counts what the
changes imply."""

from beamvec.pipelines import reindexbench, synthetic


def test_the_reindex_suite_times_a_full_build_and_every_reindex(capsys):
    items, _, workload = synthetic.generate("catalog", 6000, 8, 200, seed=2)
    lines = []
    rows = reindexbench.suite(items, workload, [], 0.01, (300, 1500), repeats=1, seed=2, log=lines.append)
    by = {r.job: r for r in rows}
    full = rows[0]
    assert full.job == "full build" and full.reused == 0 and full.rebuilt >= 4
    assert all(r.rebuilt + r.reused == full.rebuilt for r in rows if "drifted" not in r.job)
    spread = by["reindex, 1% changed at random, snapshot"]
    local = next(r for job, r in by.items() if "in one partition" in job and job.endswith("snapshot"))
    assert spread.reused == 0 and 0 < local.rebuilt < spread.rebuilt  # random changes touch every partition
    drifted = by["reindex, drifted workload (snapshot, unchanged items)"]
    assert drifted.replanned and drifted.reused == 0 and not any(r.replanned for r in rows if r is not drifted)
    assert all(r.seconds > 0 for r in rows)
    assert any(line.startswith("target: a 1% reindex in at most 20% of the full build's time") for line in lines)
    assert reindexbench.HEADER in lines
