"""A shard on disk: a directory of ScaNN's assets (its serialised searcher, the vectors as
``dataset.npy``), ``rows.parquet`` (ids and attributes) and ``shard.json`` (format, version,
metric, dimension, rows, spec, calibration, row order). No pickle: a shard holding one is
refused.

A shard with a codec (:mod:`beamvec.index.codec`) holds ``codes.npy`` instead of
``dataset.npy`` (ScaNN then keeps no copy of the vectors; a small shard has no ScaNN assets at
all), and its header names the codec's checksum: it loads only with that codec. A codec that
re-ranks also writes the full-precision vectors beside the directory, ``<shard>.full.npy``,
read on first use and checked against the digest in the header (:class:`FullVectors`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.index import exact, fs
from beamvec.index.codec import Codec
from beamvec.index.codes import CodeMatrix
from beamvec.index.shardspec import Calibration, ShardConfig, scann

FORMAT = "beamvec.shard"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
HEADER = "shard.json"
ROWS = "rows.parquet"
DATASET = "dataset.npy"
CODES = "codes.npy"
ASSETS = "scann_assets.pbtxt"
# ScaNN's asymmetric-hashing codes (16 centres: 4 bits each, stored by ScaNN a byte each) are
# saved two to a byte, and unpacked for ScaNN on load.
HASHED = "hashed_dataset.npy"
PACKED = "hashed_dataset.nibbles.npy"
FULL_SUFFIX = ".full.npy"


class ShardFormatError(ValueError):
    """A shard directory cannot be loaded: missing files, a bad header, or a mismatch."""


class ShardParts(NamedTuple):
    """What a shard directory holds, in :class:`beamvec.index.shard.Shard`'s constructor order."""

    ids: pa.Array
    attributes: pa.Table
    vectors: np.ndarray
    metric: str
    config: ShardConfig
    calibration: Calibration
    searcher: object
    scann_config: str
    row_order: tuple[str, ...]
    codec: Codec | None
    full: "FullVectors | None"


class FullVectors:
    """A shard's full-precision vectors (prepared for its metric, in its row order), read on first use.

    Local files are memory-mapped, so a re-rank reads only the rows it scores; others are read
    whole. The file must match ``sha256`` (ShardFormatError otherwise)."""

    def __init__(self, path: str, sha256: str, shape: tuple[int, int]):
        self.path, self.sha256, self.shape = path, sha256, shape
        self._rows: np.ndarray | None = None
        self._lock = threading.Lock()

    def rows(self) -> np.ndarray:
        """The (rows, dimension) float32 array (memory-mapped where local)."""
        if self._rows is None:
            with self._lock:
                if self._rows is None:
                    self._rows = self._read()
        return self._rows

    def _read(self) -> np.ndarray:
        filesystem = fs.filesystem_for(self.path)
        if not filesystem.exists(self.path):
            raise ShardFormatError(f"{self.path}: the shard's full-precision vectors (for re-ranking) are missing")
        local = fs.scheme_of(self.path) is None
        digest = hashlib.sha256()
        if local:
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    digest.update(chunk)
        else:
            data = filesystem.read_bytes(self.path)
            digest.update(data)
        if digest.hexdigest() != self.sha256:
            raise ShardFormatError(f"{self.path}: does not match its checksum in the shard header (corrupted)")
        rows = np.load(self.path, mmap_mode="r", allow_pickle=False) if local else \
            np.load(io.BytesIO(data), allow_pickle=False)
        if rows.shape != self.shape or rows.dtype != np.float32:
            raise ShardFormatError(f"{self.path}: holds {rows.dtype} {rows.shape}, the header says float32 {self.shape}")
        return rows


def header(metric: str, dimension: int, rows: int, config: ShardConfig, calibration: Calibration,
           scann_config: str, row_order: tuple[str, ...], codec: Codec | None = None,
           full_sha256: str | None = None) -> dict:
    """The JSON header of a shard."""
    extra = {} if codec is None else {"codec": {"spec": codec.spec.text(), "checksum": codec.checksum}}
    if full_sha256 is not None:
        extra["full_vectors"] = {"sha256": full_sha256}
    return {**extra,
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "metric": metric,
        "dimension": dimension,
        "rows": rows,
        "spec": config.spec(),
        "calibration": calibration.to_json(),
        "scann_config": scann_config,
        "row_order": list(row_order),
    }


