"""Progress lines of long jobs (items read, shards built, queries answered), on the ``beamvec``
logger: each worker says how far it got, at most every few seconds (the command line shows them;
on a remote runner they are in the workers' logs)."""

from __future__ import annotations

import logging
import time

LOG = logging.getLogger("beamvec.progress")
EVERY_SECONDS = 5.0


class Progress:
    """A count of ``what`` done by one DoFn instance, logged as it grows."""

    def __init__(self, what: str):
        self.what, self.count, self._last = what, 0, 0.0

    def add(self, n: int, note: str = "") -> None:
        self.count += n
        now = time.monotonic()
        if note or now - self._last >= EVERY_SECONDS:
            self._last = now
            LOG.info("%s: %s%s", self.what, f"{self.count:,}", f" ({note})" if note else "")
