"""The product's network in numpy: scoring without TensorFlow.

A scoring process spends seconds importing TensorFlow and Keras (3.4-4.1 s on the 2-core
benchmark machine) before it scores a single user, and the model itself is small: embeddings, a
GRU of 32 units, a few dense layers. :class:`NumpyNetwork` reads the weights of a saved
``model.keras`` (a zip holding ``config.json`` and ``model.weights.h5``) with h5py and runs the
same forward pass as :mod:`pipelines.model.network` in numpy, with the interface of its
:class:`~pipelines.model.network.Predictor` (``sparse``, ``n_categories``, ``seq_len``,
``__call__``, ``top_n``, ``predict``). The same weights give the same probabilities to float32
tolerance (``tests/test_inference.py`` compares both on trained models).

Supported: the default architecture (``encoder="gru"``) with the sparse repeat path, with or
without ``use_repeat`` and ``residual_base``. :func:`load_numpy_network` raises
:class:`UnsupportedModel` for anything else (the attention encoder, models saved before the sparse
path, a config it does not know), and the caller loads the Keras model instead, so every saved
version still scores.

Semantics kept from Keras: the GRU is Keras' default cell (``reset_after=True``, gates z, r, h in
that order, tanh and sigmoid); a masked step (category 0, padding) keeps the state and repeats the
previous output (``zero_output_for_mask=False``); ``gelu`` is the exact one,
0.5 x (1 + erf(x / sqrt 2)). Dropout is off at inference.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.features.vocab import RESERVED

_ENCODER = "sequence_encoder"
_SCORER = "migration_scorer"
_SQRT_HALF = np.float32(1.0 / math.sqrt(2.0))


class UnsupportedModel(ValueError):
    """The saved model is not one :class:`NumpyNetwork` can run (the Keras model must score it)."""


def erf(x: np.ndarray) -> np.ndarray:
    """The error function in float32 (Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7,
    plus float32 rounding), elementwise."""
    x = np.asarray(x, np.float32)
    t = np.abs(x)
    t *= np.float32(0.3275911)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    decay = np.square(x)
    np.negative(decay, out=decay)
    np.exp(decay, out=decay)
    poly *= decay
    np.subtract(np.float32(1.0), poly, out=poly)
    return np.copysign(poly, x, out=poly)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, as Keras' ``activation="gelu"``."""
    y = erf(x * _SQRT_HALF)
    y += np.float32(1.0)
    y *= x
    y *= np.float32(0.5)
    return y


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function without overflow: 0.5 (1 + tanh(x / 2))."""
    y = np.multiply(x, np.float32(0.5))
    np.tanh(y, out=y)
    y += np.float32(1.0)
    y *= np.float32(0.5)
    return y


def _layer_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    for layer in config.get("config", {}).get("layers", []):
        if layer.get("name") == name:
            return layer.get("config", {})
    raise UnsupportedModel(f"the model has no layer {name!r}")


def _read_weights(handle: Any) -> dict[str, np.ndarray]:
    """Every variable of a Keras 3 weights file, by path (``layers/<layer>/<sublayer>/vars/<i>``)."""
    import h5py

    weights: dict[str, np.ndarray] = {}
    with h5py.File(handle, "r") as f:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and name.startswith("layers/"):
                weights[name] = np.asarray(obj[()], np.float32)
        f.visititems(visit)
    return weights


class NumpyNetwork:
    """A saved model's forward pass in numpy (see the module doc); build it with
    :func:`load_numpy_network`."""

    sparse = True
    thread_safe = True  # nothing changes after loading: batches may run in several threads at once

    def __init__(self, config: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        enc, sc = _layer_config(config, _ENCODER), _layer_config(config, _SCORER)
        if enc.get("encoder", "gru") != "gru":
            raise UnsupportedModel(f"encoder {enc.get('encoder')!r} (numpy runs the GRU encoder only)")
        if not sc.get("sparse", False):
            raise UnsupportedModel("a model saved before the sparse repeat path (dense history input)")

        def var(path: str, i: int = 0) -> np.ndarray:
            key = f"layers/{path}/vars/{i}"
            if key not in weights:
                raise UnsupportedModel(f"the weights file has no {key}")
            return weights[key]

        self.seq_len = int(enc["seq_len"])
        self.n_categories = int(sc["n_categories"])
        self.age_scale = np.float32(enc.get("age_scale", 1.0))
        e = _ENCODER
        self.cat_emb, self.beh_emb = var(f"{e}/cat_emb"), var(f"{e}/beh_emb")
        self.dow_emb, self.hour_emb, self.pos_emb = var(f"{e}/dow_emb"), var(f"{e}/hour_emb"), var(f"{e}/pos_emb")
        self.age_w, self.age_b = var(f"{e}/age_proj"), var(f"{e}/age_proj", 1)
        self.gru_kernel, self.gru_recurrent = var(f"{e}/gru/cell"), var(f"{e}/gru/cell", 1)
        bias = var(f"{e}/gru/cell", 2)
        self.gru_bias_in, self.gru_bias_rec = bias[0], bias[1]
        self.pool_w, self.pool_b = var(f"{e}/pool_score")[:, 0], var(f"{e}/pool_score", 1)[0]
        s = _SCORER
        self.proj_w, self.proj_b = var(f"{s}/user_proj"), var(f"{s}/user_proj", 1)
        self.explore_w, self.explore_b = var(f"{s}/explore"), var(f"{s}/explore", 1)
        self.use_repeat = bool(sc.get("use_repeat", True))
        self.base_weights = var(s) if self.use_repeat and sc.get("residual_base") else None
        if self.use_repeat:
            ctx = var(f"{s}/cat_ctx")
            self.user_ctx_w, self.user_ctx_b = var(f"{s}/user_ctx"), var(f"{s}/user_ctx", 1)
            w1 = var(f"{s}/repeat1")
            n_feat, n_ctx = w1.shape[0] - 2 * ctx.shape[1], ctx.shape[1]
            # the hidden layer's input is [history features, category context, user context]: split
            # its kernel so the category part is one table [V, hidden] and the user part one row per user
            self.rep_feat_w = w1[:n_feat]
            self.rep_cat_table = ctx @ w1[n_feat:n_feat + n_ctx] + var(f"{s}/repeat1", 1)
            self.rep_user_w = self.user_ctx_w @ w1[n_feat + n_ctx:]
            self.rep_user_b = self.user_ctx_b @ w1[n_feat + n_ctx:]
            self.rep_out_w, self.rep_out_b = var(f"{s}/repeat2")[:, 0], var(f"{s}/repeat2", 1)[0]
        units = self.gru_recurrent.shape[0]
        if len(self.dow_emb) != 7 or len(self.hour_emb) != 24:
            raise UnsupportedModel("day-of-week and hour embeddings of 7 and 24 rows expected")
        if self.gru_kernel.shape != (self.cat_emb.shape[1], 3 * units) or self.explore_w.shape[1] != self.n_categories:
            raise UnsupportedModel("weight shapes do not match the architecture")
        self._fold_input_projection()
        # the explore kernel with its bias as the last row, from category 0 and from the first real one
        self._explore = {first: np.ascontiguousarray(np.concatenate([self.explore_w[:, first:],
                                                                     self.explore_b[None, first:]], axis=0))
                         for first in (0, RESERVED)}

    # -- the forward pass -------------------------------------------------------------------------

    def _fold_input_projection(self) -> None:
        """Fold the GRU's input kernel into the lookup tables: the input projection of an event,
        (category + behaviour + day + hour + age + position embeddings) x kernel + bias, is a sum
        of rows of small [*, 3 x units] tables, so no [W, B, d] tensor is built and no large
        matmul runs. Behaviour, day and hour share one table of their combinations."""
        kernel = self.gru_kernel
        self._in_cat = self.cat_emb @ kernel
        combo = (self.beh_emb[:, None, None, :] + self.dow_emb[None, :, None, :] + self.hour_emb[None, None, :, :])
        self._in_combo = combo.reshape(-1, combo.shape[-1]) @ kernel
        self._in_pos = self.pos_emb @ kernel + (self.age_b @ kernel + self.gru_bias_in)
        self._in_age = self.age_w @ kernel

    def user_vectors(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The sequence encoder: [B, 2 x units] (attention-pooled outputs, then the last one)."""
        cat = np.asarray(inputs["seq_cat"])
        n, width = cat.shape
        units = self.gru_recurrent.shape[0]
        if n == 0 or width == 0:
            return np.zeros((n, 2 * units), np.float32)
        if width > self.seq_len:
            raise ValueError(f"sequences of {width} events; the model takes at most {self.seq_len}")
        mask = cat > 0
        lengths = mask.sum(axis=1)
        right_aligned = bool((mask[:, 1:] >= mask[:, :-1]).all())
        # rows by length, longest first: at step t the rows that have started are a prefix
        order = np.argsort(-lengths, kind="stable")
        cat_t = np.ascontiguousarray(cat[order].T)
        combo_t = ((np.asarray(inputs["seq_beh"])[order] * len(self.dow_emb) + np.asarray(inputs["seq_dow"])[order])
                   * len(self.hour_emb) + np.asarray(inputs["seq_hour"])[order]).T  # rows of _in_combo
        age = np.asarray(inputs["seq_age"], np.float32)[order].T
        scaled = age / self.age_scale
        age_feats = np.stack([np.log1p(age), np.log1p(scaled), np.exp(-scaled)], axis=-1)  # [W, B, 3]
        mask_t = mask[order].T
        # right-aligned and longest first, the rows active at step t are exactly the first ones
        started = mask_t.sum(axis=1) if right_aligned else np.full(width, n)
        outputs = np.zeros((width, n, units), np.float32)
        h = np.zeros((n, units), np.float32)
        two = 2 * units
        offset = self.seq_len - width
        for t in range(width):
            a = int(started[t])
            if a == 0:  # leading padding of every row: the state stays at its start (zeros)
                continue
            g = self._in_cat[cat_t[t, :a]]
            g += self._in_combo[combo_t[t, :a]]
            g += age_feats[t, :a] @ self._in_age
            g += self._in_pos[offset + t]
            hp = h[:a]
            rec = hp @ self.gru_recurrent
            rec += self.gru_bias_rec
            zr = g[:, :two]
            zr += rec[:, :two]
            zr = sigmoid(zr)
            cand = rec[:, two:]
            cand *= zr[:, units:]
            cand += g[:, two:]
            np.tanh(cand, out=cand)
            new = hp - cand
            new *= zr[:, :units]
            new += cand
            if right_aligned:
                h[:a] = new
            else:
                h = np.where(mask_t[t][:, None], new, h)
            outputs[t] = h
        fmask = mask_t.astype(np.float32)
        logits = outputs @ self.pool_w + self.pool_b + (fmask - 1.0) * np.float32(1e9)  # [W, B]
        logits -= logits.max(axis=0, keepdims=True)
        weights = np.exp(logits)
        weights = weights / weights.sum(axis=0, keepdims=True) * fmask
        pooled = np.einsum("wb,wbd->bd", weights, outputs)
        last = outputs[-1] * fmask[-1][:, None]
        vectors = np.empty((n, 2 * units), np.float32)
        vectors[order] = np.concatenate([pooled, last], axis=-1)
        return vectors

    def logits(self, inputs: dict[str, np.ndarray], first: int = 0) -> np.ndarray:
        """The logits [B, V - first] of categories ``first``.. (0, or RESERVED to leave out padding
        and OOV): the explore path plus the repeat path at each row's history categories."""
        u = gelu(self.user_vectors(inputs) @ self.proj_w + self.proj_b)
        explore = self._explore[first]
        logits = np.concatenate([u, np.ones((len(u), 1), np.float32)], axis=1) @ explore  # bias as the last row
        if not self.use_repeat or len(u) == 0:
            return logits
        cats = np.asarray(inputs["hist_cat"], np.int64)
        hist = np.asarray(inputs["hist_feat"], np.float32)
        known = (hist[:, :, 0] > 0) & (cats >= first)
        rows, slots = np.nonzero(known)  # the repeat path runs on the history slots only, not the padding
        slot_feat = hist[rows, slots]
        decays = np.log1p(slot_feat[:, 1:4])
        feats = np.concatenate([slot_feat[:, :1], decays, slot_feat[:, 4:]], axis=-1)
        user = u @ self.rep_user_w + self.rep_user_b  # [B, hidden]
        hidden = feats @ self.rep_feat_w
        hidden += self.rep_cat_table[cats[rows, slots]]
        hidden += user[rows]
        repeat = gelu(hidden) @ self.rep_out_w + self.rep_out_b
        if self.base_weights is not None:
            repeat += decays @ self.base_weights
        logits[rows, cats[rows, slots] - first] += repeat  # a row's history categories are distinct
        return logits

    # -- the Predictor interface ------------------------------------------------------------------

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities [B, V] (float32) of one batch, padding and OOV columns set to 0."""
        probs = sigmoid(self.logits(inputs))
        probs[:, :RESERVED] = 0.0
        return probs

    def top_n(self, inputs: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most probable categories of each row, best first (ties: lower index first),
        never padding or OOV: (indices int64 [B, n'], probabilities float32 [B, n']),
        ``n' = min(n, V - 2)``; as :meth:`pipelines.model.network.Predictor.top_n`."""
        n = max(0, min(int(n), self.n_categories - RESERVED))
        rows = len(inputs["seq_cat"])
        if n == 0 or rows == 0:
            return np.zeros((rows, n), np.int64), np.zeros((rows, n), np.float32)
        logits = self.logits(inputs, first=RESERVED)
        width = logits.shape[1]
        if n < width:
            # the n-th largest logit of each row, then every column at or above it: exactly n per row
            # unless there are ties at the cut (all kept here, the index breaks them below)
            kth = np.partition(logits, width - n, axis=1)[:, width - n:width - n + 1]
            cand_rows, cand_cols = np.nonzero(logits >= kth)
        else:
            cand_rows, cand_cols = np.divmod(np.arange(logits.size), width)
        values = logits[cand_rows, cand_cols]
        if not np.isfinite(values).all():  # NaN sorts last in a partition: a broken model shows up here
            raise ValueError("the model produced non-finite logits (NaN or infinity): its weights are broken")
        if len(values) == rows * n:  # n per row, each row's columns ascending: sort within the rows
            values, cand_cols = values.reshape(rows, n), cand_cols.reshape(rows, n)
            order = np.argsort(-values, axis=1, kind="stable")  # stable: ties keep the lower index first
            indices = np.take_along_axis(cand_cols, order, 1) + RESERVED
            return indices.astype(np.int64, copy=False), sigmoid(np.take_along_axis(values, order, 1))
        order = np.lexsort((cand_cols, -values, cand_rows))
        cand_rows, cand_cols, values = cand_rows[order], cand_cols[order], values[order]
        starts = np.searchsorted(cand_rows, np.arange(rows))
        rank = np.arange(len(cand_rows)) - starts[cand_rows]
        keep = rank < n
        indices = np.empty((rows, n), np.int64)
        top = np.empty((rows, n), np.float32)
        indices[cand_rows[keep], rank[keep]] = cand_cols[keep] + RESERVED
        top[cand_rows[keep], rank[keep]] = sigmoid(values[keep])
        return indices, top

    def predict(self, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """:meth:`__call__` over ``inputs`` in slices of ``batch_size`` rows."""
        return predict_in_slices(self, inputs, self.n_categories, batch_size)


def predict_in_slices(call: Any, inputs: dict[str, np.ndarray], n_categories: int, batch_size: int) -> np.ndarray:
    """``call`` (inputs -> probabilities [B, V]) over ``inputs`` in slices of ``batch_size`` rows,
    concatenated; [0, V] for no rows. The ``predict`` of both networks (numpy and Keras)."""
    n = len(inputs["seq_cat"])
    if n == 0:
        return np.zeros((0, n_categories), np.float32)
    return np.concatenate([call({k: v[lo:lo + batch_size] for k, v in inputs.items()})
                           for lo in range(0, n, batch_size)])


def load_numpy_network(path: str | Path) -> NumpyNetwork:
    """The numpy forward pass of a saved ``model.keras``; raises :class:`UnsupportedModel` when
    the architecture is not one it runs (see the module doc), ValueError when the file is not a
    Keras 3 archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            weights = _read_weights(io.BytesIO(archive.read("model.weights.h5")))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path}: not a Keras 3 model archive (config.json + model.weights.h5): {exc}") from exc
    return NumpyNetwork(config, weights)
