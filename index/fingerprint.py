"""Content fingerprints of partitions: what decides that a reindex may reuse a shard as it is.

A partition's fingerprint digests everything its shard is built from: its rows (ids, vectors or
codes, attributes: values and nulls, whatever order or chunking they arrived in, as a shard
builder sorts them by id first) and the build's context (metric, shard spec, recall target, seed,
plan, codec and the calibration queries routed to it). Equal fingerprints mean a rebuild would
write the same shard, so a reindex copies the old one instead.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _column_digest(digest, column: pa.ChunkedArray | pa.Array) -> None:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    digest.update(str(array.type).encode() + b"\0")
    digest.update(np.asarray(array.is_valid().to_numpy(zero_copy_only=False), np.bool_).tobytes())
    if pa.types.is_fixed_size_list(array.type) or pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        digest.update(np.asarray(pc.list_value_length(array).fill_null(-1).to_numpy(), np.int64).tobytes())
        _column_digest(digest, pc.list_flatten(array))
        return
    if pa.types.is_fixed_size_binary(array.type):
        digest.update(b"".join(v or b"" for v in array.to_pylist()))
        return
    values = array.to_numpy(zero_copy_only=False)
    if values.dtype == object:
        digest.update("\x1f".join("" if v is None else repr(v) for v in values).encode("utf-8", "surrogatepass"))
    else:
        digest.update(np.where(np.asarray(array.is_valid()), values, np.zeros((), values.dtype)).tobytes()
                      if array.null_count else values.tobytes())


def partition_fingerprint(ids: pa.Array, payload: np.ndarray, attributes: pa.Table, context: dict,
                          calibration: np.ndarray | None = None) -> str:
    """The fingerprint of a partition: its rows (``ids``; ``payload``, their float32 vectors or codes,
    one row each; ``attributes``), whatever their order, the build ``context`` (JSON-able settings)
    and its ``calibration`` query vectors."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    order = pc.sort_indices(ids)
    digest = hashlib.sha256()
    _column_digest(digest, ids.take(order))
    payload = np.ascontiguousarray(payload)
    digest.update(f"{payload.dtype.str}{payload.shape}".encode())
    digest.update(np.ascontiguousarray(payload[order.to_numpy()]).tobytes())
    for name in sorted(n for n in attributes.column_names if n != "id"):
        digest.update(name.encode() + b"\0")
        _column_digest(digest, attributes.column(name).take(order))
    digest.update(json.dumps(context, sort_keys=True, default=str).encode())
    if calibration is not None:
        digest.update(np.ascontiguousarray(calibration, np.float32).tobytes())
    return "sha256:" + digest.hexdigest()


def build_context(metric: str, config: str | None, recall_target: float, seed: int, plan_json: dict | None,
                  ordinal: int, codec_checksum: str | None) -> dict:
    """What besides its rows a shard's build depends on."""
    plan = hashlib.sha256(json.dumps(plan_json, sort_keys=True).encode()).hexdigest()
    return {"metric": metric, "config": config, "recall_target": recall_target, "seed": seed, "plan": plan,
            "partition": ordinal, "codec": codec_checksum}
