"""What searches did and where their time went, summed over searches."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Iterator

# Phases of a search, in the order a search meets them. The first three and the last
# are timed once per batch (wall seconds); the others inside each shard search, summed
# over shards (on N workers they add up to about N times the wall time they take).
PHASES = ("predicates", "routing", "masks", "scoring", "scann", "selection", "rerank", "merge")


@dataclasses.dataclass
class SearchStats:
    """Queries per strategy, fallbacks, rows scored, and seconds per phase (see :data:`PHASES`):

    ``predicates``: parsing, grouping and validating the batch's predicates;
    ``routing``: deciding the partitions each predicate can match (zone maps, plan);
    ``masks``: row masks and runs of each predicate in each shard it reaches;
    ``scoring``: exact matrix products; ``scann``: ScaNN searches (post-filter);
    ``selection``: top-k over scores and masks; ``rerank``: re-scoring candidates with
    full-precision vectors (a codec that re-ranks); ``merge``: per-query merge across shards.
    """

    prefiltered: int = 0
    postfiltered: int = 0
    fallbacks: int = 0
    rows_scored: int = 0
    reranked: int = 0
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def add(self, other: "SearchStats") -> None:
        for f in dataclasses.fields(self):
            if f.name != "seconds":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for phase, seconds in other.seconds.items():
            self.seconds[phase] += seconds

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the time the ``with`` block takes to ``phase``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def profile(self) -> str:
        """One line: seconds per phase and share of their total."""
        total = sum(self.seconds.values()) or 1.0
        return ", ".join(f"{p} {s:.3f} s ({s / total:.0%})" for p, s in self.seconds.items())
