"""
### Example consumer of interest-migration predictions

Not deployed with the product: it lives outside `dags/`, so no Airflow of ours parses it. Copy it
into the DAGs folder of the team that consumes the predictions (it needs only Airflow, pyarrow and
pandas, not this repository's package) and set `PREDICTIONS_BUCKET`, `S3_ENDPOINT_URL` and the
usual `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` in its environment.

**Runs** on every event of the asset `s3://<bucket>/predictions`, which the scoring DAG emits when
it publishes a day (extra: `as_of_date`, `model_version`).

**Does**: reads the published partition of each event the way the contract says (the `_SUCCESS`
manifest first, then only the files it lists; schemas in `schemas/`) and logs how many users
are migrating and the most common emerging categories.

**Produces**: nothing but a log line; replace `summarize` with the team's own use.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from typing import Any

from airflow.sdk import Asset, dag, get_current_context, task

BUCKET = os.environ.get("PREDICTIONS_BUCKET", "interest-migration")
PREDICTIONS = Asset(f"s3://{BUCKET}/predictions")
SUPPORTED_MAJOR = "1"


def s3_filesystem(endpoint_url: str) -> Any:
    """A pyarrow S3 filesystem for an S3-compatible endpoint (credentials from the environment)."""
    from pyarrow import fs

    scheme, _, host = endpoint_url.partition("://")
    return fs.S3FileSystem(endpoint_override=host, scheme=scheme, region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                           access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                           secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))


def read_partition(as_of_date: str, *, bucket: str, endpoint_url: str) -> tuple[dict[str, Any], Any]:
    """(manifest, pandas DataFrame) of ``predictions/dt=<as_of_date>/``; raises FileNotFoundError
    when the day is not published and ValueError for a contract major version this reader does not know."""
    import pyarrow.parquet as pq

    filesystem = s3_filesystem(endpoint_url)
    with filesystem.open_input_stream(f"{bucket}/predictions/dt={as_of_date}/_SUCCESS") as stream:
        manifest = json.loads(stream.read())
    version = str(manifest.get("schema_version", SUPPORTED_MAJOR + ".0"))
    if version.split(".")[0] != SUPPORTED_MAJOR:
        raise ValueError(f"predictions for {as_of_date} use contract {version}; this reader knows {SUPPORTED_MAJOR}.x")
    table = pq.read_table([f"{bucket}/{key}" for key in manifest["files"]], filesystem=filesystem)
    return manifest, table.to_pandas()


def summarize(frame: Any, top: int = 5) -> dict[str, Any]:
    """Users, users whose best-ranked category is new to them, and the most common emerging categories."""
    emerging = Counter(c for categories in frame["emerging_categories"] for c in categories)
    moving = sum(1 for predicted, new in zip(frame["predicted_categories"], frame["emerging_categories"], strict=True)
                 if len(predicted) and predicted[0] in set(new))
    return {"users": len(frame), "migrating_users": moving, "top_emerging": emerging.most_common(top)}


@dag(
    dag_id="interest_migration_consumer_example",
    schedule=[PREDICTIONS],
    start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    tags=["interest-migration", "example"],
    doc_md=__doc__,
)
def interest_migration_consumer_example():
    @task
    def use_predictions() -> list[dict[str, Any]]:
        """Read every partition the triggering events announce and summarize it."""
        endpoint = os.environ.get("S3_ENDPOINT_URL", "http://127.0.0.1:8333")
        results = []
        for event in get_current_context()["triggering_asset_events"][PREDICTIONS]:
            manifest, frame = read_partition(event.extra["as_of_date"], bucket=BUCKET, endpoint_url=endpoint)
            results.append({"as_of_date": manifest["as_of_date"], "model_version": manifest["model_version"],
                            **summarize(frame)})
        return results

    use_predictions()


interest_migration_consumer_example()