def full_path(path: str) -> str:
    """Where the full-precision vectors of the shard directory ``path`` live."""
    return path.rstrip("/") + FULL_SUFFIX


def write(path: str, searcher, attributes: pa.Table, header: dict, codes: np.ndarray | None = None,
          full: bytes | None = None) -> None:
    """Write a shard's directory at ``path`` (any filesystem), whole; ``codes`` for a shard with a
    codec; ``full``, the full-precision vectors' npy bytes, beside it (:func:`full_path`)."""
    filesystem = fs.filesystem_for(path)
    with tempfile.TemporaryDirectory(prefix="beamvec-shard-") as tmp:
        if searcher is not None:
            searcher.serialize(tmp, relative_path=True)
            width = _pack_hashed(tmp)
            if width is not None:
                header = {**header, "hashed_width": width}
        if codes is not None:
            np.save(os.path.join(tmp, CODES), codes, allow_pickle=False)
        rows = io.BytesIO()
        pq.write_table(attributes, rows)
        with open(os.path.join(tmp, ROWS), "wb") as f:
            f.write(rows.getvalue())
        with open(os.path.join(tmp, HEADER), "w") as f:
            json.dump(header, f, indent=2, sort_keys=True)
        filesystem.upload(tmp, path)
    if full is not None:
        filesystem.write_bytes(full_path(path), full)


def read(path: str, metric: str | None = None, dimension: int | None = None, codec: Codec | None = None) -> ShardParts:
    """A shard directory's parts, checked; ShardFormatError on any missing file or mismatch (``metric``
    and ``dimension``, when given, must match the header; a shard with a codec needs that ``codec``)."""
    filesystem = fs.filesystem_for(path)
    with filesystem.local_copy(path) as local:
        names = set(os.listdir(local))
        if any(name.endswith(".pkl") for name in names):
            raise ShardFormatError(f"{path}: holds a pickle file; beamvec never loads pickles")
        for name in (HEADER, ROWS):
            if name not in names:
                raise ShardFormatError(f"{path}: not a shard, {name} is missing")
        head = _read_header(os.path.join(local, HEADER), path)
        _check(head.get("format") == FORMAT and head.get("version") in READABLE_VERSIONS, path,
               f"format {head.get('format')!r} version {head.get('version')!r}, "
               f"expected {FORMAT!r} version {' or '.join(map(str, READABLE_VERSIONS))}")
        for key, want in (("metric", metric), ("dimension", dimension)):
            _check(want is None or head.get(key) == want, path, f"{key} {head.get(key)!r}, expected {want!r}")
        _check(head.get("metric") in exact.METRICS, path, f"unknown metric {head.get('metric')!r}")
        try:
            config = ShardConfig.parse(str(head.get("spec")))
            calibration = Calibration.from_json(head["calibration"])
            row_order = tuple(str(c) for c in head.get("row_order", ()))
            coded = head.get("codec")
            full_sha = head["full_vectors"]["sha256"] if "full_vectors" in head else None
        except (ValueError, KeyError, TypeError) as e:
            raise ShardFormatError(f"{path}: bad header: {e}") from e
        rows = head.get("rows")
        if coded is None:
            vectors = _load_npy(local, DATASET, path, names)
            _check(vectors.shape == (rows, head.get("dimension")), path,
                   f"vectors have shape {vectors.shape}, header says ({rows}, {head.get('dimension')})")
        else:
            if codec is None:
                raise ShardFormatError(f"{path}: its vectors are encoded by codec {coded.get('spec')!r}; open it "
                                       "through its index (Index.open), or pass the codec")
            _check(codec.checksum == coded.get("checksum"), path,
                   f"encoded by codec {coded.get('spec')!r} ({coded.get('checksum')}), not by the codec given "
                   f"({codec.spec.text()}, {codec.checksum})")
            codes = _load_npy(local, CODES, path, names)
            _check(codes.shape == (rows, codec.code_width) and codes.dtype == codec.code_dtype, path,
                   f"codes are {codes.dtype} {codes.shape}, codec {codec.spec.text()} needs "
                   f"{codec.code_dtype} ({rows}, {codec.code_width})")
            vectors = CodeMatrix(codes, codec)
        attributes = pq.read_table(os.path.join(local, ROWS))
        _check(attributes.num_rows == rows, path, f"{attributes.num_rows} rows in {ROWS}, header says {rows}")
        searcher = None
        if ASSETS in names:
            searcher = _load_searcher(local, names, path, head.get("hashed_width"))
        elif coded is None or not config.brute_force:
            raise ShardFormatError(f"{path}: not a shard, {ASSETS} is missing")
    full = None if full_sha is None else FullVectors(full_path(path), full_sha, (rows, head["dimension"]))
    return ShardParts(attributes.column("id").combine_chunks(), attributes, vectors, head["metric"], config,
                      calibration, searcher, str(head.get("scann_config", "")), row_order, codec, full)


