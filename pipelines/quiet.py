"""What the command line shows: beamvec's own progress and results; the native libraries' log
lines (ScaNN's absl logging, TensorFlow's C++ logging) and Beam's INFO chatter (its worker
processes' too) only with ``--verbose``."""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

# absl / glog ("I0000 00:00:1796181175.209680    2376 file.cc:58] ...", the time in seconds since
# the epoch while absl is not initialised), TensorFlow's C++
# ("2026-12-02 03:12:52.298227: I external/...") and absl's notice that it is not initialised.
NATIVE_LOG = re.compile(rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ [^\]]+\] |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] "
                        rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)")
# Beam's own Python log lines in worker processes (logging's default format: "INFO:name:message"):
# its INFO chatter, and three warnings every worker prints that say nothing about the job.
BEAM_CHATTER = re.compile(rb"^(?:(?:INFO|DEBUG):(?!beamvec\.)[\w.]+:|WARNING:[\w.]+:(?:apitools not found"
                          rb"|No semi_persistent_directory found|Discarding unparseable args))")
# beamvec's progress as a worker process logs it, shown as the command's own lines are.
WORKER_PROGRESS = b"INFO:beamvec.progress:"


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a line is logged (not when the handler was
    made: a caller may swap it, as a test capturing output does)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbose: bool) -> None:
    """Set up logging for a command: beamvec's INFO lines (progress) on stderr; unless ``verbose``,
    only errors from other Python loggers and no native log lines."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    beamvec = logging.getLogger("beamvec")
    beamvec.handlers[:] = [handler]
    beamvec.setLevel(logging.INFO)
    beamvec.propagate = False
    if verbose:
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("apache_beam").setLevel(logging.NOTSET)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    # A stage's error: Beam logs it with its traceback, then re-raises it, and the command reports it
    # (in one line when it is the input's fault, with the traceback when it is not).
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    _filter_native_logs()


_FILTERING = threading.Event()


def _filter_native_logs() -> None:
    """Route this process's stderr (fd 2, which C++ libraries write to directly) through a filter that
    drops their log lines and passes everything else (once per process: later commands in it reuse
    the filter). Child processes (Beam's workers) inherit it. At exit the filter drains, so a
    traceback printed last is never lost."""
    if _FILTERING.is_set():
        return
    _FILTERING.set()
    sys.stderr.flush()
    original = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        with os.fdopen(read, "rb") as source:
            for line in source:
                if not (NATIVE_LOG.match(line) or BEAM_CHATTER.match(line)):
                    os.write(original, line.removeprefix(WORKER_PROGRESS))

    thread = threading.Thread(target=pump, name="beamvec-stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer closes: the pump sees the end
        thread.join(timeout=5)

    atexit.register(drain)
