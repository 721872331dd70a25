"""Examples: one user at one as-of time T; their schema and the settings that shape them.

An example's features come only from the user's events in ``[T - lookback, T)``: the last
``seq_len`` events (category, behaviour, age in days, day of week, hour) and a per-category
history summary (counts, decayed counts at three half-lives, recency, first touch, share, "was the
last event") of each of its K history categories. Its label is the set of categories the user
touches in ``[T, T + horizon)``. The encoder is :mod:`pipelines.features.batch`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa

from pipelines.config import Settings

# Half-lives of the decayed counts, in units of the horizon (scale-free: days for Taobao, months for Ciao).
DECAY_HALF_LIVES = (1.0 / 3.0, 1.0, 4.0)
HIST_FEATURES = ("log_count", "decay_short", "decay_mid", "decay_long", "log_last_age", "log_first_age",
                 "share", "is_last")
N_HIST = len(HIST_FEATURES)
EXAMPLE_SCHEMA = pa.schema([
    pa.field("user_id", pa.string()),
    pa.field("asof", pa.timestamp("us", tz="UTC")),
    pa.field("seq_cat", pa.list_(pa.int32())),
    pa.field("seq_beh", pa.list_(pa.int32())),
    pa.field("seq_age", pa.list_(pa.float32())),
    pa.field("seq_dow", pa.list_(pa.int32())),
    pa.field("seq_hour", pa.list_(pa.int32())),
    pa.field("hist_cat", pa.list_(pa.int32())),
    pa.field("hist_feat", pa.list_(pa.float32())),
    pa.field("label", pa.list_(pa.int32())),
])


@dataclasses.dataclass(frozen=True)
class EncodingConfig:
    """What shapes an example: horizon and look-back (days) and the sequence length."""

    horizon_days: float
    lookback_days: float
    seq_len: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EncodingConfig:
        return cls(float(settings.horizon_days), float(settings.lookback_days), int(settings.seq_len))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
