"""Models that turn texts (or numeric features) into vectors: the built-in all-MiniLM-L6-v2
(:mod:`beamvec.index.minilm`) and users' SavedModels and Keras models, loaded and checked the
same way, each with an identity an index records so that queries are embedded as its items were.

A model is named by ``BUILTIN`` (built from the installed weights wherever it runs), or by the
path of a SavedModel directory (any filesystem TensorFlow reads: local, gs://, s3://) or of a
Keras ``.keras`` file. :func:`export` writes the built-in model as a SavedModel with a JSON card
(:data:`CARD`) beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import numpy as np

BUILTIN = "all-MiniLM-L6-v2"
CARD = "beamvec_model.json"
"""The card's file name in an exported model's directory."""
KINDS = ("text", "features")


class ModelError(ValueError):
    """A model that cannot be loaded, or whose inputs or outputs are not what an embedding needs."""


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What an index records of the model that embedded its items: a name (the built-in model's, or
    the path it was loaded from), the vectors' dimension, and a checksum of the weights; two models
    with the same checksum and dimension embed alike."""

    name: str
    dimension: int
    checksum: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelIdentity":
        try:
            return cls(str(data["name"]), int(data["dimension"]), str(data["checksum"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"bad model identity {data!r}: {e}") from e

    def same_model(self, other: "ModelIdentity") -> bool:
        return (self.dimension, self.checksum) == (other.dimension, other.checksum)


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A loaded model: ``fn`` maps a batch (a 1-d string tensor for ``kind`` "text", a 2-d float32
    one for "features") to (n, dimension) float32; ``normalized`` when its vectors have unit length."""

    fn: Callable[[Any], Any]
    identity: ModelIdentity
    kind: str
    normalized: bool
    owner: Any = dataclasses.field(default=None, repr=False, compare=False)  # keeps ``fn``'s model alive

    def __call__(self, batch) -> Any:
        return self.fn(batch)

    def embed(self, inputs, batch_size: int = 64) -> np.ndarray:
        """``inputs`` (texts, or an (n, f) array) as an (n, dimension) float32 array, in-process."""
        import tensorflow as tf

        out = [np.asarray(self.fn(tf.constant(inputs[i:i + batch_size])), np.float32)
               for i in range(0, len(inputs), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.identity.dimension), np.float32)


def builtin_identity(precision: str = "float32") -> ModelIdentity:
    """The built-in model's identity: the checksum of its weights and vocabulary, and its precision."""
    from beamvec.index import minilm

    digest = hashlib.sha256(f"{minilm.NAME} {precision}\n".encode())
    for name in ("model.safetensors", "vocab.txt"):
        with open(os.path.join(minilm.model_dir(), name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return ModelIdentity(minilm.NAME if precision == "float32" else f"{minilm.NAME}:{precision}",
                         minilm.DIMENSION, digest.hexdigest())


def _builtin_precision(model: str) -> str | None:
    """The precision a built-in model's name asks for; None for any other model."""
    return {BUILTIN: "float32", f"{BUILTIN}:bfloat16": "bfloat16"}.get(model)


def identity(model: str) -> ModelIdentity:
    """The identity of the model named ``model`` (as :func:`load` names them), without running it
    where its card or the built-in weights say it."""
    precision = _builtin_precision(model)
    if precision is not None:
        return builtin_identity(precision)
    if not model.endswith((".keras", ".h5")):
        card = _read_card(model) if _exists(model) else None
        if card is not None:
            return ModelIdentity.from_json(card["identity"])
    return load(model).identity


def _exists(path: str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.exists(path)


def _files_checksum(path: str) -> str:
    """SHA-256 over a model's files (relative names and contents, in name order), on any TF filesystem."""
    import tensorflow as tf

    digest = hashlib.sha256()
    if not tf.io.gfile.isdir(path):
        files = [(os.path.basename(path), path)]
    else:
        files = sorted((os.path.relpath(os.path.join(d, f), path), os.path.join(d, f))
                       for d, _, names in tf.io.gfile.walk(path) for f in names if f != CARD)
    for relative, full in files:
        digest.update(relative.encode() + b"\0")
        with tf.io.gfile.GFile(full, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def load(model: str) -> Encoder:
    """The model named ``model`` (:data:`BUILTIN`, ``BUILTIN + ":bfloat16"`` for its matrix products
    in bfloat16, or a SavedModel or ``.keras`` path), loaded and checked; ModelError naming what
    was expected when it does not map a batch to vectors."""
    precision = _builtin_precision(model)
    if precision is not None:
        from beamvec.index import minilm

        module = minilm.build(precision)
        return Encoder(module.embed, builtin_identity(precision), "text", True, module)
    import tensorflow as tf

    if model.endswith((".keras", ".h5")):
        return _keras(model)
    if not _exists(model):
        raise ModelError(f"model {model!r}: no such file or directory, and not the built-in {BUILTIN!r}")
    card = _read_card(model)
    try:
        loaded = tf.saved_model.load(model)
    except Exception as e:  # TensorFlow raises many kinds here: say which model
        raise ModelError(f"model {model!r}: not a SavedModel TensorFlow can load: {e}") from e
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelError(f"model {model!r}: no 'serving_default' signature; expected one that maps a batch of "
                         "strings (shape [None], tf.string) or of features ([None, f], float) to vectors ([None, d])")
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    kind = _check_input(model, list(inputs.values()))
    dimension = _check_output(model, list(outputs.values()) if isinstance(outputs, dict) else [outputs])
    (name_in,), (name_out,) = list(inputs), list(outputs)
    if card is not None:
        identity = ModelIdentity.from_json(card["identity"])
        if identity.dimension != dimension:
            raise ModelError(f"model {model!r}: its card says dimension {identity.dimension}, it gives {dimension}")
    else:
        identity = ModelIdentity(model, dimension, _files_checksum(model))
    normalized = bool(card and card.get("normalized"))

    def fn(batch, _signature=signature, _in=name_in, _out=name_out):
        return _signature(**{_in: batch})[_out]

    return Encoder(fn, identity, kind, normalized, loaded)


def _keras(path: str) -> Encoder:
    import keras

    try:
        model = keras.models.load_model(path)
    except Exception as e:  # Keras raises many kinds here: say which model
        raise ModelError(f"model {path!r}: not a Keras model Keras can load: {e}") from e
    inputs = model.inputs if isinstance(model.inputs, list) else [model.inputs]
    import tensorflow as tf

    specs = [tf.TensorSpec(i.shape, tf.as_dtype(i.dtype)) for i in inputs]
    kind = _check_input(path, specs)
    outputs = model.outputs if isinstance(model.outputs, list) else [model.outputs]
    dimension = _check_output(path, [tf.TensorSpec(o.shape, tf.as_dtype(o.dtype)) for o in outputs])
    return Encoder(lambda batch: model(batch, training=False), ModelIdentity(path, dimension, _files_checksum(path)),
                   kind, False, model)


def _check_input(model: str, specs: list) -> str:
    import tensorflow as tf

    expected = "one input: a batch of strings (shape [None], tf.string) or of features ([None, f], float)"
    if len(specs) != 1:
        raise ModelError(f"model {model!r} takes {len(specs)} inputs; expected {expected}")
    spec = specs[0]
    if spec.dtype == tf.string and spec.shape.rank == 1:
        return "text"
    if spec.dtype.is_floating and spec.shape.rank == 2:
        return "features"
    raise ModelError(f"model {model!r} takes {spec.dtype.name} of shape {spec.shape}; expected {expected}")


def _check_output(model: str, specs: list) -> int:
    expected = "one output: vectors of shape [None, d] (float)"
    if len(specs) != 1:
        raise ModelError(f"model {model!r} gives {len(specs)} outputs; expected {expected}")
    spec = specs[0]
    if not (spec.dtype.is_floating and spec.shape.rank == 2 and spec.shape[-1] is not None):
        raise ModelError(f"model {model!r} gives {spec.dtype.name} of shape {spec.shape}; expected {expected}")
    return int(spec.shape[-1])


def _read_card(path: str) -> dict | None:
    import tensorflow as tf

    card = path.rstrip("/") + "/" + CARD
    if not tf.io.gfile.exists(card):
        return None
    with tf.io.gfile.GFile(card) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ModelError(f"model {path!r}: {CARD} is not valid JSON: {e}") from e


def export(output: str, precision: str = "float32") -> dict:
    """Write the built-in model as a SavedModel at ``output`` (any TF filesystem) with its card
    (:data:`CARD`: dimension, normalisation, max tokens, source, licence, identity); returns the card."""
    import tensorflow as tf

    from beamvec.index import minilm

    module = minilm.build(precision)
    tf.saved_model.save(module, output, signatures={"serving_default": module.embed})
    card = {"name": minilm.NAME, "dimension": minilm.DIMENSION, "normalized": True, "max_tokens": module.max_tokens,
            "input": "text", "precision": precision, "source": minilm.SOURCE, "license": minilm.LICENSE,
            "identity": builtin_identity(precision).to_json()}
    with tf.io.gfile.GFile(output.rstrip("/") + "/" + CARD, "w") as f:
        f.write(json.dumps(card, indent=2, sort_keys=True))
    return card
