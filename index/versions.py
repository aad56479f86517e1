"""An index directory's versions, and the pointer that publishes one of them.

Layout::

    INDEX/CURRENT                     the pointer: which version readers open (JSON, one small file)
    INDEX/versions/<version>/         one build or reindex: manifest.json, shards/, codec/, workload.parquet

A build writes everything of its version under a directory of its own, the manifest last, and then
:func:`publish` es it: every shard is checked against its checksum, and only then is ``CURRENT``
rewritten (one small object: readers see the old pointer or the new one, on a local disk as on
gs:// or s3://, where there is no rename). Readers :func:`resolve` the pointer once and read only
that version, so a version being written, or left half-written by a job that died, is never seen;
a reader that opened version N keeps reading N while N+1 is published.

Version names sort by creation time (``v20261202T153000123456-1a2b3c4d``). Publishing records each
version in the pointer's history. On a local disk publishes are serialised by a lock; a publish
that names the version it was derived from (a reindex) fails with :class:`VersionConflict` when
another one was published since. :func:`gc` removes old and unfinished versions, never the current
one or any newer than it (a build may be writing it).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import uuid
from typing import NamedTuple

from beamvec.index import fs
from beamvec.index.manifest import MANIFEST, Manifest, ManifestError, checksum, read_checked

POINTER = "CURRENT"
POINTER_FORMAT = "beamvec.pointer"
POINTER_VERSION = 1
VERSIONS = "versions"
HISTORY = 1000  # publishes the pointer remembers
_NAME = re.compile(r"^v\d{8}T\d{12}-[0-9a-f]{8}$")


class VersionConflict(ManifestError):
    """Another version was published after the one this one was derived from."""


class Pointer(NamedTuple):
    """What ``CURRENT`` says: the published version, its manifest's SHA-256, the publish count and
    the history of publishes (dicts: version, sequence, at, kind, base, rebuilt, reused)."""

    current: str
    manifest: str
    sequence: int
    history: tuple[dict, ...]

    def to_json(self) -> dict:
        return {"format": POINTER_FORMAT, "version": POINTER_VERSION, "current": self.current,
                "manifest": self.manifest, "sequence": self.sequence, "history": list(self.history)}

    @classmethod
    def from_json(cls, obj) -> "Pointer":
        """Parse and check a pointer object; ManifestError on anything wrong."""
        if not isinstance(obj, dict) or obj.get("format") != POINTER_FORMAT:
            raise ManifestError("not a beamvec index pointer")
        if obj.get("version") != POINTER_VERSION:
            raise ManifestError(f"pointer format version {obj.get('version')!r}: written by a newer beamvec? "
                                f"this one reads version {POINTER_VERSION}")
        current, manifest, sequence, history = (obj.get(f) for f in ("current", "manifest", "sequence", "history"))
        if not isinstance(current, str) or not _NAME.match(current):
            raise ManifestError(f"the pointer names {current!r}, not a version of this index")
        if not isinstance(manifest, str) or not manifest.startswith("sha256:"):
            raise ManifestError(f"the pointer's manifest checksum {manifest!r} is malformed")
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
            raise ManifestError(f"the pointer's sequence {sequence!r} is malformed")
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise ManifestError("the pointer's history is malformed")
        return cls(current, manifest, sequence, tuple(history))


def new_version() -> str:
    """A fresh version name: its creation time, then a random part (two builds never share one)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"v{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def version_path(index_path: str, name: str) -> str:
    """The directory of version ``name``."""
    if not _NAME.match(name):
        raise ManifestError(f"{name!r} is not a version name")
    return fs.filesystem_for(index_path).join(index_path, VERSIONS, name)


def read_pointer(index_path: str) -> Pointer | None:
    """The index's pointer, None when it has none (nothing published yet, or an older layout)."""
    filesystem = fs.filesystem_for(index_path)
    path = filesystem.join(index_path, POINTER)
    if not filesystem.exists(path):
        return None
    return read_checked(path, Pointer.from_json)


def resolve(index_path: str) -> str:
    """The directory of the version readers of ``index_path`` open: the pointer's, its manifest checked
    against the pointer (ManifestError naming what is wrong). An index in the older layout, with its
    manifest at the top, resolves to itself; a path that is already a version directory, to itself."""
    filesystem = fs.filesystem_for(index_path)
    pointer = read_pointer(index_path)
    if pointer is None:
        if filesystem.exists(filesystem.join(index_path, MANIFEST)):
            return index_path
        if not filesystem.exists(index_path):
            raise ManifestError(f"{index_path}: no such index directory")
        unfinished = filesystem.exists(filesystem.join(index_path, VERSIONS))
        raise ManifestError(f"{index_path}: no published version (no {POINTER} pointer)"
                            + ("; a build is running or did not finish" if unfinished else ": not an index"))
    path = version_path(index_path, pointer.current)
    manifest = filesystem.join(path, MANIFEST)
    if not filesystem.exists(manifest):
        raise ManifestError(f"{index_path}: the published version {pointer.current} has no {MANIFEST}")
    if _sha256(filesystem.read_bytes(manifest)) != pointer.manifest:
        raise ManifestError(f"{manifest} does not match the checksum its pointer records (changed after publish)")
    return path


