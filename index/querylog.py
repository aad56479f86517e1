"""A workload log: past queries' predicates and, when the log holds them, their vectors.

A build fits its partition plan on every predicate of the log. When the log also
carries query vectors, the build splits them (:meth:`QueryLog.split`, deterministic):

* the calibration part tunes each shard's leaves to search on real queries, those
  the plan routes to the shard (:meth:`beamvec.index.shard.Shard.build`'s
  ``calibration_queries``), instead of only on the shard's own rows, which sit
  closer to the data than real queries do;
* the held-out part measures the built index's recall@k on queries the calibration
  never saw (:func:`recall_summary`, recorded in the manifest as ``heldout_recall``).

Builders measure shard by shard, while each shard is in memory (a Beam build never
holds every shard in one place): :func:`heldout_partial` computes one shard's share
(approximate results exactly as :meth:`beamvec.index.Index.search` gets them from that
shard, and the exact answer over its rows) and :func:`summarize_partials` merges the
shares of all shards, so in-process and Beam builds record the same figure for the same
index. :func:`measure_index` measures an opened index directly, for checking.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beamvec.index import fs
from beamvec.index.hashing import mix64
from beamvec.index.predicate import MatchAll, PredicateError
from beamvec.index.parser import parse
from beamvec.index.schema import PREDICATE, VECTOR, check_vectors, is_vector_type, vector_dimension

if TYPE_CHECKING:
    from beamvec.index.plan import PartitionPlan
    from beamvec.index.shard import Shard

HELDOUT_SHARE = 0.25
MAX_HELDOUT = 2_000
# Log vectors a build routes to its shards for calibration (each shard then uses at most
# Shard's own cap of them): bounds what every Beam worker receives.
MAX_CALIBRATION = 10_000
HELDOUT_K = 10
# Share of the held-out queries, the most selective (fewest matching rows), reported apart.
SELECTIVE_SHARE = 0.1
# Salts of the position hashes: the split and the calibration sample are independent draws.
_SPLIT_SALT = 0x5EED_0001
_SAMPLE_SALT = 0x5EED_0002


@dataclasses.dataclass(frozen=True, eq=False)
class QueryLog:
    """Past queries: ``predicates`` (text, None or '' = no filter) and, optionally, their ``vectors``.

    ``vectors`` is (m, d) float32, or None when the log holds only predicates;
    ``vector_rows`` (m,) names the query (position in ``predicates``) each vector
    belongs to, default 0..m-1 (then m must equal the number of predicates).
    ``dropped`` counts the vectors left out when the log was read (wrong dimension,
    null, NaN or infinite values). A log iterates over, and has the length of, its
    predicates, so it can stand wherever a list of past predicates is expected.
    """

    predicates: list[str | None]
    vectors: np.ndarray | None = None
    vector_rows: np.ndarray | None = None
    dropped: int = 0

    def __post_init__(self):
        object.__setattr__(self, "predicates", list(self.predicates))
        if self.vectors is None:
            if self.vector_rows is not None:
                raise ValueError("vector_rows given without vectors")
            return
        vectors = np.ascontiguousarray(self.vectors, np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"log vectors must be an (n, d) array, got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("log vectors hold NaN or infinite values")
        rows = np.arange(len(vectors), dtype=np.int64) if self.vector_rows is None \
            else np.asarray(self.vector_rows, np.int64)
        if self.vector_rows is None and len(vectors) != len(self.predicates):
            raise ValueError(f"{len(vectors)} log vectors for {len(self.predicates)} predicates; give vector_rows")
        if rows.shape != (len(vectors),) or (len(rows) and (rows.min() < 0 or rows.max() >= len(self.predicates))):
            raise ValueError("vector_rows must name one query (a position in predicates) per vector")
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "vector_rows", rows)

    def __len__(self) -> int:
        return len(self.predicates)

    def __iter__(self) -> Iterator[str | None]:
        return iter(self.predicates)

    @property
    def has_vectors(self) -> bool:
        return self.vectors is not None and len(self.vectors) > 0

    @property
    def dimension(self) -> int | None:
        return None if self.vectors is None else self.vectors.shape[1]

    def queries(self) -> "QueryLog":
        """The queries that carry a vector, aligned: predicates[i] goes with vectors[i]."""
        if self.vectors is None:
            return QueryLog([])
        return QueryLog([self.predicates[r] for r in self.vector_rows], self.vectors)

    def take(self, positions: np.ndarray) -> "QueryLog":
        """The queries at ``positions`` of :meth:`queries` (in that order), aligned."""
        aligned = self.queries()
        positions = np.asarray(positions, np.int64)
        return QueryLog([aligned.predicates[i] for i in positions],
                        aligned.vectors[positions] if aligned.vectors is not None else None)

    def split(self, heldout_share: float = HELDOUT_SHARE, max_heldout: int = MAX_HELDOUT) -> tuple["QueryLog", "QueryLog"]:
        """(calibration part, held-out part) of the queries with vectors, both aligned.

        The held-out part is the ``heldout_share`` of them (at most ``max_heldout``)
        with the smallest hashes of their positions: the same split on every machine
        and runner, and independent of the order of anything but the log. A log
        without vectors gives (the whole log, an empty log).
        """
        if not self.has_vectors:
            return self, QueryLog([], np.zeros((0, self.dimension or 0), np.float32))
        n = len(self.vectors)
        count = min(max_heldout, int(round(heldout_share * n)))
        ranked = _ranked(n, _SPLIT_SALT)
        heldout = np.sort(ranked[:count])
        calibration = np.sort(ranked[count:])
        return self.take(calibration), self.take(heldout)

    def sample(self, max_queries: int) -> "QueryLog":
        """At most ``max_queries`` of the queries with vectors (smallest position hashes), aligned, in log order."""
        aligned = self.queries()
        if len(aligned) <= max_queries:
            return aligned
        return self.take(np.sort(_ranked(len(aligned), _SAMPLE_SALT)[:max_queries]))

    def fitting(self, schema: pa.Schema) -> tuple["QueryLog", int]:
        """The aligned queries whose predicates parse and fit ``schema``, and how many did not."""
        aligned = self.queries()
        keep, verdict = [], {}
        for i, text in enumerate(aligned.predicates):
            if text not in verdict:
                try:
                    parse(text).validate(schema)
                    verdict[text] = True
                except PredicateError:
                    verdict[text] = False
            if verdict[text]:
                keep.append(i)
        return aligned.take(np.asarray(keep, np.int64)), len(aligned) - len(keep)


def _ranked(n: int, salt: int) -> np.ndarray:
    """Positions 0..n-1 ordered by a stable hash of (position, salt)."""
    hashes = mix64(np.arange(n, dtype=np.uint64) ^ np.uint64(salt))
    return np.argsort(hashes, kind="stable")


def build_parts(log: QueryLog | None, schema: pa.Schema, dimension: int) -> tuple[QueryLog | None, QueryLog | None]:
    """What a build uses of a log: (calibration queries, held-out queries), or (None, None) without vectors.

    The calibration part is capped at :data:`MAX_CALIBRATION` queries; held-out
    queries whose predicate does not fit the items' ``schema`` (with ``id``) are
    left out (the index could not answer them). Every builder calls this, so an
    in-process and a Beam build use the same queries.
    """
    if log is None or not log.has_vectors:
        return None, None
    if log.dimension != dimension:
        raise ValueError(f"workload log vectors have dimension {log.dimension}; the items have dimension {dimension}")
    calibration, heldout = log.split()
    heldout, _ = heldout.fitting(schema)
    return calibration.sample(MAX_CALIBRATION), heldout


def route(plan: "PartitionPlan", log: QueryLog) -> list[np.ndarray]:
    """Per partition, the positions of the log's (aligned) queries that the plan sends there, as a search would."""
    from beamvec.index.shard import group_predicates

    if not len(log.predicates):
        return [np.zeros(0, np.int64) for _ in range(plan.num_partitions)]
    return plan.route(group_predicates(log.predicates), log.vectors)


