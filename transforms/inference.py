"""Beam's TensorFlow model handler for beamvec's models (imports TensorFlow: :class:`Embed` loads
this module only in pipelines that embed)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import tensorflow as tf
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor

from beamvec.index import encoder
from beamvec.transforms.embed import DEFAULT_BATCH_SIZE


def _run_encoder(model: encoder.Encoder, batch: Sequence, inference_args: dict[str, Any],
                 model_id: str | None = None) -> Iterable[PredictionResult]:
    """RunInference's inference function: one call of the model for a batch of texts or feature rows."""
    inputs = tf.constant(list(batch)) if model.kind == "text" else tf.constant(np.stack(batch), tf.float32)
    vectors = np.asarray(model(inputs), np.float32)
    return [PredictionResult(x, v, model_id) for x, v in zip(batch, vectors)]


class EncoderHandler(TFModelHandlerTensor):
    """Beam's TensorFlow model handler for a beamvec model name (:func:`beamvec.index.encoder.load`:
    the built-in all-MiniLM-L6-v2, or a SavedModel or Keras path on any filesystem TensorFlow
    reads), with its signature checked when it loads; batches of exactly ``batch_size``."""

    def __init__(self, model: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(model, inference_fn=_run_encoder, min_batch_size=batch_size, max_batch_size=batch_size)

    def load_model(self) -> encoder.Encoder:
        return encoder.load(self._model_uri)
