"""Beam PTransforms that wrap the beamvec core."""