def recall_summary(recall: np.ndarray, matches: np.ndarray, k: int, target: float | None = None) -> dict:
    """The manifest's ``heldout_recall``: queries, k, mean recall, and recall over the most selective 10%.

    The most selective queries are those with at most the 10th percentile of
    matching rows (as in the benchmarks), ``selective_queries`` of them.
    """
    recall, matches = np.asarray(recall, np.float64), np.asarray(matches)
    if not len(recall):
        return {"queries": 0, "k": k, "mean": None, "selective": None, "selective_queries": 0, "target": target}
    selective = matches <= np.quantile(matches, SELECTIVE_SHARE)
    return {"queries": int(len(recall)), "k": int(k), "mean": float(recall.mean()),
            "selective": float(recall[selective].mean()), "selective_queries": int(selective.sum()),
            "target": target}


class HeldoutPartial(NamedTuple):
    """One shard's share of the held-out measurement.

    ``approx_*``: for the held-out queries the plan routes to the shard (as a
    search does), their top-k from the shard's search with default parameters;
    ``exact_*``: for the queries whose predicate may match the shard's rows, the
    exact filtered top-k over its rows, and ``matches`` their matching rows there.
    Handles are ``ordinal * 2**40 + row``, as :meth:`Index.search` merges them.
    """

    ordinal: int
    approx_positions: np.ndarray
    approx_handles: np.ndarray
    approx_keys: np.ndarray
    exact_positions: np.ndarray
    exact_handles: np.ndarray
    exact_keys: np.ndarray
    matches: np.ndarray


