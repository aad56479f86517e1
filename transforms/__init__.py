"""Beam PTransforms over the beamvec core: read and validate, fit the plan, build shards, search.

Importing this package routes the index's gs://, s3://, hdfs:// and azfs:// paths through
Beam's FileSystems.
"""

from beamvec.transforms import filesystem

filesystem.register()
