"""How a shard is built and searched, as values that round-trip: the ScaNN spec string
(:class:`ShardConfig`), the search knobs (:class:`SearchParams`) and the leaves each fetch size
needs (:class:`Calibration`)."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import math
import re
import sys

import numpy as np

# Shards up to this many rows are searched by brute force.
BRUTE_FORCE_ROWS = 4_096
# Seeds and the unbalanced k-means trainer make ScaNN's build deterministic:
# identical input gives identical partitions, codebooks and results.
_DETERMINISTIC_PARTITIONING = "partitioning {\n  clustering_seed: 1\n  balancing_type: DEFAULT_UNBALANCED\n"
# Rows ScaNN trains its 16-centre codebooks on (the tree trains on up to 100k rows: a
# tree fitted to a small sample cost 3 points of recall on unseen queries, measured).
_AH_SAMPLE = 5_000
# ScaNN's own top-k at calibration and in the config's default.
CALIBRATION_K = 10


def scann():
    """ScaNN's Python bindings, imported on first use, without TensorFlow.

    ``import scann`` also imports TensorFlow, for ScaNN's TensorFlow ops, which beamvec does not
    use: seconds in every process (each Beam worker, each command). Unless the process has
    imported ScaNN already, its package is registered without running its ``__init__``; its
    submodules (the bindings, the builder) import as usual."""
    if "scann" not in sys.modules:
        spec = importlib.util.find_spec("scann")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("beamvec needs ScaNN: pip install scann")
        package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("scann", None, is_package=True))
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules.setdefault("scann", package)
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """How a shard's ScaNN searcher is built, as one spec string that round-trips.

    ``Brute`` is exact brute force. ``Tree1000,AH2,Reorder100`` is a k-means tree of
    1000 leaves, asymmetric hashing with 2 dimensions per block, and exact
    re-scoring of the best 100 candidates.
    """

    num_leaves: int = 0
    dims_per_block: int = 2
    reorder: int = 100

    @property
    def brute_force(self) -> bool:
        return self.num_leaves == 0

    def spec(self) -> str:
        """The spec string, e.g. ``Tree447,AH2,Reorder100`` or ``Brute``."""
        if self.brute_force:
            return "Brute"
        return f"Tree{self.num_leaves},AH{self.dims_per_block},Reorder{self.reorder}"

    @classmethod
    def parse(cls, spec: str) -> "ShardConfig":
        """The config a spec string describes; ValueError naming the expected form otherwise."""
        if spec.strip().lower() == "brute":
            return cls()
        m = re.fullmatch(r"\s*tree(\d+)\s*,\s*ah(\d+)\s*,\s*reorder(\d+)\s*", spec, re.IGNORECASE)
        if not m or int(m[1]) < 1 or int(m[2]) < 1 or int(m[3]) < 1:
            raise ValueError(f"bad shard spec {spec!r}: expected 'Brute' or 'Tree<leaves>,AH<dims>,Reorder<n>'")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    @classmethod
    def for_shape(cls, rows: int, dimension: int) -> "ShardConfig":
        """The default for a shard: brute force when small, else a tree of about sqrt(rows) leaves."""
        if rows <= BRUTE_FORCE_ROWS:
            return cls()
        return cls(num_leaves=max(2, round(math.sqrt(rows))), dims_per_block=2, reorder=100)

    def scann_config(self, vectors: np.ndarray, metric: str, reorder: bool = True) -> str:
        """ScaNN's text config for these vectors (already prepared for ``metric``). Without ``reorder``,
        ScaNN returns its asymmetric-hashing candidates and keeps no copy of the vectors (a shard
        with a codec re-scores the candidates from its codes)."""
        distance = "squared_l2" if metric == "squared_l2" else "dot_product"
        builder = scann().builder(vectors, CALIBRATION_K, distance)
        if self.brute_force:
            return builder.score_brute_force().create_config()
        n = len(vectors)
        # Plain (isotropic) AH: encodes faster than anisotropic AH and, with calibrated
        # leaves, matched its queries/s and recall on partitioned data (measured).
        builder = (builder.tree(self.num_leaves, 1, training_sample_size=min(n, 100_000))
                   .score_ah(self.dims_per_block, training_sample_size=min(n, _AH_SAMPLE)))
        config = (builder.reorder(self.reorder) if reorder else builder).create_config()
        # Seeded, unbalanced, and k-means++ centres: ScaNN's random initialisation ignores the seed,
        # so the same rows gave a different tree on every build (measured); k-means++ gives the same
        # tree in every process and with any number of training threads.
        config = config.replace("RANDOM_INITIALIZATION", "DEFAULT_KMEANS_PLUS_PLUS", 1)
        return config.replace("partitioning {", _DETERMINISTIC_PARTITIONING, 1)


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """Knobs of :meth:`Shard.search`.

    ``prefilter_cost_ratio``: a query is pre-filtered when the pre-filter's estimated
    cost is at most this times the post-filter's (higher favours exact pre-filter).
    ``overfetch``: the post-filter fetches ``overfetch * k / selectivity`` candidates.
    ``leaves_to_search``: overrides the calibrated number of leaves.
    ``leaves_scale``: multiplies the calibrated leaves (trades speed for recall).
    ``rerank_factor``: with a codec that re-ranks, each shard finds ``rerank_factor * k`` candidates
    from its codes and re-scores them with the full-precision vectors.
    """

    prefilter_cost_ratio: float = 2.0
    overfetch: float = 2.0
    leaves_to_search: int | None = None
    leaves_scale: float = 1.0
    rerank_factor: float = 4.0


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Leaves to search, per fetch size, for recall >= target; measured on calibration queries.

    ``leaves`` pairs each fetch size F (10, 128, 512; at most an eighth of the rows) with the fewest leaves
    for which ScaNN's top-F holds at least ``target`` (plus a margin) of the exact top-F. A filter of
    selectivity s needs about the unfiltered top-k/s, so the post-filter looks up
    the leaves for its fetch size here. ``recall`` is the unfiltered recall@10 reached.
    ``queries`` calibration queries were used: ``log_queries`` of them from the
    workload log (queries routed to the shard), the rest the shard's own rows.
    """

    leaves: tuple[tuple[int, int], ...]
    recall: float
    target: float
    queries: int
    log_queries: int = 0

    @property
    def leaves_to_search(self) -> int:
        """Leaves for unfiltered top-10."""
        return self.leaves[0][1] if self.leaves else 0

    def leaves_for(self, fetch: int, num_leaves: int) -> int:
        """Leaves for a fetch size: the entry of the next larger calibrated size, else all."""
        for size, leaves in self.leaves:
            if size >= fetch:
                return leaves
        return num_leaves

    def to_json(self) -> dict:
        return {"leaves": [list(p) for p in self.leaves], "recall": self.recall,
                "target": self.target, "queries": self.queries, "log_queries": self.log_queries}

    @classmethod
    def from_json(cls, obj: dict) -> "Calibration":
        return cls(tuple((int(f), int(l)) for f, l in obj["leaves"]), float(obj["recall"]),
                   float(obj["target"]), int(obj["queries"]), int(obj.get("log_queries", 0)))
