"""The index manifest: what an index directory holds, written last and atomically.

``manifest.json`` names the format version, metric, dimension, id type, the
partition plan (if any) and, per partition, its id, description (a predicate
every row in it satisfies; '' for none), row count, shard path (relative to the
index directory, never escaping it) and content checksum. When the build's
workload log carried query vectors, ``heldout_recall`` records the recall the built
index reached on the log's held-out queries (see :mod:`beamvec.index.querylog`);
manifests without it (older ones, or logs without vectors) read as None. Each partition also
records its content ``fingerprint`` (:func:`beamvec.index.fingerprint.partition_fingerprint`): a
reindex reuses a shard whose partition's fingerprint is unchanged. ``build`` records the settings
the index was built with (what a reindex rebuilds with), ``workload`` the workload log saved with
it (``{"path", "checksum", "plan_fit"}``). A manifest lives in its version's directory
(:mod:`beamvec.index.versions`); its paths are relative to that directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath

import pyarrow as pa

from beamvec.index import fs

FORMAT = "beamvec.index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """A manifest is missing, malformed, or points outside its index."""


@dataclasses.dataclass(frozen=True)
class PartitionEntry:
    """One partition: its id, description (predicate text, '' = none), rows, shard path, checksum and
    content fingerprint ('' when unknown: an older index)."""

    id: str
    description: str
    rows: int
    path: str
    checksum: str
    fingerprint: str = ""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything needed to open an index: format, metric, dimension, id type, plan and partitions.

    ``heldout_recall`` (optional): ``{"queries", "k", "mean", "selective",
    "selective_queries", "target"}``, recall@k of the index with default search
    parameters on held-out workload-log queries, overall and on the most selective
    10% of them, and the build's recall target.

    ``codec`` (optional): the codec the shards' vectors are encoded with (:mod:`beamvec.index.codec`):
    ``{"spec", "path", "checksum"}``, its spec string, directory (relative to the index) and checksum;
    queries are encoded by it at search time.

    ``model`` (optional): the identity of the model that embedded the items
    (:class:`beamvec.index.encoder.ModelIdentity` as JSON: name, dimension, checksum); text
    queries must be embedded by the same model.
    """

    metric: str
    dimension: int
    id_type: str
    partitions: tuple[PartitionEntry, ...]
    plan: dict | None = None
    heldout_recall: dict | None = None
    model: dict | None = None
    codec: dict | None = None
    build: dict | None = None
    workload: dict | None = None

    @property
    def num_rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def id_arrow_type(self) -> pa.DataType:
        """The items' ids as an Arrow type: int64, or string."""
        return pa.int64() if self.id_type == "int64" else pa.string()

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "metric": self.metric,
            "dimension": self.dimension,
            "id_type": self.id_type,
            "plan": self.plan,
            "partitions": [dataclasses.asdict(p) for p in self.partitions],
            **({"heldout_recall": self.heldout_recall} if self.heldout_recall is not None else {}),
            **({"model": self.model} if self.model is not None else {}),
            **({"codec": self.codec} if self.codec is not None else {}),
            **({"build": self.build} if self.build is not None else {}),
            **({"workload": self.workload} if self.workload is not None else {}),
        }

    @classmethod
    def from_json(cls, obj: dict) -> "Manifest":
        """Parse and check a manifest object; ManifestError on anything wrong."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ManifestError(f"not a beamvec index manifest (format {obj.get('format') if isinstance(obj, dict) else None!r})")
        if obj.get("version") != FORMAT_VERSION:
            raise ManifestError(f"manifest version {obj.get('version')!r}: written by a newer beamvec? this one reads "
                                f"version {FORMAT_VERSION}")
        try:
            if not isinstance(obj["partitions"], list):
                raise TypeError("partitions must be a list")
            partitions = tuple(_entry(p) for p in obj["partitions"])
            heldout = obj.get("heldout_recall")
            if heldout is not None and not isinstance(heldout, dict):
                raise TypeError(f"heldout_recall must be an object, got {type(heldout).__name__}")
            model = obj.get("model")
            if model is not None and not isinstance(model, dict):
                raise TypeError(f"model must be an object, got {type(model).__name__}")
            codec = obj.get("codec")
            if codec is not None:
                if not isinstance(codec, dict) or not all(isinstance(codec.get(f), str) for f in ("spec", "path", "checksum")):
                    raise TypeError(f"codec must be an object with spec, path and checksum strings, got {codec!r}")
                check_relative_path(codec["path"])
            for field in ("plan", "build", "workload"):
                if obj.get(field) is not None and not isinstance(obj[field], dict):
                    raise TypeError(f"{field} must be an object, got {type(obj[field]).__name__}")
            workload = obj.get("workload")
            if workload is not None:
                check_relative_path(str(workload.get("path")))
            if obj["metric"] not in ("dot_product", "cosine", "squared_l2"):
                raise ValueError(f"unknown metric {obj['metric']!r}")
            if obj["id_type"] not in ("int64", "string"):
                raise ValueError(f"unknown id type {obj['id_type']!r}")
            dimension = obj["dimension"]
            if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension < 1:
                raise ValueError(f"dimension must be a positive integer, got {dimension!r}")
            manifest = cls(obj["metric"], dimension, obj["id_type"], partitions, obj.get("plan"),
                           heldout, model, codec, obj.get("build"), workload)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"malformed manifest: {e}") from e
        seen = set()
        for p in partitions:
            check_relative_path(p.path)
            if p.id in seen:
                raise ManifestError(f"partition id {p.id!r} appears twice")
            seen.add(p.id)
        return manifest

    def write(self, index_path: str) -> None:
        """Write ``manifest.json`` into ``index_path`` atomically (temp file + rename)."""
        filesystem = fs.filesystem_for(index_path)
        data = json.dumps(self.to_json(), indent=2, sort_keys=True).encode()
        filesystem.write_bytes(filesystem.join(index_path, MANIFEST), data)

    @classmethod
    def read(cls, index_path: str) -> "Manifest":
        filesystem = fs.filesystem_for(index_path)
        path = filesystem.join(index_path, MANIFEST)
        if not filesystem.exists(path):
            raise ManifestError(f"{index_path}: no {MANIFEST} (not an index, or its build did not finish)")
        return read_checked(path, cls.from_json)


def read_checked(path: str, parse):
    """``parse`` of the JSON file at ``path``; ManifestError naming the file when it is not valid JSON
    (truncated or overwritten) or ``parse`` refuses it."""
    try:
        obj = json.loads(fs.filesystem_for(path).read_bytes(path))
    except ValueError as e:
        raise ManifestError(f"{path}: not valid JSON (truncated or overwritten?): {e}") from None
    try:
        return parse(obj)
    except ManifestError as e:
        raise ManifestError(f"{path}: {e}") from None


def _entry(obj) -> PartitionEntry:
    if not isinstance(obj, dict):
        raise TypeError(f"a partition must be an object, got {type(obj).__name__}")
    entry = PartitionEntry(**obj)
    for field in ("id", "description", "path", "checksum", "fingerprint"):
        if not isinstance(getattr(entry, field), str):
            raise TypeError(f"partition {field} must be a string, got {getattr(entry, field)!r}")
    if not isinstance(entry.rows, int) or isinstance(entry.rows, bool) or entry.rows < 0:
        raise TypeError(f"partition rows must be a count, got {entry.rows!r}")
    return entry


def check_relative_path(path: str) -> str:
    """``path`` if it is a plain relative path inside the index; ManifestError otherwise."""
    if (not path or path.startswith(("/", "\\")) or "\\" in path or "://" in path or ":" in path.split("/")[0]
            or any(part in ("", ".", "..") for part in path.split("/"))
            or posixpath.normpath(path) != path):
        raise ManifestError(f"shard path {path!r} must be a plain relative path inside the index directory")
    return path


def partition_id(ordinal: int) -> str:
    """The id of a plan's partition: p00000, p00001, ..."""
    return f"p{ordinal:05d}"


def partition_ordinal(pid: str) -> int:
    """The plan ordinal of partition id ``pid`` (p00003 -> 3)."""
    return int(pid[1:])


def checksum(shard_path: str) -> str:
    """SHA-256 over a shard directory's file names and contents, in name order."""
    filesystem = fs.filesystem_for(shard_path)
    digest = hashlib.sha256()
    for name in filesystem.listdir(shard_path):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(filesystem.read_bytes(filesystem.join(shard_path, name))).digest())
    return "sha256:" + digest.hexdigest()
