"""The codecs benchmark on a small generated set: every codec built and measured in its own
processes, the figures consistent with what the codecs are."""

import json

from beamvec.pipelines import codecbench, compare


def test_the_codecs_suite_measures_every_codec_and_writes_its_table(tmp_path):
    items, queries, log = compare.generated("catalog", 6000, 32, 200, 0)
    rows = codecbench.suite([("catalog", items, queries, log)], repeats=1, say=lambda line: None,
                            output=str(tmp_path / "codecs"), codecs=["none", "SQ8", "PCA8,SQ8,Rerank"])
    assert [(r.queries, r.codec) for r in rows] == [
        ("regular", "none"), ("regular", "SQ8"), ("regular", "PCA8,SQ8,Rerank"),
        ("differing", "PCA8,SQ8"), ("differing", "OOD8,SQ8"), ("differing", "PCA8,SQ8,Rerank"),
        ("differing", "OOD8,SQ8,Rerank")]
    by = {(r.queries, r.codec): r for r in rows}
    none, sq8, reduced = by["regular", "none"], by["regular", "SQ8"], by["regular", "PCA8,SQ8,Rerank"]
    assert reduced.index_bytes < sq8.index_bytes < 0.5 * none.index_bytes
    assert none.rerank_bytes == sq8.rerank_bytes == 0 and reduced.rerank_bytes >= 6000 * 32 * 4
    assert none.recall > 0.95 and sq8.recall > 0.9 and none.qps_ratio == 1.0
    assert all(0 <= r.recall <= 1 and r.qps > 0 and r.build_peak_mib > 50 and r.query_peak_mib > 50 for r in rows)
    saved = json.loads((tmp_path / "codecs.json").read_text())
    assert [r["codec"] for r in saved] == [r.codec for r in rows]
    assert (tmp_path / "codecs.md").read_text().startswith(codecbench.HEADER)
