"""The `beamvec` command line."""
from __future__ import annotations

import argparse
from importlib import metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beamvec")
    parser.add_argument("--version", action="version",
                        version=f"beamvec {metadata.version('beamvec')}")
    parser.parse_args(argv)
    return 0