def heldout_partial(shard: "Shard", ordinal: int, plan: "PartitionPlan", heldout: QueryLog,
                    k: int = HELDOUT_K) -> HeldoutPartial:
    """Shard ``ordinal``'s share of the held-out measurement (see :class:`HeldoutPartial`).

    The approximate part is what :meth:`Index.search` gets from this shard for these
    queries: the same routing, predicate groups, prepared vectors and search call.
    """
    from threadpoolctl import threadpool_limits

    from beamvec.index import exact
    from beamvec.index.plan import PartitionPlan
    from beamvec.index.search import ROW_SPACE, group_queries, search_shard, shard_groups

    n = len(heldout.predicates)
    queries = group_queries(heldout.predicates)
    vectors = heldout.vectors if n else np.zeros((0, shard.dimension), np.float32)
    prepared = exact.prepare(vectors, shard.metric)
    approx = plan.route(queries.groups, vectors)[ordinal] if n else np.zeros(0, np.int64)
    # Sound routing by description only: where an exact answer may lie, whatever the plan probes.
    reach = PartitionPlan.route(plan, queries.groups, vectors)[ordinal] if n else np.zeros(0, np.int64)
    if len(approx):
        found, _ = search_shard(shard, ordinal, queries, approx, prepared[approx], k, parallel=False)
        approx_handles, approx_keys = found.handles, found.keys
    else:
        approx_handles, approx_keys = np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    exact_handles = np.full((len(reach), k), -1, np.int64)
    exact_keys = np.full((len(reach), k), -np.inf, np.float32)
    matches = np.zeros(len(reach), np.int64)
    with threadpool_limits(1, "blas"):  # as Index.search: scores agree to the bit
        for predicate, local in (shard_groups(queries, reach).items() if len(reach) else ()):
            mask = shard.mask(predicate)
            rows = None if mask is None else np.flatnonzero(mask)
            matches[local] = shard.num_rows if rows is None else len(rows)
            if rows is not None and not len(rows):
                continue
            found_rows, exact_keys[local] = exact.search_rows(shard.exact_rows(), prepared[reach[local]], k, shard.metric,
                                                              rows)
            exact_handles[local] = np.where(found_rows >= 0, ordinal * ROW_SPACE + found_rows, -1)
    return HeldoutPartial(ordinal, approx, approx_handles, approx_keys, reach, exact_handles, exact_keys, matches)


