"""Shared fixtures: generated data, and small committed files under fixtures/ (tests must pass anywhere)."""
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_for(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listening on port {port}")


@pytest.fixture(scope="session")
def portable_services():
    """Beam's Python job service and an external SDK worker pool, started with this venv's python."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    job_port, pool_port = free_port(), free_port()
    services = [
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                          "--port", str(job_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                          "--service_port", str(pool_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        wait_for(job_port)
        wait_for(pool_port)
        yield job_port, pool_port
    finally:
        for s in services:
            s.terminate()
            s.wait(timeout=30)


@pytest.fixture(scope="session")
def portable_options(portable_services) -> list[str]:
    """Beam options that run a pipeline on the PortableRunner against ``portable_services``."""
    job_port, pool_port = portable_services
    return ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{pool_port}"]


@pytest.fixture(scope="session")
def minilm_reference() -> tuple[list[str], np.ndarray]:
    """``fixtures/minilm_reference.parquet``: 39 texts of the shared docstrings set (the shortest, the
    longest, some with non-ASCII characters, some at random) and the all-MiniLM-L6-v2 vectors
    sentence-transformers computed for them (stored as float16)."""
    table = pq.read_table(pathlib.Path(__file__).parent / "fixtures" / "minilm_reference.parquet")
    vectors = np.asarray(table.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False),
                         np.float32).reshape(-1, 384)
    return table.column("text").to_pylist(), vectors


@pytest.fixture(scope="session")
def save_text_model():
    """Saves a user's SavedModel at a path: strings -> hashed bag of characters -> ``dimension``-d
    vectors (with ``ints``, a wrong one: integer ids -> vectors)."""
    def _save_text_model(path: str, dimension: int = 8, ints: bool = False) -> None:
        import tensorflow as tf

        class Hashing(tf.Module):
            def __init__(self):
                super().__init__()
                self.table = tf.Variable(np.random.default_rng(0).normal(size=(64, dimension)).astype(np.float32))

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def texts(self, texts):
                buckets = tf.strings.to_hash_bucket_fast(tf.strings.unicode_split(texts, "UTF-8"), 64)
                return tf.reduce_mean(tf.gather(self.table, buckets), axis=1)

            @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
            def ids(self, ids):
                return tf.gather(self.table, ids % 64)

        module = Hashing()
        tf.saved_model.save(module, path, signatures={"serving_default": module.ids if ints else module.texts})

    return _save_text_model


@pytest.fixture(scope="session")
def republish():
    """Edits the published manifest of an index (a function of its JSON) and re-signs the pointer, as
    if a build had published that manifest; returns the published version's directory."""
    def _republish(path, edit=None) -> str:
        import hashlib
        import json

        from beamvec.index import versions

        version = versions.resolve(str(path))
        manifest = os.path.join(version, "manifest.json")
        if edit is not None:
            with open(manifest) as f:
                obj = json.load(f)
            edit(obj)
            with open(manifest, "w") as f:
                json.dump(obj, f)
            pointer_path = os.path.join(str(path), versions.POINTER)
            with open(pointer_path) as f:
                pointer = json.load(f)
            with open(manifest, "rb") as f:
                pointer["manifest"] = "sha256:" + hashlib.sha256(f.read()).hexdigest()
            with open(pointer_path, "w") as f:
                json.dump(pointer, f)
        return version

    return _republish
