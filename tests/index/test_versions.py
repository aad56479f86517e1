"""Versions and the pointer: atomic publish, readers pinned to a version, listing, gc, damage."""

import json
import os
import shutil

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from beamvec.index import Index, build_index, fs, versions
from beamvec.index.manifest import Manifest, ManifestError

rng = np.random.default_rng(0)
VECTORS = rng.normal(size=(300, 8)).astype(np.float32)
QUERIES = rng.normal(size=(20, 8)).astype(np.float32)


def build(path, vectors=VECTORS):
    return build_index(str(path), list(range(len(vectors))), vectors, config="Brute")


def test_a_build_publishes_a_version_and_readers_keep_theirs_while_the_next_is_published(tmp_path):
    build(tmp_path)
    first = Index.open(str(tmp_path))
    before = first.search(QUERIES, k=5)
    build(tmp_path, VECTORS[::-1] * 2)  # a different index in the same directory
    assert np.array_equal(first.search(QUERIES, k=5)[0], before[0])  # still version 1
    after = Index.open(str(tmp_path)).search(QUERIES, k=5)
    assert not np.array_equal(after[1], before[1], equal_nan=True)
    listed = versions.list_versions(str(tmp_path))
    assert [v.state for v in listed] == ["published", "current"]
    assert all(v.manifest.num_rows == 300 and v.lineage["kind"] == "build" for v in listed)
    assert versions.read_pointer(str(tmp_path)).sequence == 2


def test_an_unfinished_version_is_invisible_and_gc_keeps_current_and_newer(tmp_path):
    build(tmp_path)
    build(tmp_path)
    build(tmp_path)
    current = versions.read_pointer(str(tmp_path)).current
    names = [v.name for v in versions.list_versions(str(tmp_path))]
    older_unfinished = os.path.join(tmp_path, "versions", names[0][:-8] + "00000000")
    os.makedirs(os.path.join(older_unfinished, "shards", "p00000"))  # a build killed long ago
    newer = os.path.join(tmp_path, "versions", "v99991231T235959999999-ffffffff")
    os.makedirs(os.path.join(newer, "shards"))  # a build running now
    answers = Index.open(str(tmp_path)).search(QUERIES, k=5)
    states = {v.name: v.state for v in versions.list_versions(str(tmp_path))}
    assert states[os.path.basename(newer)] == "unfinished" and states[current] == "current"
    removed = versions.gc(str(tmp_path), keep=2)
    assert sorted(removed) == sorted([os.path.basename(older_unfinished), names[0]])
    left = [v.name for v in versions.list_versions(str(tmp_path))]
    assert left == [names[1], current, os.path.basename(newer)]
    assert np.array_equal(Index.open(str(tmp_path)).search(QUERIES, k=5)[0], answers[0])
    assert versions.gc(str(tmp_path), keep=1) == [names[1]]
    with pytest.raises(ValueError, match="at least 1"):
        versions.gc(str(tmp_path), keep=0)


def test_a_publish_derived_from_an_older_version_is_refused(tmp_path):
    build(tmp_path)
    base = versions.read_pointer(str(tmp_path)).current
    build(tmp_path)
    name = versions.new_version()
    shutil.copytree(versions.resolve(str(tmp_path)), versions.version_path(str(tmp_path), name))
    with pytest.raises(versions.VersionConflict, match="was published while"):
        versions.publish(str(tmp_path), name, base=base)
    assert versions.read_pointer(str(tmp_path)).current != name


def test_publish_verifies_every_shard_first(tmp_path):
    build(tmp_path)
    name = versions.new_version()
    shutil.copytree(versions.resolve(str(tmp_path)), versions.version_path(str(tmp_path), name))
    with open(os.path.join(versions.version_path(str(tmp_path), name), "shards", "p00000", "rows.parquet"), "ab") as f:
        f.write(b"torn")
    with pytest.raises(ManifestError, match="does not match its checksum"):
        versions.publish(str(tmp_path), name)
    shutil.rmtree(os.path.join(versions.version_path(str(tmp_path), name), "shards", "p00000"))
    with pytest.raises(ManifestError, match="missing"):
        versions.publish(str(tmp_path), name)


def _pointer(path):
    with open(os.path.join(path, versions.POINTER)) as f:
        return json.load(f)


