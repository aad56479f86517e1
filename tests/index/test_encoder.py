"""The built-in all-MiniLM-L6-v2 port against sentence-transformers' own vectors (the fixture
``minilm_reference``, see conftest.py), and users' models loaded and checked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from beamvec.index import encoder

def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def builtin():
    return encoder.load(encoder.BUILTIN)


def test_builtin_model_reproduces_sentence_transformers(builtin, minilm_reference):
    texts, want = minilm_reference
    got = builtin.embed(texts, batch_size=8)
    assert got.shape == (len(texts), 384)
    assert cosines(got, want).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    # A text's vector does not depend on its batch companions (beyond float rounding).
    alone = builtin.embed(texts[:3], batch_size=1)
    assert np.abs(alone - got[:3]).max() < 1e-5


def test_bfloat16_products_stay_within_the_target(minilm_reference):
    texts, want = minilm_reference
    got = encoder.load(encoder.BUILTIN + ":bfloat16").embed(texts)
    assert cosines(got, want).min() >= 0.999
    assert encoder.identity(encoder.BUILTIN + ":bfloat16") != encoder.identity(encoder.BUILTIN)


def test_exported_savedmodel_embeds_as_the_builtin_and_carries_its_card(tmp_path, builtin, minilm_reference):
    card = encoder.export(str(tmp_path / "minilm"))
    assert {card[k] for k in ("dimension", "max_tokens")} == {384, 256} and card["normalized"] and card["license"]
    assert json.loads((tmp_path / "minilm" / encoder.CARD).read_text()) == card
    loaded = encoder.load(str(tmp_path / "minilm"))
    assert loaded.identity == builtin.identity == encoder.identity(str(tmp_path / "minilm"))
    texts, _ = minilm_reference
    assert np.array_equal(loaded.embed(texts[:5]), builtin.embed(texts[:5]))


def test_a_users_savedmodel_loads_with_its_own_identity(tmp_path, save_text_model):
    save_text_model(str(tmp_path / "user"))
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


def test_a_model_with_the_wrong_signature_is_refused_naming_what_was_expected(tmp_path, save_text_model):
    save_text_model(str(tmp_path / "ints"), ints=True)
    with pytest.raises(encoder.ModelError, match=r"int32.*expected one input: a batch of strings"):
        encoder.load(str(tmp_path / "ints"))
    with pytest.raises(encoder.ModelError, match="no such file"):
        encoder.load(str(tmp_path / "missing"))