def heldout_key(plan_json: dict, heldout: QueryLog) -> str:
    """A digest of what a shard's held-out share depends on besides the shard: plan and queries."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(plan_json, sort_keys=True).encode())
    digest.update(json.dumps(heldout.predicates).encode())
    digest.update(np.ascontiguousarray(heldout.vectors, np.float32).tobytes())
    return digest.hexdigest()[:16]


def _partial_path(version: str, partition: str, key: str) -> str:
    filesystem = fs.filesystem_for(version)
    return filesystem.join(version, "heldout", f"{partition}-{key}.npz")


def save_partial(version: str, partition: str, key: str, partial: HeldoutPartial) -> None:
    """Keep a shard's held-out share in its version (``heldout/``), for a reindex that reuses the shard."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **partial._asdict())
    filesystem = fs.filesystem_for(version)
    filesystem.makedirs(filesystem.join(version, "heldout"))
    filesystem.write_bytes(_partial_path(version, partition, key), buffer.getvalue())


def load_partial(version: str, partition: str, key: str) -> HeldoutPartial | None:
    """A shard's held-out share saved by :func:`save_partial`, None when there is none (or it is unreadable)."""
    import io

    path = _partial_path(version, partition, key)
    filesystem = fs.filesystem_for(version)
    if not filesystem.exists(path):
        return None
    try:
        with np.load(io.BytesIO(filesystem.read_bytes(path)), allow_pickle=False) as data:
            return HeldoutPartial(**{f: (int(data[f]) if f == "ordinal" else data[f]) for f in HeldoutPartial._fields})
    except (ValueError, KeyError, OSError):
        return None


