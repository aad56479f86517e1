"""``--codec auto``: the smallest codec that still meets the build's recall target.

As autofaiss picks an index under a memory budget: the candidate codecs within
``max_bytes_per_vector`` (bytes of a vector's code) are tried from the smallest up; each is
fitted on the build's sample, a shard is built over the sample with it, and the held-out
queries (the workload log's held-out part; without one, rows held out of the sample, unfiltered)
are searched; the first whose recall@10 against the exact answer over the sample reaches the
target (mean and most selective decile) is chosen. Every trial is reported.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from beamvec.index import exact, querylog
from beamvec.index.codec import Codec, CodecError, CodecSpec
from beamvec.index.querylog import QueryLog
from beamvec.index.search import group_queries, search_shard
from beamvec.index.shard import Shard

# Sample rows held out as queries when the workload log has no vectors.
_HELDOUT_ROWS = 500


class Trial(NamedTuple):
    """One candidate tried: its spec, bytes per vector, and recall@10 (mean, most selective decile)."""

    spec: str
    bytes_per_vector: int
    recall: float
    selective: float


def candidates(dimension: int, with_queries: bool) -> list[CodecSpec]:
    """Candidate codecs for vectors of ``dimension``, smallest code first (without re-rank first at equal
    size); the out-of-distribution projection too when query vectors are known."""
    specs = ["F16", "SQ8", "SQ8,Rerank"]
    for d in sorted({dimension // 2, dimension // 4, dimension // 8} - {0}):
        for reduction in ("PCA", "OOD") if with_queries else ("PCA",):
            specs += [f"{reduction}{d},SQ8", f"{reduction}{d},SQ8,Rerank"]
    for m in (dimension // 4, dimension // 8):
        if m and dimension % m == 0:
            specs += [f"PQ{m}", f"PQ{m},Rerank"]
    parsed = [CodecSpec.parse(s) for s in specs]
    return sorted(parsed, key=lambda s: (s.bytes_per_vector(dimension), s.rerank, s.reduction == "OOD"))


def choose(vectors: np.ndarray, attributes: pa.Table, metric: str, recall_target: float, max_bytes_per_vector: float,
           calibration: QueryLog | None = None, heldout: QueryLog | None = None,
           seed: int = 0) -> tuple[Codec, list[Trial]]:
    """The smallest codec within ``max_bytes_per_vector`` whose shard over the sample (``vectors`` with
    ``attributes``, with ``id``) reaches ``recall_target``, fitted on the sample; with the trials made.
    CodecError when none does, naming the best one tried."""
    vectors = np.asarray(vectors, np.float32)
    n, dimension = vectors.shape
    queries = calibration.vectors if calibration is not None and calibration.has_vectors else None
    if heldout is None or not len(heldout.predicates):
        rng = np.random.default_rng(seed)
        held = np.sort(rng.choice(n, min(_HELDOUT_ROWS, n // 10), replace=False))
        keep = np.setdiff1d(np.arange(n), held)
        heldout = QueryLog([None] * len(held), vectors[held])
        vectors, attributes = vectors[keep], attributes.take(pa.array(keep))
    if not len(heldout.predicates):
        raise CodecError("too few sample rows to choose a codec: give one (e.g. --codec SQ8)")
    truth, selective = _truth(vectors, attributes, heldout, metric)
    trials: list[Trial] = []
    for spec in candidates(dimension, queries is not None):
        if spec.bytes_per_vector(dimension) > max_bytes_per_vector:
            continue
        codec = Codec.fit(spec, vectors, metric, queries, seed)
        shard = Shard.build(attributes.column("id").combine_chunks(), vectors, attributes, metric=metric,
                            seed=seed, calibration_queries=queries, codec=codec)
        found = _search(shard, heldout)
        recall = exact.recall(found, truth)
        trial = Trial(spec.text(), spec.bytes_per_vector(dimension), float(recall.mean()),
                      float(recall[selective].mean()))
        trials.append(trial)
        if min(trial.recall, trial.selective) >= recall_target:
            return codec, trials
    best = max(trials, key=lambda t: min(t.recall, t.selective), default=None)
    raise CodecError(f"no codec of at most {max_bytes_per_vector:g} bytes a vector reaches recall@10 {recall_target} "
                     "on the held-out sample" + (f"; the best, {best.spec}, reached {best.recall:.4f} "
                                                 f"(most selective decile {best.selective:.4f})" if best else
                                                 " (none fits the budget; the smallest is "
                                                 f"{candidates(dimension, False)[0].bytes_per_vector(dimension)} bytes)"))


def _truth(vectors: np.ndarray, attributes: pa.Table, heldout: QueryLog, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact filtered top-10 ids of the held-out queries, and which are the most selective decile."""
    ids, matches = querylog.exact_answer(heldout, attributes.column("id").combine_chunks(), vectors, attributes, metric)
    return ids, matches <= np.quantile(matches, querylog.SELECTIVE_SHARE)


def _search(shard: Shard, heldout: QueryLog) -> np.ndarray:
    queries = group_queries(heldout.predicates)
    members = np.arange(len(heldout.predicates))
    found, _ = search_shard(shard, 0, queries, members, exact.prepare(heldout.vectors, shard.metric),
                            querylog.HELDOUT_K)
    rows = np.where(found.handles >= 0, found.handles, -1)  # shard 0: handles are rows
    ids = shard.ids_of(rows)
    if pa.types.is_integer(ids.type):
        return ids.fill_null(-1).to_numpy().reshape(rows.shape)
    return np.asarray(ids.to_pylist(), object).reshape(rows.shape)
