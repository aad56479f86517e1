"""The built-in all-MiniLM-L6-v2 port against sentence-transformers' own vectors, and users' models
loaded and checked.

``tests/fixtures/minilm_reference.parquet``: 39 texts (the shortest, the longest, some with non-ASCII
characters, some at random) of the shared docstrings set, with the vectors sentence-transformers
computed for them (float16).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from beamvec.index import encoder

FIXTURE = pathlib.Path(__file__).parent.parent / "fixtures" / "minilm_reference.parquet"


def reference() -> tuple[list[str], np.ndarray]:
    table = pq.read_table(FIXTURE)
    vectors = np.asarray(table.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False),
                         np.float32).reshape(-1, 384)
    return table.column("text").to_pylist(), vectors


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def builtin():
    return encoder.load(encoder.BUILTIN)


def test_builtin_model_reproduces_sentence_transformers(builtin):
    texts, want = reference()
    got = builtin.embed(texts, batch_size=8)
    assert got.shape == (len(texts), 384)
    assert cosines(got, want).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    # A text's vector does not depend on its batch companions (beyond float rounding).
    alone = builtin.embed(texts[:3], batch_size=1)
    assert np.abs(alone - got[:3]).max() < 1e-5


def test_bfloat16_products_stay_within_the_target():
    texts, want = reference()
    got = encoder.load(encoder.BUILTIN + ":bfloat16").embed(texts)
    assert cosines(got, want).min() >= 0.999
    assert encoder.identity(encoder.BUILTIN + ":bfloat16") != encoder.identity(encoder.BUILTIN)


def test_exported_savedmodel_embeds_as_the_builtin_and_carries_its_card(tmp_path, builtin):
    card = encoder.export(str(tmp_path / "minilm"))
    assert {card[k] for k in ("dimension", "max_tokens")} == {384, 256} and card["normalized"] and card["license"]
    assert json.loads((tmp_path / "minilm" / encoder.CARD).read_text()) == card
    loaded = encoder.load(str(tmp_path / "minilm"))
    assert loaded.identity == builtin.identity == encoder.identity(str(tmp_path / "minilm"))
    texts, _ = reference()
    assert np.array_equal(loaded.embed(texts[:5]), builtin.embed(texts[:5]))


def _save_text_model(path: str, dimension: int = 8, ints: bool = False) -> None:
    """A user's SavedModel: strings -> hashed bag of characters -> ``dimension``-d vectors (with
    ``ints``, a wrong one: integer ids -> vectors)."""
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


def test_a_users_savedmodel_loads_with_its_own_identity(tmp_path):
    _save_text_model(str(tmp_path / "user"))
    model = encoder.load(str(tmp_path / "user"))
    assert (model.kind, model.identity.dimension, model.identity.name) == ("text", 8, str(tmp_path / "user"))
    vectors = model.embed(["abc", "abd", "zzz"])
    assert vectors.shape == (3, 8) and not np.allclose(vectors[0], vectors[2])
    assert encoder.identity(str(tmp_path / "user")) == model.identity


def test_a_keras_model_on_features_loads(tmp_path):
    import keras

    inputs = keras.Input((5,), dtype="float32")
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.save(tmp_path / "features.keras")
    loaded = encoder.load(str(tmp_path / "features.keras"))
    assert (loaded.kind, loaded.identity.dimension) == ("features", 3)
    assert loaded.embed(np.ones((4, 5), np.float32)).shape == (4, 3)


def test_a_model_with_the_wrong_signature_is_refused_naming_what_was_expected(tmp_path):
    _save_text_model(str(tmp_path / "ints"), ints=True)
    with pytest.raises(encoder.ModelError, match=r"int32.*expected one input: a batch of strings"):
        encoder.load(str(tmp_path / "ints"))
    with pytest.raises(encoder.ModelError, match="no such file"):
        encoder.load(str(tmp_path / "missing"))
