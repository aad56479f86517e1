"""beamvec core: predicates, schema, shards, partition plans, manifests, exact search. No Beam import.

Usable in-process on its own::

    from beamvec.index import Index, build_index
    build_index("/tmp/idx", ids, vectors, attributes, metric="cosine")
    ids, scores = Index.open("/tmp/idx").search(queries, ["year >= 2000", None], k=10)
"""

import importlib

_EXPORTS = {
    "Index": "index", "build_index": "index",
    "Codec": "codec", "CodecError": "codec", "CodecSpec": "codec",
    "PartitionPlan": "plan", "fit_plan": "plan",
    "Manifest": "manifest", "ManifestError": "manifest",
    "Predicate": "predicate", "PredicateError": "predicate", "parse": "parser",
    "SearchParams": "shardspec", "Shard": "shard", "ShardConfig": "shardspec", "ShardFormatError": "shardfile",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import on first use, so that ``beamvec.index.exact`` alone does not load ScaNN."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'beamvec.index' has no attribute {name!r}")
    return getattr(importlib.import_module(f"beamvec.index.{_EXPORTS[name]}"), name)