def _pack_hashed(directory: str) -> int | None:
    """Replace ScaNN's hashing codes (a byte each, values < 16) by their nibbles, two to a byte;
    return their width (None when there are none, or they do not fit a nibble)."""
    source = os.path.join(directory, HASHED)
    if not os.path.exists(source):
        return None
    codes = np.load(source, allow_pickle=False)
    if codes.dtype != np.uint8 or codes.ndim != 2 or (codes.size and codes.max() >= 16):
        return None  # kept as ScaNN wrote them
    width = codes.shape[1]
    padded = np.pad(codes, ((0, 0), (0, width % 2)))
    np.save(os.path.join(directory, PACKED), padded[:, 0::2] | (padded[:, 1::2] << 4), allow_pickle=False)
    os.remove(source)
    return width


def _load_searcher(local: str, names: set[str], path: str, width) -> object:
    """ScaNN's searcher from the assets in ``local`` (hashing codes of ``width`` unpacked into a scratch
    directory when packed)."""
    with open(os.path.join(local, ASSETS)) as f:
        assets = f.read()
    if PACKED not in names:
        return scann().ScannSearcher(scann().scann_pybind.ScannNumpy(local, assets))
    _check(isinstance(width, int) and width > 0, path, f"hashed_width {width!r} in the header, expected a positive int")
    with tempfile.TemporaryDirectory(prefix="beamvec-scann-") as scratch:
        for name in names - {PACKED, ROWS, CODES, HEADER}:
            os.symlink(os.path.join(os.path.abspath(local), name), os.path.join(scratch, name))
        packed = _load_npy(local, PACKED, path, names)
        _check(packed.dtype == np.uint8 and packed.ndim == 2 and packed.shape[1] == (width + 1) // 2, path,
               f"{PACKED} is {packed.dtype} {packed.shape}, expected uint8 (rows, {(width + 1) // 2})")
        codes = np.empty((len(packed), 2 * packed.shape[1]), np.uint8)
        codes[:, 0::2], codes[:, 1::2] = packed & 15, packed >> 4
        np.save(os.path.join(scratch, HASHED), np.ascontiguousarray(codes[:, :width]), allow_pickle=False)
        return scann().ScannSearcher(scann().scann_pybind.ScannNumpy(scratch, assets))


def _load_npy(local: str, name: str, path: str, names: set[str]) -> np.ndarray:
    if name not in names:
        raise ShardFormatError(f"{path}: not a shard, {name} is missing")
    try:
        return np.load(os.path.join(local, name), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ShardFormatError(f"{path}: {name} cannot be read: {e}") from e


def _read_header(local: str, path: str) -> dict:
    try:
        with open(local) as f:
            header = json.load(f)
    except (OSError, ValueError) as e:
        raise ShardFormatError(f"{path}: {HEADER} is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise ShardFormatError(f"{path}: {HEADER} is not a JSON object")
    return header


def _check(ok: bool, path: str, problem: str) -> None:
    if not ok:
        raise ShardFormatError(f"{path}: {problem}")
