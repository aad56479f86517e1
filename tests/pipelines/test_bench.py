"""The benchmark's comparison on a small generated set: every method measured, outputs written."""

import dataclasses
import json

import pytest

from beamvec.index import parser as parser_module
from beamvec.index.predicate import Predicate
from beamvec.pipelines import compare


def _learnt(obj) -> int:
    """Entries of ``obj``'s dict and set attributes that are keyed by a predicate, or by a tuple that
    starts with one (its caches)."""
    def by_predicate(key) -> bool:
        return isinstance(key, Predicate) or (isinstance(key, tuple) and bool(key) and isinstance(key[0], Predicate))

    return sum(len(v) for v in vars(obj).values() if isinstance(v, (dict, set)) and any(map(by_predicate, v)))


def _cached(index) -> dict[str, int]:
    """What an index has learnt from predicates: per-predicate entries in the index, its plan and
    zone maps, its loaded shards and the objects they hold (mask caches), and the shared parses."""
    shards = list(index._shards.values())
    held = [v for s in shards for v in vars(s).values() if hasattr(v, "__dict__") and not callable(v)]
    parses = parser_module.parse_shared
    rows = (index._rows.zones, index._rows.columns) if index._rows is not None else ()
    return {"index": sum(_learnt(o) for o in (index, index.plan, *rows)),
            "shards": sum(_learnt(o) for o in shards + held),
            "parses": parses.cache_info().currsize}


@pytest.fixture
def probed(monkeypatch):
    """Every clocked run, as (method, fresh, what it found at the start of the clock): for beamvec the
    index's caches (:func:`_cached`); for a peer, the predicates it parsed inside the clock."""
    seen = []
    parses = [0]
    parse = compare.parse

    def counting_parse(text):
        parses[0] += 1
        return parse(text)

    clock = compare.clock

    def probing(run):
        search = run.search

        def probe():
            before = parses[0]
            state = _cached(run.index) if run.index is not None else None
            out = search()
            seen.append((run.method, run.fresh, state if run.index is not None else {"parsed": parses[0] - before}))
            return out

        return clock(dataclasses.replace(run, search=probe))

    monkeypatch.setattr(compare, "parse", counting_parse)
    monkeypatch.setattr(compare, "clock", probing)
    return seen


@pytest.mark.parametrize("generator, methods", [("catalog", compare.METHODS),
                                                ("tenants", ("workload", "hash", "scann", "faiss", "exact")),
                                                ("tags", ("workload", "faiss", "exact"))])
def test_compare_times_fresh_batches_and_writes_outputs(tmp_path, probed, generator, methods):
    out = str(tmp_path / "bench")
    rows = compare.run(out, num_items=3000, dimension=16, num_queries=150, partition_rows=(300, 1200), repeats=1,
                       log=lambda line: None, generator=generator, methods=methods)
    names = {"workload": "beamvec workload", "hash": "beamvec hash", "kmeans": "beamvec kmeans",
             "attribute": f"beamvec attribute:{'category' if generator == 'catalog' else 'tenant'}",
             "scann": "ScaNN global post-filter", "faiss": "faiss IVFFlat pre-filter", "exact": "exact pre-filter"}
    expected = {names[m] for m in methods}
    assert {m.method for m in rows} == expected
    assert all(0 <= m.recall <= 1 and m.qps > 0 for m in rows)
    # Exact partitions of this size are brute force: the workload-aware index must be exact too.
    assert max(m.recall for m in rows if m.method == "beamvec workload") == 1.0
    # faiss's nprobe grows up to every list, where the bitmap leaves only matches: it reaches the target.
    if "faiss" in methods:
        assert compare.fastest_reaching(rows)["faiss IVFFlat pre-filter"][1]
    # Recall grows with the effort each baseline is given.
    for method in {"faiss IVFFlat pre-filter", "beamvec kmeans"} & expected:
        recalls = [m.recall for m in sorted(rows, key=lambda m: m.rows_scored) if m.method == method]
        assert recalls == sorted(recalls), method

    # Every fresh run starts with nothing learnt from predicates (beamvec) or parses and evaluates
    # every distinct predicate inside the clock (the peers); the repeated runs start warm.
    beamvec = [(method, fresh, state) for method, fresh, state in probed if method.startswith("beamvec")]
    peers = [(method, fresh, state) for method, fresh, state in probed if not method.startswith("beamvec")]
    _, queries, _ = compare.generated(generator, 3000, 16, 150, 0)
    distinct = len({p for p in queries.column("predicate").to_pylist() if p})
    assert {m for m, _, _ in probed} == expected
    assert [state for _, fresh, state in beamvec if fresh] and \
        all(state == dict.fromkeys(state, 0) for _, fresh, state in beamvec if fresh)
    repeated = [state for _, fresh, state in beamvec if not fresh]
    assert len(repeated) == sum(m.startswith("beamvec") for m in expected)  # one per chosen setting per round
    assert all(state["index"] > 0 and state["shards"] > 0 and state["parses"] > 0 for state in repeated)
    assert all(state["parsed"] >= distinct for _, fresh, state in peers if fresh)
    assert all(state["parsed"] == 0 for _, fresh, state in peers if not fresh)
    assert {m for m, fresh, _ in peers if not fresh} == expected - {m for m, _, _ in beamvec}

    written = json.load(open(out + ".json"))
    assert written["generator"] == generator and written["evaluator"] in ("pyarrow", "beamvec")
    assert len(written["measurements"]) == len(rows)
    h2h = written["head_to_head"]
    assert {h["method"] for h in h2h} == expected
    assert all(h["fresh_qps"] > 0 and h["repeated_qps"] > 0 for h in h2h)
    assert set(written["heldout_recall"]) == {m for m in expected if m.startswith("beamvec")}
    assert all(r["queries"] > 0 and 0 <= r["mean"] <= 1 for r in written["heldout_recall"].values())
    markdown = open(out + ".md").read()
    assert markdown.count("\n") == len(rows) + 2 + 1 + 2 + len(expected)  # results, blank line, summary
    summary = markdown.split("\n\n")[1].splitlines()
    assert summary[0].split(" | ")[2:] == ["queries/s, fresh batch", "queries/s, repeated batch", "fresh / repeated",
                                           "beamvec workload is faster by (fresh) |"]
    for line in summary[2:]:
        cells = line.strip("| ").split(" | ")
        assert float(cells[2].replace(",", "")) > 0 and float(cells[3].replace(",", "")) > 0 and float(cells[4]) > 0
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
    # The ratios use the interleaved fresh-batch figures, not the sweep's.
    speeds = {"beamvec workload": compare.Speeds(1000.0, 1250.0), "faiss": compare.Speeds(125.0, 250.0),
              "scann": compare.Speeds(20.0, 25.0)}
    lines = compare.summary(chosen, speeds).splitlines()[2:]
    assert lines == ["| beamvec workload | a (0.9700 / 0.9600) | 1,000 | 1,250 | 0.80 |  |",
                     "| faiss | n2 (0.9900 / 0.9600) | 125 | 250 | 0.50 | 8.0x |",
                     "| scann | not reached; most accurate: s2 (0.9400 / 0.9300) | 20 | 25 | 0.80 | > 50.0x |"]


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


