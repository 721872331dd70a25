"""Public schemas: the canonical event (after adapters) and the prediction row (docs/design.md).

These are contracts other systems read; change them only in the open (README, "Contracts").
"""

from __future__ import annotations

import pyarrow as pa

# Canonical event: what every adapter produces and every later step reads.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category_id", pa.string(), nullable=False),
        pa.field("behavior", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("value", pa.float64(), nullable=True),
    ]
)
# The columns a model's scoring contract reads (pyfunc ``predict`` input): the event without value.
MODEL_INPUT_COLUMNS = ["user_id", "item_id", "category_id", "behavior", "ts"]

# Behaviours the product knows; adapters map source codes onto these.
BEHAVIORS = ("view", "cart", "fav", "buy", "review")
# What a behaviour map may send a source code to instead (``remove_from_cart=ignore``): its rows are
# set aside at validation as ``ignored_behavior``, out of scope like rows outside the window (not
# counted as bad rows).
IGNORE_BEHAVIOR = "ignore"

# Prediction row: the public contract of predictions/dt=D/part-*.parquet.
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("as_of_date", pa.date32(), nullable=False),
        pa.field("horizon_days", pa.int32(), nullable=False),
        pa.field("predicted_categories", pa.list_(pa.string()), nullable=False),
        pa.field("predicted_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("current_categories", pa.list_(pa.string()), nullable=False),
        pa.field("current_strengths", pa.list_(pa.float32()), nullable=False),
        pa.field("migration_score", pa.float32(), nullable=False),
        pa.field("emerging_categories", pa.list_(pa.string()), nullable=False),
        pa.field("fading_categories", pa.list_(pa.string()), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
    ]
)
PREDICTION_COLUMNS = [f.name for f in PREDICTION_SCHEMA]
# Version of the published contract (rows and manifest), written into every manifest as
# ``schema_version``; schemas/*.schema.json carry the same value as ``x-schema-version``. A new
# column is a minor bump; removing or changing one is a major bump.
PREDICTION_CONTRACT_VERSION = "1.0"
