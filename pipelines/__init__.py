"""Runnable beamvec jobs and the beamvec command line."""
