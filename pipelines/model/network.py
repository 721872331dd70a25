"""The interest-migration network (Keras 3): two custom layers and the functional model.

Architecture (docs/model.md has the measurements behind it):

* :class:`SequenceEncoder` embeds the last L events (category + behaviour + day of week + hour +
  a learned map of the event's age + position) and encodes them with a GRU (or one self-attention
  block), then pools them (attention pooling + the most recent position) into a user vector.
* :class:`MigrationScorer` turns the user vector and the per-category history features into one
  probability per category: an *explore* path (user vector x category embedding, for every
  category) plus a *repeat* path that adds a learned logit for each category already in the
  user's history, computed from that category's counts, decayed counts, recency and share, a
  small category embedding and the user context. Output: sigmoid probabilities [B, V].

Both layers are registered for Keras serialization (package ``interest_migration``) when this
module is imported and rebuild from ``get_config``, so a saved ``model.keras`` reloads anywhere
this module is importable (:func:`load_keras_model` imports it for you).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from pipelines.features.examples import N_HIST
from pipelines.features.vocab import RESERVED

INPUT_NAMES = ("seq_cat", "seq_beh", "seq_age", "seq_dow", "seq_hour", "hist")
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
        positions = ops.arange(self.seq_len)
        x = (self.cat_emb(cat) + self.beh_emb(ops.cast(inputs["seq_beh"], "int32"))
             + self.dow_emb(ops.cast(inputs["seq_dow"], "int32")) + self.hour_emb(ops.cast(inputs["seq_hour"], "int32"))
             + self.age_proj(age_feats) + self.pos_emb(positions)[None, :, :])
        x = self.drop(x, training=training)
        if self.encoder == "attention":
            att_mask = ops.repeat(mask[:, None, :], self.seq_len, axis=1)
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
    """(user vector, history features [B, V, F]) -> probabilities [B, V]: explore + repeat paths."""

    def __init__(self, n_categories: int, embed_dim: int = 32, hidden: int = 32, context_dim: int = 8,
                 use_repeat: bool = True, residual_base: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_categories, self.embed_dim, self.hidden = n_categories, embed_dim, hidden
        self.context_dim, self.use_repeat, self.residual_base = context_dim, use_repeat, residual_base
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

    def call(self, user: Any, hist: Any) -> Any:
        u = self.user_proj(user)
        logits = self.explore(u)
        if self.use_repeat:
            hist = ops.cast(hist, "float32")
            known = ops.cast(ops.greater(hist[:, :, 0], 0.0), "float32")
            # decayed counts grow with activity: compress them like the raw count
            decays = ops.log1p(hist[:, :, 1:4])
            feats = ops.concatenate([hist[:, :, :1], decays, hist[:, :, 4:]], axis=-1)
            batch = ops.shape(hist)[0]
            cat_ctx = ops.broadcast_to(self.cat_ctx(ops.arange(self.n_categories))[None],
                                       (batch, self.n_categories, self.context_dim))
            user_ctx = ops.broadcast_to(self.user_ctx(u)[:, None, :], (batch, self.n_categories, self.context_dim))
            z = self.repeat1(ops.concatenate([feats, cat_ctx, user_ctx], axis=-1))
            repeat = ops.squeeze(self.repeat2(z), axis=-1)
            if self.residual_base:
                repeat = repeat + ops.sum(decays * self.base_weights, axis=-1)
            logits = logits + known * repeat
        return ops.sigmoid(logits)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(n_categories=self.n_categories, embed_dim=self.embed_dim, hidden=self.hidden,
                      context_dim=self.context_dim, use_repeat=self.use_repeat,
                      residual_base=self.residual_base)
        return config


def build_model(n_categories: int, n_behaviors: int, seq_len: int, *, embed_dim: int = 32,
                encoder: str = DEFAULT_ENCODER, age_scale: float = 1.0, use_repeat: bool = True,
                dropout: float = 0.1, residual_base: bool = False) -> keras.Model:
    """A functional Keras model: inputs :data:`INPUT_NAMES` (shapes as in
    :func:`pipelines.features.examples.to_model_inputs`) -> probabilities [B, n_categories]."""
    inputs = {
        "seq_cat": keras.Input((seq_len,), dtype="int32", name="seq_cat"),
        "seq_beh": keras.Input((seq_len,), dtype="int32", name="seq_beh"),
        "seq_age": keras.Input((seq_len,), dtype="float32", name="seq_age"),
        "seq_dow": keras.Input((seq_len,), dtype="int32", name="seq_dow"),
        "seq_hour": keras.Input((seq_len,), dtype="int32", name="seq_hour"),
        "hist": keras.Input((n_categories, N_HIST), dtype="float32", name="hist"),
    }
    user = SequenceEncoder(n_categories, n_behaviors, seq_len, embed_dim=embed_dim, encoder=encoder,
                           dropout=dropout, age_scale=age_scale, name="sequence_encoder")(inputs)
    probs = MigrationScorer(n_categories, embed_dim=embed_dim, use_repeat=use_repeat,
                            residual_base=residual_base, name="migration_scorer")(user, inputs["hist"])
    return keras.Model(inputs=inputs, outputs=probs, name="interest_migration")


def load_keras_model(path: str | Path) -> keras.Model:
    """Load a saved ``model.keras`` for inference (the custom layers are registered by importing
    this module; the training loss is not restored, so a custom loss needs no registration)."""
    return keras.saving.load_model(str(path), compile=False)


def predict_proba(model: keras.Model, inputs: dict[str, np.ndarray], batch_size: int = 1024) -> np.ndarray:
    """Probabilities [B, V] with the padding and OOV columns set to 0."""
    if len(inputs["seq_cat"]) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    probs = np.asarray(model.predict({k: inputs[k] for k in INPUT_NAMES}, batch_size=batch_size, verbose=0))
    probs[:, :RESERVED] = 0.0
    return probs
