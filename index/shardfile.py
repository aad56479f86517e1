"""A shard on disk: a directory of ScaNN's assets (its serialised searcher, the vectors as
``dataset.npy``), ``rows.parquet`` (ids and attributes) and ``shard.json`` (format, version,
metric, dimension, rows, spec, calibration, row order). No pickle: a shard holding one is
refused."""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.index import exact, fs
from beamvec.index.shardspec import Calibration, ShardConfig, scann

FORMAT = "beamvec.shard"
FORMAT_VERSION = 1
HEADER = "shard.json"
ROWS = "rows.parquet"
DATASET = "dataset.npy"
ASSETS = "scann_assets.pbtxt"


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


def header(metric: str, dimension: int, rows: int, config: ShardConfig, calibration: Calibration,
           scann_config: str, row_order: tuple[str, ...]) -> dict:
    """The JSON header of a shard."""
    return {
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


def write(path: str, searcher, attributes: pa.Table, header: dict) -> None:
    """Write a shard's directory at ``path`` (any filesystem), whole."""
    filesystem = fs.filesystem_for(path)
    with tempfile.TemporaryDirectory(prefix="beamvec-shard-") as tmp:
        searcher.serialize(tmp, relative_path=True)
        rows = io.BytesIO()
        pq.write_table(attributes, rows)
        with open(os.path.join(tmp, ROWS), "wb") as f:
            f.write(rows.getvalue())
        with open(os.path.join(tmp, HEADER), "w") as f:
            json.dump(header, f, indent=2, sort_keys=True)
        filesystem.upload(tmp, path)


def read(path: str, metric: str | None = None, dimension: int | None = None) -> ShardParts:
    """A shard directory's parts, checked; ShardFormatError on any missing file or mismatch (``metric``
    and ``dimension``, when given, must match the header)."""
    filesystem = fs.filesystem_for(path)
    with filesystem.local_copy(path) as local:
        names = set(os.listdir(local))
        if any(name.endswith(".pkl") for name in names):
            raise ShardFormatError(f"{path}: holds a pickle file; beamvec never loads pickles")
        for name in (HEADER, ROWS, DATASET, ASSETS):
            if name not in names:
                raise ShardFormatError(f"{path}: not a shard, {name} is missing")
        head = _read_header(os.path.join(local, HEADER), path)
        _check(head.get("format") == FORMAT and head.get("version") == FORMAT_VERSION, path,
               f"format {head.get('format')!r} version {head.get('version')!r}, "
               f"expected {FORMAT!r} version {FORMAT_VERSION}")
        for key, want in (("metric", metric), ("dimension", dimension)):
            _check(want is None or head.get(key) == want, path, f"{key} {head.get(key)!r}, expected {want!r}")
        _check(head.get("metric") in exact.METRICS, path, f"unknown metric {head.get('metric')!r}")
        try:
            config = ShardConfig.parse(str(head.get("spec")))
            calibration = Calibration.from_json(head["calibration"])
            row_order = tuple(str(c) for c in head.get("row_order", ()))
        except (ValueError, KeyError, TypeError) as e:
            raise ShardFormatError(f"{path}: bad header: {e}") from e
        vectors = np.load(os.path.join(local, DATASET), allow_pickle=False)
        _check(vectors.shape == (head.get("rows"), head.get("dimension")), path,
               f"vectors have shape {vectors.shape}, header says ({head.get('rows')}, {head.get('dimension')})")
        attributes = pq.read_table(os.path.join(local, ROWS))
        _check(attributes.num_rows == head["rows"], path,
               f"{attributes.num_rows} rows in {ROWS}, header says {head['rows']}")
        with open(os.path.join(local, ASSETS)) as f:
            searcher = scann().ScannSearcher(scann().scann_pybind.ScannNumpy(local, f.read()))
    return ShardParts(attributes.column("id").combine_chunks(), attributes, vectors, head["metric"], config,
                      calibration, searcher, str(head.get("scann_config", "")), row_order)


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
