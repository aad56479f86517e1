"""The `beamvec` command line: flags it does not know are errors, builds work with their defaults,
and only beamvec's own lines are shown unless --verbose."""

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from beamvec.pipelines import cli, synthetic


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    pq.write_table(synthetic.make_items(6000, 16, seed=41), root / "items.parquet")
    pq.write_table(synthetic.make_queries(50, 16, seed=41), root / "queries.parquet")
    return root


@pytest.mark.parametrize("command, flag", [
    (["build", "--items", "ITEMS", "--output", "OUT", "--metirc", "cosine"], "--metirc"),
    (["query", "--index", "OUT", "--queries", "QUERIES", "--output", "OUT2", "--topk", "3"], "--topk"),
])
def test_a_mistyped_flag_is_an_error_that_names_it(files, command, flag):
    args = [a.replace("ITEMS", str(files / "items.parquet")).replace("QUERIES", str(files / "queries.parquet"))
            .replace("OUT", str(files / "never")) for a in command]
    with pytest.raises(SystemExit, match=flag):
        cli.main(["--verbose"] + args)
    assert not (files / "never").exists()


def test_a_bad_setting_is_an_error_before_any_work(files):
    with pytest.raises(SystemExit, match="unknown partitioner 'nope'"):
        cli.main(["--verbose", "build", "--items", str(files / "items.parquet"), "--output", str(files / "x"),
                  "--partitioner", "nope"])
    with pytest.raises(SystemExit):  # argparse: k must be at least 1
        cli.main(["--verbose", "query", "--index", "x", "--queries", "y", "--output", "z", "--k", "0"])


def build(files, output, *extra):
    return subprocess.run([sys.executable, "-m", "beamvec.pipelines.cli", *extra, "build", "--items",
                           str(files / "items.parquet"), "--output", str(files / output),
                           "--min-partition-rows", "1500", "--max-partition-rows", "5000", "--shard-spec",
                           "Tree20,AH2,Reorder40"],
                          capture_output=True, text=True, timeout=600)


def test_worker_processes_are_quiet_too_and_their_progress_shows(files):
    done = subprocess.run([sys.executable, "-m", "beamvec.pipelines.cli", "build", "--items", str(files / "items.parquet"),
                           "--output", str(files / "workers"), "--shard-spec", "Brute",
                           "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "items: read 6,000 = indexed 6,000 + rejected 0" in done.stdout
    lines = done.stderr.splitlines()
    assert any(line.startswith("shards: ") for line in lines), done.stderr
    assert [line for line in lines if cli.quiet.BEAM_CHATTER.match(line.encode()) or line.startswith("INFO:")] == []


def test_build_with_defaults_falls_back_to_hash_and_native_logs_show_only_when_verbose(files):
    quiet, verbose = build(files, "quiet"), build(files, "verbose", "--verbose")
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "partitioning by hash of id" in quiet.stdout
    assert "Tree20,AH2,Reorder40" in quiet.stderr and "items: read 6,000 = indexed 6,000 + rejected 0" in quiet.stdout
    native = [line for line in quiet.stderr.splitlines() if cli.quiet.NATIVE_LOG.match(line.encode())]
    assert native == []
    # The same build with --verbose shows ScaNN's own lines (it trains trees here).
    assert any(cli.quiet.NATIVE_LOG.match(line.encode()) for line in verbose.stderr.splitlines())


@pytest.mark.parametrize("flags, message", [
    (["--codec", "SQ7"], "bad codec spec 'SQ7'"),
    (["--codec", "auto"], "codec 'auto' needs a positive max_bytes_per_vector"),
])
def test_a_bad_codec_is_an_error_before_any_work(files, flags, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["--verbose", "build", "--items", str(files / "items.parquet"), "--output", str(files / "never"),
                  *flags])
    assert not (files / "never").exists()


def test_auto_finding_no_codec_within_the_budget_is_a_short_error(files):
    with pytest.raises(SystemExit, match="beamvec build: no codec of at most 2 bytes a vector reaches recall@10"):
        cli.main(["build", "--items", str(files / "items.parquet"), "--output", str(files / "auto"),
                  "--codec", "auto", "--max-bytes-per-vector", "2"])
    assert not (files / "auto" / "CURRENT").exists()  # nothing published


def test_build_with_a_codec_and_query_it(files, capsys):
    from beamvec.index import Index

    cli.main(["build", "--items", str(files / "items.parquet"), "--output", str(files / "coded"),
              "--min-partition-rows", "1500", "--max-partition-rows", "5000", "--shard-spec", "Tree20,AH2,Reorder40",
              "--codec", "pca8,sq8,rerank"])
    assert "codec: PCA8,SQ8,Rerank" in capsys.readouterr().out
    assert Index.open(str(files / "coded")).manifest.codec["spec"] == "PCA8,SQ8,Rerank"
    cli.main(["query", "--index", str(files / "coded"), "--queries", str(files / "queries.parquet"),
              "--output", str(files / "coded-out")])
    assert "queries: read 50 = answered 50 + rejected 0" in capsys.readouterr().out