def merge_heldout(partials: Sequence[HeldoutPartial], n: int,
                  k: int = HELDOUT_K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(approximate handles, exact handles, matching rows) per held-out query, from all shards' partials.

    Partials merge in partition order, as :meth:`Index.search` merges its shards' results.
    """
    from beamvec.index import exact

    approx = np.full((n, k), -1, np.int64)
    approx_keys = np.full((n, k), -np.inf, np.float32)
    truth = np.full((n, k), -1, np.int64)
    truth_keys = np.full((n, k), -np.inf, np.float32)
    matches = np.zeros(n, np.int64)
    for p in sorted(partials, key=lambda p: p.ordinal):
        a = p.approx_positions
        if len(a):
            approx[a], approx_keys[a] = exact.merge([(approx[a], approx_keys[a]), (p.approx_handles, p.approx_keys)], k)
        e = p.exact_positions
        if len(e):
            truth[e], truth_keys[e] = exact.merge([(truth[e], truth_keys[e]), (p.exact_handles, p.exact_keys)], k)
            matches[e] += p.matches
    return approx, truth, matches


def measure_index(index, heldout: QueryLog, ids: pa.Array, vectors: np.ndarray, table: pa.Table,
                  k: int = HELDOUT_K, target: float | None = None) -> dict | None:
    """The ``heldout_recall`` summary of an opened ``index`` over the items it holds.

    ``index.search`` with default parameters against the exact filtered top-k over
    all items (``ids``, ``vectors``, attribute ``table`` with ``id``); None when
    there are no held-out queries.
    """
    from beamvec.index import exact

    if len(heldout.predicates) == 0:
        return None
    found, _ = index.search(heldout.vectors, heldout.predicates, k)
    truth, matches = exact_answer(heldout, ids, vectors, table, index.metric, k)
    return recall_summary(exact.recall(found, truth), matches, k, target)


def exact_answer(queries: QueryLog, ids: pa.Array, vectors: np.ndarray, table: pa.Table, metric: str,
                 k: int = HELDOUT_K) -> tuple[np.ndarray, np.ndarray]:
    """The exact filtered top-k ids of the (aligned) ``queries`` over the items (``ids``, ``vectors``,
    attribute ``table``), int64 padded with -1 or objects padded with None; and each query's matching rows."""
    from beamvec.index import exact
    from beamvec.index.columns import Columns
    from beamvec.index.shard import group_predicates

    n = len(queries.predicates)
    masks: list = [None] * n
    matches = np.full(n, len(vectors), np.int64)
    columns = Columns(table)
    for predicate, members in group_predicates(queries.predicates).items():
        mask = None if isinstance(predicate, MatchAll) else predicate.evaluate(columns)
        for i in members:
            masks[i] = mask
        if mask is not None:
            matches[members] = int(np.count_nonzero(mask))
    rows, _ = exact.search(vectors, queries.vectors, k, metric, masks)
    if pa.types.is_integer(ids.type):
        return exact.ids_of_rows(ids.to_numpy(zero_copy_only=False), rows), matches
    return np.asarray(ids.to_pylist() + [None], dtype=object)[rows], matches


def summarize_partials(partials: Sequence[HeldoutPartial], n: int, k: int = HELDOUT_K,
                       target: float | None = None) -> dict | None:
    """The ``heldout_recall`` summary from all shards' partials (None when there are no held-out queries)."""
    from beamvec.index import exact

    if n == 0:
        return None
    approx, truth, matches = merge_heldout(partials, n, k)
    return recall_summary(exact.recall(approx, truth), matches, k, target)


SAVED_LOG = "workload.parquet"


def save_in_index(path: str, log: QueryLog | None) -> dict | None:
    """Save ``log`` (predicates, and vectors where it has them) in the index version at ``path``, for
    reindexing; its manifest entry ``{"path", "checksum"}``, None for an empty log."""
    if log is None or not len(log):
        return None
    import hashlib

    vectors: list = [None] * len(log)
    if log.vectors is not None:
        for row, vector in zip(log.vector_rows, log.vectors):
            vectors[int(row)] = vector.tolist()
    table = pa.table({PREDICATE: pa.array(log.predicates, pa.string()),
                      VECTOR: pa.array(vectors, pa.list_(pa.float32()))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    filesystem = fs.filesystem_for(path)
    filesystem.write_bytes(filesystem.join(path, SAVED_LOG), data)
    return {"path": SAVED_LOG, "checksum": "sha256:" + hashlib.sha256(data).hexdigest()}


def read_from_index(path: str, entry: dict | None, dimension: int) -> QueryLog:
    """The workload log saved in the index version at ``path`` (an empty log when there is none), its
    checksum checked against the manifest's ``entry`` (ValueError when it does not match)."""
    if entry is None:
        return QueryLog([])
    import hashlib

    filesystem = fs.filesystem_for(path)
    file = filesystem.join(path, entry["path"])
    if "sha256:" + hashlib.sha256(filesystem.read_bytes(file)).hexdigest() != entry["checksum"]:
        raise ValueError(f"{file} does not match the checksum its manifest records")
    log = read_workload(file, dimension)
    return dataclasses.replace(log, dropped=0)


def read_workload(path: str | None, dimension: int | None = None) -> QueryLog:
    """Past queries as a :class:`QueryLog`: Parquet with a ``predicate`` column and optionally a
    ``vector`` column (list or fixed_size_list of floats), or text with one predicate per line
    (then the log has no vectors).

    Vectors of the wrong dimension (``dimension``, default the first vector's), null,
    or holding null, NaN or infinite values are left out of the log's vectors (their
    predicates stay); the log counts them in ``dropped``. No path gives an empty log.
    """
    if not path:
        return QueryLog([])
    data = fs.filesystem_for(path).read_bytes(path)
    if data[:4] != b"PAR1":
        return QueryLog([line.strip() for line in data.decode().splitlines()])
    table = pq.read_table(pa.BufferReader(data))
    if PREDICATE not in table.column_names:
        raise ValueError(f"workload {path}: no '{PREDICATE}' column; columns are {', '.join(table.column_names)}")
    predicates = table.column(PREDICATE).to_pylist()
    if VECTOR not in table.column_names:
        return QueryLog(predicates)
    column = table.column(VECTOR)
    if not is_vector_type(column.type):
        raise ValueError(f"workload {path}: column '{VECTOR}' has type {column.type}; expected a list of floats")
    dimension = dimension or vector_dimension(column)
    if dimension is None:  # every vector is null
        return QueryLog(predicates, dropped=table.num_rows)
    vectors, bad = check_vectors(column, dimension)
    good = np.array(sorted(set(range(table.num_rows)) - set(bad)), np.int64)
    return QueryLog(predicates, vectors[good], good, dropped=len(bad))