def open_manifest(index_path: str) -> tuple[str, Manifest]:
    """(the published version's directory, its manifest)."""
    path = resolve(index_path)
    return path, Manifest.read(path)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify(path: str) -> Manifest:
    """The manifest of the version at ``path``, once every shard matches its checksum and row count and
    the codec loads and matches (ManifestError naming the first that does not)."""
    from beamvec.index.search import load_codec, shard_path

    manifest = Manifest.read(path)
    for ordinal, entry in enumerate(manifest.partitions):
        shard = shard_path(path, manifest, ordinal)
        if not fs.filesystem_for(path).exists(shard):
            raise ManifestError(f"shard {entry.id} is missing at {shard}")
        if checksum(shard) != entry.checksum:
            raise ManifestError(f"shard {entry.id} at {shard} does not match its checksum in the manifest")
    if manifest.codec is not None:
        load_codec(path, manifest)
    return manifest


def publish(index_path: str, name: str, base: str | None = None, **lineage) -> Pointer:
    """Make version ``name`` the one readers open, once :func:`verify` passes. ``base``: the version it
    was derived from; VersionConflict if another was published since. ``lineage`` (kind, rebuilt,
    reused, ...) goes into the pointer's history."""
    filesystem = fs.filesystem_for(index_path)
    path = version_path(index_path, name)
    verify(path)
    manifest = _sha256(filesystem.read_bytes(filesystem.join(path, MANIFEST)))
    with filesystem.lock(filesystem.join(index_path, ".publish.lock")):
        pointer = read_pointer(index_path)
        current = pointer.current if pointer is not None else None
        if base is not None and current != base:
            raise VersionConflict(f"{index_path}: version {current} was published while {name} was being built from "
                                  f"{base}; nothing was published: run it again from the current version")
        at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        sequence = (pointer.sequence if pointer is not None else 0) + 1
        entry = {"version": name, "sequence": sequence, "at": at, "base": base, **lineage}
        history = ((pointer.history if pointer is not None else ()) + (entry,))[-HISTORY:]
        published = Pointer(name, manifest, sequence, history)
        filesystem.write_bytes(filesystem.join(index_path, POINTER),
                               json.dumps(published.to_json(), indent=2, sort_keys=True).encode())
    return published


class VersionInfo(NamedTuple):
    """One version of an index, for ``beamvec versions``: its name, creation time, state (current,
    published, finished: complete but never published, unfinished: no manifest), and, when finished,
    its manifest."""

    name: str
    created: str
    state: str
    manifest: Manifest | None
    lineage: dict | None


def created_at(name: str) -> str:
    """A version's creation time (UTC, ISO 8601), from its name."""
    return datetime.datetime.strptime(name[1:16], "%Y%m%dT%H%M%S").replace(
        tzinfo=datetime.timezone.utc).isoformat(timespec="seconds")


def list_versions(index_path: str) -> list[VersionInfo]:
    """Every version of the index, oldest first."""
    pointer = read_pointer(index_path)
    published = {h["version"]: h for h in pointer.history} if pointer is not None else {}
    out = []
    for name in _names(index_path):
        manifest = None
        try:
            manifest = Manifest.read(version_path(index_path, name))
        except ManifestError:
            pass
        state = ("current" if pointer is not None and name == pointer.current else "published" if name in published
                 else "finished" if manifest is not None else "unfinished")
        out.append(VersionInfo(name, created_at(name), state, manifest, published.get(name)))
    return out


def _names(index_path: str) -> list[str]:
    filesystem = fs.filesystem_for(index_path)
    root = filesystem.join(index_path, VERSIONS)
    return sorted(n for n in filesystem.listdirs(root) if _NAME.match(n)) if filesystem.exists(root) else []


def gc(index_path: str, keep: int = 2) -> list[str]:
    """Remove the versions older than the current one beyond the ``keep`` newest complete ones up to and
    including the current one, and unfinished versions older than the current one. Never the current
    version, nor any newer than it (a build may be writing it). Returns the names removed."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the current version), got {keep}")
    pointer = read_pointer(index_path)
    if pointer is None:
        raise ManifestError(f"{index_path}: no published version, nothing to collect")
    filesystem = fs.filesystem_for(index_path)
    older = [v for v in list_versions(index_path) if v.name < pointer.current]
    kept = {v.name for v in [v for v in older if v.manifest is not None][-(keep - 1):]} if keep > 1 else set()
    removed = [v.name for v in older if v.name not in kept]
    for name in removed:
        filesystem.delete_tree(version_path(index_path, name))
    return removed
