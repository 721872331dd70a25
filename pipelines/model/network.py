"""The interest-migration network (Keras 3): two custom layers, the functional model and the fast
scoring function.

Architecture (docs/model.md has the measurements behind it):

* :class:`SequenceEncoder` embeds the last L events (category + behaviour + day of week + hour +
  a learned map of the event's age + position) and encodes them with a GRU (or one self-attention
  block), then pools them (attention pooling + the most recent position) into a user vector.
  Sequences are right-aligned; a batch may drop its leading all-padding columns (positions count
  from the right), which changes nothing in the output.
* :class:`MigrationScorer` turns the user vector and the history into one probability per
  category: an *explore* path (user vector x category embedding, for every category) plus a
  *repeat* path that adds a learned logit for each category already in the user's history,
  computed from that category's counts, decayed counts, recency and share, a small category
  embedding and the user context. The repeat path is *sparse*: it runs on the example's K history
  categories only (``hist_cat`` [B, K], ``hist_feat`` [B, K, 8]) and scatter-adds into the
  [B, V] logits. Output: sigmoid probabilities [B, V].

Models saved before the sparse path take a dense ``hist`` input [B, V, 8] (``sparse=False`` in
their scorer's config); they still load and score: :class:`Predictor` builds that tensor from the
sparse history, batch by batch.

Both layers are registered for Keras serialization (package ``interest_migration``) when this
module is imported and rebuild from ``get_config``, so a saved ``model.keras`` reloads anywhere
this module is importable (:func:`load_keras_model` imports it for you).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from pipelines.features.examples import N_HIST
from pipelines.features.vocab import RESERVED
from pipelines.model.inference import predict_in_slices

SEQ_INPUTS = ("seq_cat", "seq_beh", "seq_age", "seq_dow", "seq_hour")
INPUT_NAMES = (*SEQ_INPUTS, "hist_cat", "hist_feat")
LEGACY_INPUT_NAMES = (*SEQ_INPUTS, "hist")  # models saved before the sparse repeat path
PACKAGE = "interest_migration"  # Keras registration package: saved models name their layers with it
ENCODERS = ("gru", "attention")
# The same default as Settings.sequence_encoder (IM_SEQUENCE_ENCODER): gru, as fast and as good on CPU.
DEFAULT_ENCODER = "gru"


@keras.saving.register_keras_serializable(package=PACKAGE)
class SequenceEncoder(keras.layers.Layer):
    """Event sequence -> user vector [B, 2d]."""

    def __init__(self, n_categories: int, n_behaviors: int, seq_len: int, embed_dim: int = 32,
                 encoder: str = DEFAULT_ENCODER, num_heads: int = 2, dropout: float = 0.1,
                 age_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder={encoder!r} must be 'attention' or 'gru'")
        self.n_categories, self.n_behaviors, self.seq_len = n_categories, n_behaviors, seq_len
        self.embed_dim, self.encoder, self.num_heads = embed_dim, encoder, num_heads
        self.dropout, self.age_scale = dropout, age_scale
        self.cat_emb = keras.layers.Embedding(n_categories, embed_dim, name="category_embedding")
        self.beh_emb = keras.layers.Embedding(n_behaviors, embed_dim, name="behavior_embedding")
        self.dow_emb = keras.layers.Embedding(7, embed_dim, name="dow_embedding")
        self.hour_emb = keras.layers.Embedding(24, embed_dim, name="hour_embedding")
        self.pos_emb = keras.layers.Embedding(seq_len, embed_dim, name="position_embedding")
        self.age_proj = keras.layers.Dense(embed_dim, name="age_projection")
        self.drop = keras.layers.Dropout(dropout)
        if encoder == "attention":
            self.attention = keras.layers.MultiHeadAttention(num_heads, max(embed_dim // num_heads, 8),
                                                             dropout=dropout, name="self_attention")
            self.norm1 = keras.layers.LayerNormalization(name="norm1")
            self.norm2 = keras.layers.LayerNormalization(name="norm2")
            self.ffn1 = keras.layers.Dense(2 * embed_dim, activation="gelu", name="ffn1")
            self.ffn2 = keras.layers.Dense(embed_dim, name="ffn2")
        else:
            self.gru = keras.layers.GRU(embed_dim, return_sequences=True, name="gru")
        self.pool_score = keras.layers.Dense(1, name="pool_score")

    def call(self, inputs: dict[str, Any], training: bool = False) -> Any:
        cat = ops.cast(inputs["seq_cat"], "int32")
        mask = ops.greater(cat, 0)
        age = ops.cast(inputs["seq_age"], "float32")
        age_feats = ops.stack([ops.log1p(age), ops.log1p(age / self.age_scale),
                               ops.exp(-age / self.age_scale)], axis=-1)
        width = ops.shape(cat)[1]
        positions = ops.arange(self.seq_len - width, self.seq_len)  # right-aligned: count from the right
        x = (self.cat_emb(cat) + self.beh_emb(ops.cast(inputs["seq_beh"], "int32"))
             + self.dow_emb(ops.cast(inputs["seq_dow"], "int32")) + self.hour_emb(ops.cast(inputs["seq_hour"], "int32"))
             + self.age_proj(age_feats) + self.pos_emb(positions)[None, :, :])
        x = self.drop(x, training=training)
        if self.encoder == "attention":
            att_mask = ops.broadcast_to(mask[:, None, :], (ops.shape(cat)[0], width, width))
            h = self.attention(x, x, attention_mask=att_mask, training=training)
            x = self.norm1(x + self.drop(h, training=training))
            x = self.norm2(x + self.drop(self.ffn2(self.ffn1(x)), training=training))
        else:
            x = self.gru(x, mask=mask, training=training)
        fmask = ops.cast(mask, "float32")[:, :, None]
        logits = self.pool_score(x) + (fmask - 1.0) * 1e9
        weights = ops.softmax(logits, axis=1) * fmask
        pooled = ops.sum(weights * x, axis=1)
        last = x[:, -1, :] * fmask[:, -1, :]
        return ops.concatenate([pooled, last], axis=-1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(n_categories=self.n_categories, n_behaviors=self.n_behaviors, seq_len=self.seq_len,
                      embed_dim=self.embed_dim, encoder=self.encoder, num_heads=self.num_heads,
                      dropout=self.dropout, age_scale=self.age_scale)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MigrationScorer(keras.layers.Layer):
    """(user vector, history) -> probabilities [B, V]: explore + repeat paths.

    ``sparse=True``: the history is ``hist_cat`` [B, K] (0 = padding) and ``hist_feat`` [B, K, F];
    ``sparse=False`` (models saved before the sparse path): one dense ``hist`` [B, V, F]. The
    weights are the same in both modes, so either can run a model trained by the other.
    """

    def __init__(self, n_categories: int, embed_dim: int = 32, hidden: int = 32, context_dim: int = 8,
                 use_repeat: bool = True, residual_base: bool = False, sparse: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_categories, self.embed_dim, self.hidden = n_categories, embed_dim, hidden
        self.context_dim, self.use_repeat, self.residual_base = context_dim, use_repeat, residual_base
        self.sparse = sparse
        self.user_proj = keras.layers.Dense(embed_dim, activation="gelu", name="user_projection")
        self.explore = keras.layers.Dense(n_categories, name="explore_logits")
        if use_repeat:
            self.cat_ctx = keras.layers.Embedding(n_categories, context_dim, name="repeat_category_context")
            self.user_ctx = keras.layers.Dense(context_dim, name="repeat_user_context")
            self.repeat1 = keras.layers.Dense(hidden, activation="gelu", name="repeat_hidden")
            self.repeat2 = keras.layers.Dense(1, name="repeat_logit")
        if use_repeat and residual_base:
            # the decayed-frequency baseline as a base logit: log1p of the decayed counts, weights
            # start at (0, 0, 1) = the long half-life the baseline picks on Ciao; the rest learns corrections
            self.base_weights = self.add_weight(
                name="base_weights", shape=(3,), trainable=True,
                initializer=keras.initializers.Constant([0.0, 0.0, 1.0]))

    def _repeat_logits(self, u: Any, hist: Any, cat_ctx: Any) -> Any:
        """Repeat logit of every history slot [B, S] (0 where the slot holds no history)."""
        hist = ops.cast(hist, "float32")
        known = ops.cast(ops.greater(hist[:, :, 0], 0.0), "float32")
        decays = ops.log1p(hist[:, :, 1:4])  # decayed counts grow with activity: compress them like the raw count
        feats = ops.concatenate([hist[:, :, :1], decays, hist[:, :, 4:]], axis=-1)
        user_ctx = ops.broadcast_to(self.user_ctx(u)[:, None, :], ops.shape(cat_ctx))
        z = self.repeat1(ops.concatenate([feats, cat_ctx, user_ctx], axis=-1))
        repeat = ops.squeeze(self.repeat2(z), axis=-1)
        if self.residual_base:
            repeat = repeat + ops.sum(decays * self.base_weights, axis=-1)
        return known * repeat

    def call(self, user: Any, hist: Any, hist_feat: Any = None) -> Any:
        return ops.sigmoid(self.logits(user, hist, hist_feat))

    def logits(self, user: Any, hist: Any, hist_feat: Any = None) -> Any:
        """The logits [B, V] whose sigmoid :meth:`call` returns (the ranking needs no sigmoid)."""
        u = self.user_proj(user)
        logits = self.explore(u)
        if self.use_repeat and self.sparse:
            cats = ops.cast(hist, "int32")
            batch, slots = ops.shape(cats)[0], ops.shape(cats)[1]
            repeat = self._repeat_logits(u, hist_feat, self.cat_ctx(cats))
            rows = ops.broadcast_to(ops.arange(batch, dtype="int32")[:, None], (batch, slots))
            indices = ops.reshape(ops.stack([rows, cats], axis=-1), (-1, 2))
            logits = ops.scatter_update(logits, indices, ops.reshape(repeat, (-1,)), reduction="add")
        elif self.use_repeat:
            batch = ops.shape(hist)[0]
            cat_ctx = ops.broadcast_to(self.cat_ctx(ops.arange(self.n_categories))[None],
                                       (batch, self.n_categories, self.context_dim))
            logits = logits + self._repeat_logits(u, hist, cat_ctx)
        return logits

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(n_categories=self.n_categories, embed_dim=self.embed_dim, hidden=self.hidden,
                      context_dim=self.context_dim, use_repeat=self.use_repeat,
                      residual_base=self.residual_base, sparse=self.sparse)
        return config


def build_model(n_categories: int, n_behaviors: int, seq_len: int, *, embed_dim: int = 32,
                encoder: str = DEFAULT_ENCODER, age_scale: float = 1.0, use_repeat: bool = True,
                dropout: float = 0.1, residual_base: bool = False, sparse: bool = True) -> keras.Model:
    """A functional Keras model: inputs :data:`INPUT_NAMES` (shapes as in
    :meth:`pipelines.features.batch.Examples.model_inputs`; sequences of any width up to
    ``seq_len``) -> probabilities [B, n_categories]. ``sparse=False`` builds the model as it was
    before the sparse repeat path (inputs :data:`LEGACY_INPUT_NAMES`, dense ``hist`` [B, V, 8])."""
    width = None if sparse else seq_len
    inputs = {name: keras.Input((width,), dtype="float32" if name == "seq_age" else "int32", name=name)
              for name in SEQ_INPUTS}
    user = SequenceEncoder(n_categories, n_behaviors, seq_len, embed_dim=embed_dim, encoder=encoder,
                           dropout=dropout, age_scale=age_scale, name="sequence_encoder")(inputs)
    scorer = MigrationScorer(n_categories, embed_dim=embed_dim, use_repeat=use_repeat, residual_base=residual_base,
                             sparse=sparse, name="migration_scorer")
    if sparse:
        inputs["hist_cat"] = keras.Input((None,), dtype="int32", name="hist_cat")
        inputs["hist_feat"] = keras.Input((None, N_HIST), dtype="float32", name="hist_feat")
        probs = scorer(user, inputs["hist_cat"], inputs["hist_feat"])
    else:
        inputs["hist"] = keras.Input((n_categories, N_HIST), dtype="float32", name="hist")
        probs = scorer(user, inputs["hist"])
    return keras.Model(inputs=inputs, outputs=probs, name="interest_migration")


def load_keras_model(path: str | Path) -> keras.Model:
    """Load a saved ``model.keras`` for inference (the custom layers are registered by importing
    this module; the training loss is not restored, so a custom loss needs no registration)."""
    return keras.saving.load_model(str(path), compile=False)


def is_sparse(model: keras.Model) -> bool:
    """True for models with the sparse history inputs; False for models saved before them."""
    return "hist_cat" in _input_names(model)


def _input_names(model: keras.Model) -> list[str]:
    return [t.name.split(":")[0] for t in model.inputs]


_THREADS: dict[str, int] = {}


def configure_threads() -> dict[str, int]:
    """Let TensorFlow use every core this process may run on (intra-op) with two concurrent ops
    (inter-op). Only possible before TensorFlow runs its first op; later calls change nothing.
    Returns the threads set (empty when TensorFlow was already running)."""
    if not _THREADS:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cores)
            tf.config.threading.set_inter_op_parallelism_threads(2)
            _THREADS.update(intra=cores, inter=2)
        except RuntimeError:  # the runtime is already initialised: keep its settings
            _THREADS.update(intra=0, inter=0)
    return {k: v for k, v in _THREADS.items() if v}


class Predictor:
    """A Keras model as a fast scoring function: one fixed-signature ``tf.function`` (traced once,
    any batch size), fed the sparse inputs of :meth:`Examples.model_inputs`. Legacy models (dense
    ``hist``) get the dense tensor built from the sparse history, one batch at a time."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.sparse = is_sparse(model)
        self.n_categories = int(model.output_shape[-1])
        encoder = model.get_layer("sequence_encoder")
        self.seq_len = int(encoder.seq_len)
        int_seq = tf.TensorSpec((None, None), tf.int32)
        spec = {name: int_seq for name in SEQ_INPUTS}
        spec["seq_age"] = tf.TensorSpec((None, None), tf.float32)
        if self.sparse:
            spec["hist_cat"] = tf.TensorSpec((None, None), tf.int32)
            spec["hist_feat"] = tf.TensorSpec((None, None, N_HIST), tf.float32)
        else:
            spec["hist"] = tf.TensorSpec((None, self.n_categories, N_HIST), tf.float32)
        self._spec = spec
        self._call = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        self._rankers: dict[int, Any] = {}

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities [B, V] (float32) of one batch, padding and OOV columns set to 0."""
        probs = self._call(self._feed(inputs)).numpy()
        probs[:, :RESERVED] = 0.0
        return probs

    def top_n(self, inputs: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most probable categories of each row of one batch, best first (ties: lower
        index first, as a stable sort), never padding or OOV: (indices int64 [B, n'], probabilities
        float32 [B, n']) with ``n' = min(n, V - 2)``. The ranking runs inside the model's graph on
        the logits, so the [B, V] matrix never leaves TensorFlow and only n sigmoids are taken per
        row (two logits whose float32 probabilities round to the same value keep the logits'
        order)."""
        n = max(0, min(int(n), self.n_categories - RESERVED))
        ranker = self._rankers.get(n)
        if ranker is None:
            encoder, scorer = self.model.get_layer("sequence_encoder"), self.model.get_layer("migration_scorer")
            history = ("hist_cat", "hist_feat") if self.sparse else ("hist",)

            def rank(x: dict[str, Any]) -> Any:
                # rank the logits (sigmoid is monotonic) and take the sigmoid of the n kept only
                logits = scorer.logits(encoder(x, training=False), *(x[name] for name in history))
                values, indices = tf.math.top_k(logits[:, RESERVED:], k=n, sorted=True)
                return tf.sigmoid(values), indices + RESERVED

            ranker = self._rankers[n] = tf.function(rank, input_signature=[self._spec])
        values, indices = ranker(self._feed(inputs))
        return indices.numpy().astype(np.int64), values.numpy()

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: inputs[name] for name in SEQ_INPUTS}
        missing = self.seq_len - feed["seq_cat"].shape[1]
        if missing > 0 and not self.sparse:  # legacy models take exactly seq_len columns: pad on the left
            feed = {k: np.pad(v, ((0, 0), (missing, 0))) for k, v in feed.items()}
        if self.sparse:
            feed["hist_cat"], feed["hist_feat"] = inputs["hist_cat"], inputs["hist_feat"]
        else:
            feed["hist"] = dense_history(inputs["hist_cat"], inputs["hist_feat"], self.n_categories)
        return feed

    def predict(self, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """:meth:`__call__` over ``inputs`` in slices of ``batch_size`` rows."""
        return predict_in_slices(self, inputs, self.n_categories, batch_size)


def dense_history(hist_cat: np.ndarray, hist_feat: np.ndarray, n_categories: int) -> np.ndarray:
    """The dense [B, V, F] history of padded sparse history inputs (padding slots write zeros)."""
    dense = np.zeros((len(hist_cat), n_categories, hist_feat.shape[-1]), np.float32)
    rows = np.broadcast_to(np.arange(len(hist_cat))[:, None], hist_cat.shape)
    dense[rows, hist_cat] = hist_feat
    return dense


def predict_proba(model: keras.Model, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Probabilities [B, V] of sparse inputs with the padding and OOV columns set to 0 (traces a
    new :class:`Predictor`: keep one when calling often)."""
    return Predictor(model).predict(inputs, batch_size)