def test_head_to_head_reruns_each_chosen_setting_fresh_then_repeated_in_turn():
    calls = []

    def measurement(name):
        runs = [compare.Run(name, fresh, lambda name=name, fresh=fresh: calls.append(("search", name, fresh)),
                            lambda name=name, fresh=fresh: calls.append(("reset", name, fresh))) for fresh in (True, False)]
        return compare.Measurement(name, "s", 1.0, 1.0, 1.0, 0.0, 0, 0.0, fresh_run=runs[0], repeated_run=runs[1])

    chosen = compare.fastest_reaching([measurement("x"), measurement("y")])
    speeds = compare.head_to_head(chosen, 100, 3, log=lambda line: None)
    one_round = [(step, name, fresh) for name in ("x", "y") for fresh in (True, False) for step in ("reset", "search")]
    assert calls == one_round * 3
    assert set(speeds) == {"x", "y"} and all(s.fresh > 0 and s.repeated > 0 for s in speeds.values())
    assert all(m.repeated_qps == speeds[name].repeated for name, (m, _) in chosen.items())


def test_bench_flags_choose_the_generator_and_the_methods():
    from beamvec.pipelines import cli

    args = cli.parser().parse_args(["bench", "--generator", "tenants", "--methods", "workload", "hash"])
    assert (args.generator, args.methods, args.attribute) == ("tenants", ["workload", "hash"], None)
    defaults = cli.parser().parse_args(["bench"])
    assert defaults.generator == "catalog" and tuple(defaults.methods) == compare.METHODS
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["bench", "--methods", "annoy"])


def test_clock_runs_the_reset_outside_the_timed_search():
    import time

    seconds, out = compare.clock(compare.Run("m", True, lambda: "found", lambda: time.sleep(0.2)))
    assert out == "found" and seconds < 0.1


def test_scale_point_runs_each_job_in_its_own_process():
    from beamvec.pipelines import scale

    point = scale.point(3_000, dimension=16, num_queries=100)
    assert point["items"] == 3_000 and point["queries_answered"] == 100
    for job in ("build", "query", "global_scann_build"):
        assert point[f"{job}_seconds"] > 0
    for job in ("build", "query", "global_scann"):
        assert point[f"{job}_peak_mib"] > 0
    assert scale.markdown(point).count("|") == scale.HEADER.splitlines()[0].count("|")


def test_beam_suite_answers_as_in_process_search_does_on_every_round():
    from beamvec.pipelines import bench

    lines = []
    figures = bench.beam_suite(4000, 16, 300, 500, 2000, repeats=2, log=lines.append)
    assert figures["identical_share"] == 1.0
    assert figures["beam_recall"] == figures["search_recall"] > 0.9
    assert any("per round:" in line and "median" in line for line in lines)
    assert figures["query_seconds"] > 0 and figures["fresh_load_and_search_seconds"] > 0