def _write_pointer(path, obj):
    with open(os.path.join(path, versions.POINTER), "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


DAMAGE = {
    "pointer missing": (lambda p: os.remove(os.path.join(p, versions.POINTER)), "no published version"),
    "pointer truncated": (lambda p: _write_pointer(p, json.dumps(_pointer(p))[:40]), "not valid JSON"),
    "pointer of a newer format": (lambda p: _write_pointer(p, {**_pointer(p), "version": 2}), "newer beamvec"),
    "pointer outside the index": (lambda p: _write_pointer(p, {**_pointer(p), "current": "../../etc"}),
                                  "not a version of this index"),
    "pointer to a removed version": (lambda p: shutil.rmtree(versions.resolve(p)), "has no manifest.json"),
    "manifest changed after publish": (lambda p: open(os.path.join(versions.resolve(p), "manifest.json"), "a").write(" "),
                                       "does not match the checksum its pointer records"),
    "manifest missing": (lambda p: os.remove(os.path.join(versions.resolve(p), "manifest.json")),
                         "has no manifest.json"),
    "manifest truncated": (lambda p: open(os.path.join(versions.resolve(p), "manifest.json"), "r+b").truncate(50),
                           "does not match the checksum its pointer records"),
    "shard swapped for another": (lambda p: shutil.copytree(
        os.path.join(versions.resolve(p), "shards", "p00001"), os.path.join(versions.resolve(p), "shards", "p00000"),
        dirs_exist_ok=True), "does not match its checksum"),
    "shard truncated": (lambda p: open(os.path.join(versions.resolve(p), "shards", "p00000", "rows.parquet"),
                                       "r+b").truncate(10), "does not match its checksum"),
    "shard missing": (lambda p: shutil.rmtree(os.path.join(versions.resolve(p), "shards", "p00001")),
                      "No such file|missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_index_fails_with_a_clear_error(tmp_path, case):
    from beamvec.index.plan import HashPlan

    build_index(str(tmp_path), list(range(300)), VECTORS, plan=HashPlan(2), config="Brute")
    damage, message = DAMAGE[case]
    damage(str(tmp_path))
    with pytest.raises((ManifestError, FileNotFoundError), match=message):
        Index.open(str(tmp_path)).search(QUERIES, k=5)


def test_an_index_in_the_older_layout_still_opens(tmp_path):
    build(tmp_path / "new")
    shutil.copytree(versions.resolve(str(tmp_path / "new")), tmp_path / "old")  # manifest at the top, no pointer
    assert np.array_equal(Index.open(str(tmp_path / "old")).search(QUERIES, k=5)[0],
                          Index.open(str(tmp_path / "new")).search(QUERIES, k=5)[0])


def test_versions_work_through_a_store_without_rename_or_locks(tmp_path, monkeypatch):
    from beamvec.transforms.filesystem import BeamFileSystem  # Beam's FileSystems, as gs:// and s3:// use

    monkeypatch.setattr(fs, "_LOCAL", BeamFileSystem())
    build(tmp_path)
    build(tmp_path, VECTORS * 3)
    assert [v.state for v in versions.list_versions(str(tmp_path))] == ["published", "current"]
    want = build_index(str(tmp_path / "plain"), list(range(300)), VECTORS * 3, config="Brute")
    assert Index.open(str(tmp_path)).manifest == want
    assert len(versions.gc(str(tmp_path), keep=1)) == 1
    assert len(versions.list_versions(str(tmp_path))) == 1


# --- fuzzing: the loaders give only their documented error ---

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)


@pytest.fixture(scope="module")
def manifest_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz")
    return build(path).to_json(), _pointer(str(path))


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.data())
def test_fuzzed_manifests_and_pointers_give_only_manifest_errors(manifest_json, data):
    manifest, pointer = manifest_json
    for original, load in ((manifest, Manifest.from_json), (pointer, versions.Pointer.from_json)):
        obj = json.loads(json.dumps(original))
        target = obj
        if data.draw(st.booleans()) and isinstance(obj.get("partitions"), list):
            target = obj["partitions"][0]
        key = data.draw(st.sampled_from(sorted(target)))
        if data.draw(st.booleans()):
            target[key] = data.draw(_json)
        else:
            del target[key]
        try:
            load(obj)
        except ManifestError:
            pass
    with pytest.raises(ManifestError):
        Manifest.from_json(data.draw(_json.filter(lambda x: not isinstance(x, dict))))


def test_two_builds_at_once_publish_one_after_the_other_never_a_mix(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from beamvec.index.plan import HashPlan

    data = {"a": VECTORS, "b": VECTORS[::-1] * 3}
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda v: build_index(str(tmp_path), list(range(300)), v, plan=HashPlan(3), config="Brute"),
                      data.values()))
    pointer = versions.read_pointer(str(tmp_path))
    assert pointer.sequence == 2 and [h["sequence"] for h in pointer.history] == [1, 2]
    got = Index.open(str(tmp_path)).search(QUERIES, k=5)
    alone = {}
    for name, vectors in data.items():
        build_index(str(tmp_path / name), list(range(300)), vectors, plan=HashPlan(3), config="Brute")
        alone[name] = Index.open(str(tmp_path / name)).search(QUERIES, k=5)
    assert sum(np.array_equal(got[1], a[1]) for a in alone.values()) == 1  # exactly one of them, whole
