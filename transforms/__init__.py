"""beamvec's Beam API: build an index and run batch hybrid queries inside your own pipeline.

    import apache_beam as beam
    from beamvec.transforms import BuildIndex, HybridSearch, ReadItems, ReadQueries, WriteTables

    with beam.Pipeline() as p:
        built = p | "Items" >> ReadItems("items-*.parquet") | BuildIndex("/tmp/index", workload="workload.parquet")
        found = p | "Queries" >> ReadQueries("queries.parquet") | HybridSearch(built.index, k=10)
        found.results | "Results" >> WriteTables("/tmp/out/results")
        (built.rejected, found.rejected) | beam.Flatten() | "Rejected" >> WriteTables("/tmp/out/rejected")

* :class:`ReadItems`, :class:`ReadQueries`: Parquet files (any Beam filesystem), or a PCollection of
  dicts, ``beam.Row`` s, NamedTuples or Arrow tables, as Arrow blocks.
* :class:`Embed`: a text (or features) column -> a vector column, on Beam's RunInference with
  TensorFlow (the built-in all-MiniLM-L6-v2, or your SavedModel / Keras model).
* :class:`BuildIndex`: items -> a new published version of an index directory (:class:`BuildResult`:
  ``index``, ``rejected``); ``codec=`` quantizes its vectors. :class:`Reindex`: a full snapshot, or
  upserts and deletes -> a new version that rebuilds only the partitions whose content changed.
* :class:`FitCodec`: items -> a codec fitted on a deterministic sample; :class:`Encode`: items +
  codec -> their codes (:class:`EncodeResult`: ``encoded``, ``rejected``).
* :class:`HybridSearch`: queries -> each one's k nearest items under its predicate
  (:class:`SearchResult`: ``results``, ``rejected``); :class:`RelatedItems`: items -> their k
  nearest items under a predicate template filled from their attributes.
* :class:`WriteTables`: Arrow tables (results, dead letters) -> Parquet; :class:`AsNeighbors`:
  results -> one :class:`Neighbors` record per query.

Every stage sets aside what it cannot use as a dead letter (:data:`DEAD_LETTER_SCHEMA`: stage,
source, row, id, reason) and counts it in the ``beamvec`` metrics namespace, so that
``items_read`` = ``items_indexed`` + ``items_rejected`` and ``queries_read`` =
``queries_answered`` + ``queries_rejected``.

Importing this package routes the index's gs://, s3://, hdfs:// and azfs:// paths through
Beam's FileSystems.
"""

from beamvec.transforms import filesystem
from beamvec.transforms.build import BuildIndex, BuildResult, BuildSettings
from beamvec.transforms.codec import Encode, EncodeResult, FitCodec
from beamvec.transforms.embed import Embed, EmbedResult
from beamvec.transforms.io import Block, ReadItems, ReadQueries, WriteTables
from beamvec.transforms.reindex import Reindex
from beamvec.transforms.search import AsNeighbors, HybridSearch, Neighbors, RelatedItems, SearchResult
from beamvec.transforms.validate import DEAD_LETTER_SCHEMA

filesystem.register()

__all__ = ["AsNeighbors", "Block", "BuildIndex", "BuildResult", "BuildSettings", "DEAD_LETTER_SCHEMA", "Embed",
           "EmbedResult", "Encode", "EncodeResult", "FitCodec", "HybridSearch", "Neighbors", "ReadItems", "ReadQueries", "Reindex", "RelatedItems",
           "SearchResult", "WriteTables"]
