"""Vocabularies of categories and behaviours: raw ids to the dense indices the model uses.

Index 0 is padding and 1 is out-of-vocabulary (every id the training window did not keep), so an
unknown id never crashes scoring: it lands in the OOV bucket and is never returned as a prediction.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts import BEHAVIORS

PAD = 0
OOV = 1
RESERVED = 2  # indices 0 (padding) and 1 (out-of-vocabulary) come before the real ids


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Category and behaviour vocabularies: index 0 padding, 1 out-of-vocabulary, then the ids."""

    categories: tuple[str, ...]
    behaviors: tuple[str, ...]

    @property
    def n_categories(self) -> int:
        return len(self.categories) + RESERVED

    @property
    def n_behaviors(self) -> int:
        return len(self.behaviors) + RESERVED

    @functools.cached_property
    def _category_set(self) -> pa.Array:
        return pa.array(self.categories, pa.string())

    @functools.cached_property
    def _behavior_set(self) -> pa.Array:
        return pa.array(self.behaviors, pa.string())

    def category_index(self, ids: Sequence[str] | np.ndarray | pa.Array) -> np.ndarray:
        """Indices (int32) of raw category ids; unknown ids map to :data:`OOV` (never raises)."""
        return _index(self._category_set, ids)

    def behavior_index(self, ids: Sequence[str] | np.ndarray | pa.Array) -> np.ndarray:
        """Indices (int32) of raw behaviours; unknown ones map to :data:`OOV`."""
        return _index(self._behavior_set, ids)

    def category_ids(self) -> np.ndarray:
        """Raw id per index (padding and OOV as empty strings), for mapping scores back."""
        return np.array(["", ""] + list(self.categories), dtype=object)

    def category_id_array(self) -> pa.Array:
        """:meth:`category_ids` as an Arrow string array (index i = column i of a score matrix)."""
        return pa.concat_arrays([pa.array(["", ""], pa.string()), self._category_set])

    def to_dict(self) -> dict[str, Any]:
        return {"categories": list(self.categories), "behaviors": list(self.behaviors)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        return cls(tuple(str(c) for c in data["categories"]), tuple(str(b) for b in data["behaviors"]))


def _index(known: pa.Array, ids: Sequence[str] | np.ndarray | pa.Array) -> np.ndarray:
    if not isinstance(ids, pa.Array | pa.ChunkedArray):
        ids = pa.array([str(v) for v in ids], pa.string())
    elif not pa.types.is_string(ids.type):
        ids = pc.cast(ids, pa.string())
    found = pc.fill_null(pc.index_in(ids, value_set=known), -1).to_numpy(zero_copy_only=False)
    return np.where(found >= 0, found + RESERVED, OOV).astype(np.int32)


def build_vocab(categories: Iterable[str], min_count: int, behaviors: Iterable[str] = ()) -> Vocab:
    """Vocabulary of the categories seen at least ``min_count`` times (most frequent first, then id),
    and of the behaviours (the canonical :data:`BEHAVIORS` first, then any others seen)."""
    values, counts = np.unique(np.asarray(list(categories), dtype=object).astype(str), return_counts=True)
    order = sorted(((-int(n), str(v)) for v, n in zip(values, counts, strict=True) if n >= min_count))
    seen = [b for b in dict.fromkeys(str(b) for b in behaviors) if b not in BEHAVIORS]
    return Vocab(tuple(v for _, v in order), tuple(BEHAVIORS) + tuple(sorted(seen)))
