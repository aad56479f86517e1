"""Shared fixtures: generated data only (tests must pass anywhere)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
