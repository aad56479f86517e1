"""The README's Python quickstart, run as written: one pipeline builds an index and queries it,
on the DirectRunner and on the PortableRunner, with the data `beamvec generate` writes."""

import glob
import os
import pathlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beamvec.index import exact
from beamvec.index.columns import masks_of
from beamvec.index.versions import open_manifest
from beamvec.index.schema import validate_items
from beamvec.pipelines import cli

README = pathlib.Path(__file__).parents[2] / "README.md"


def example() -> str:
    """The first Python block of the README's "Quickstart: the same in Python" section."""
    section = README.read_text().split("## Quickstart: the same in Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    assert cli.main(["generate", "--output", str(root / "data")]) == 0
    return root


def run_example(root, workdir, beam_args=None):
    code = example()
    if beam_args is not None:
        assert code.count("PipelineOptions()") == 1
        code = code.replace("PipelineOptions()", f"PipelineOptions({beam_args!r})")
    os.makedirs(workdir)
    os.symlink(root / "data", workdir / "data")
    here = os.getcwd()
    os.chdir(workdir)
    try:
        exec(compile(code, str(README), "exec"), {})
    finally:
        os.chdir(here)
    tables = [pq.read_table(f) for f in sorted(glob.glob(str(workdir / "out/results-*.parquet")))]
    return {r["query_id"]: ([n["id"] for n in r["neighbors"]], [n["score"] for n in r["neighbors"]])
            for r in pa.concat_tables(tables).to_pylist()}


@pytest.fixture(scope="module")
def direct(data):
    return run_example(data, data / "direct")


def test_the_readme_pipeline_builds_and_answers_every_query_near_exactly(data, direct):
    items = validate_items(pq.read_table(data / "data/items.parquet"))
    queries = pq.read_table(data / "data/queries.parquet")
    predicates = queries.column("predicate").to_pylist()
    masks = masks_of(items.table, predicates)
    vectors = queries.column("vector").combine_chunks().values.to_numpy().reshape(len(predicates), -1)
    truth, _ = exact.search(items.vectors, vectors, 10, "dot_product", [masks[p] for p in predicates])
    truth_ids = exact.ids_of_rows(items.table.column("id").to_numpy(), truth)
    found = np.array([(direct[q][0] + [-1] * 10)[:10] for q in queries.column("query_id").to_pylist()])
    assert len(direct) == queries.num_rows
    assert exact.recall(found, truth_ids).mean() >= 0.95
    assert ((found >= 0).sum(axis=1) == (truth >= 0).sum(axis=1)).all()  # min(k, matches) each
    assert not glob.glob(str(data / "direct/out/rejected-*.parquet"))  # generated data is clean
    assert (data / "direct/index/CURRENT").exists()


def test_the_readme_pipeline_gives_the_same_index_and_answers_on_the_portable_runner(data, direct, portable_options):
    assert run_example(data, data / "portable", portable_options) == direct
    shards = [[(p.id, p.rows, p.checksum) for p in open_manifest(str(data / run / "index"))[1].partitions]
              for run in ("direct", "portable")]
    assert shards[0] == shards[1]  # byte-identical shards, ScaNN trees included
