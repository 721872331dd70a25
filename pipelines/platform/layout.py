"""Every key in the bucket, defined once: areas (prefixes), partition folders and file names.

Stages never write a prefix or a file name by hand; they call these functions, so the storage
layout described in ``docs/design.md`` is exactly this module::

    raw/events/dt=D/<name>.{csv.zst,parquet} + <name>.meta.json landed source rows, unchanged
    quarantine/events/dt=D/{validation,preprocess,duplicates}.parquet  rows set aside, with a reason
    quarantine/events/unplaced/<name>.parquet                    rows landing could not date
    staging/validated/dt=D/valid.parquet                         validation -> preprocess hand-over
    staging/scoring/dt=D/shard-NNNNN/bucket-MMMMM.arrow          scoring input of one bucket of a shard's users
    staging/landing/<landing id>/raw/events/dt=D/<name>.*        a landing, complete before it replaces raw/
    clean/events/dt=D/part-00000.parquet                         canonical events
    reports/{landing,validation,preprocess}/...                  what each data step did
    reports/migration/dt=D/...                                   population migration flows of day D
    reports/monitoring/dt=D/metrics.{json,parquet}               day D's predictions against outcomes
    reports/monitoring_intraday/dt=D/hour=HH/metrics.{json,parquet}  an intraday partition against outcomes
    inbox/events/<file> + <file stem>.manifest.json              files waiting to be landed (ingest DAG)
    inbox/{processed,failed}/<batch>/...                         what the ingest DAG did with them
    features/<dataset id>/...                                    encoded training examples
    predictions/dt=D/run=<id>/part-NNNNN.parquet + dt=D/_SUCCESS the published contract (one run per manifest)
    reports/{retention,erasure}/<id>.json                        what a retention run / an erasure deleted
    restricted/pseudonyms/<name>.parquet                         raw id -> pseudonym tables, on request only
    mlflow-artifacts/...                                         MLflow's artifact store
"""

from __future__ import annotations

import datetime as dt
import re

# A name a user gives that becomes one key segment (a landing, a validation report id, a pseudonym
# table): letters, digits, '_', '.', '-', at most 120, not only dots ('.' and '..' would leave its prefix).
NAME = r"(?!\.+$)[A-Za-z0-9_.\-]{1,120}"


def is_name(text: str) -> bool:
    """Whether ``text`` is a :data:`NAME`."""
    return re.fullmatch(NAME, text) is not None


RAW = "raw/events"
QUARANTINE = "quarantine/events"
UNPLACED = f"{QUARANTINE}/unplaced"
CLEAN = "clean/events"
VALIDATED = "staging/validated"
LANDING_REPORTS = "reports/landing"
VALIDATION_REPORTS = "reports/validation"
PREPROCESS_REPORTS = "reports/preprocess"
FEATURES = "features"
PREDICTIONS = "predictions"
MLFLOW_ARTIFACTS = "mlflow-artifacts"
STACK_HEALTHCHECK = "_stack/healthcheck"
MIGRATION_REPORTS = "reports/migration"
MONITORING_REPORTS = "reports/monitoring"
PREDICTIONS_INTRADAY = "predictions_intraday"
MONITORING_INTRADAY_REPORTS = "reports/monitoring_intraday"
INBOX = "inbox/events"
INBOX_PROCESSED = "inbox/processed"
INBOX_FAILED = "inbox/failed"
RETRAINING_REQUESTS = "requests/retraining"

SUCCESS = "_SUCCESS"
META_SUFFIX = ".meta.json"
RAW_CSV = ".csv.zst"  # landed text: the source's CSV, zstd-compressed (a quarter of the bytes to store and move)
RAW_SUFFIXES = (RAW_CSV, ".parquet", ".csv")  # ".csv": plain text, as landed before zstd (still read)
HANDOVER_FILE = "valid.parquet"
CLEAN_PART = "part-00000.parquet"
QUARANTINE_FILES = {"validation": "validation.parquet", "preprocess": "preprocess.parquet",
                    "duplicates": "duplicates.parquet"}
PREDICTION_PART = "part-{shard:05d}.parquet"
SCORING_STAGING = "staging/scoring"
SCORING_INPUT_PART = "shard-{shard:05d}/bucket-{bucket:05d}.arrow"

# An encoded dataset folder (features/<id>/ in the bucket, or a local copy of it).
DATASET_SPLIT_PART = "{split}/part-{index:05d}.parquet"
DATASET_TEST_EVENTS = "test_events/part-00000.parquet"
DATASET_VOCAB = "vocab.json"
DATASET_METADATA = "metadata.json"
DATASET_BASELINE_STATS = "baseline_stats.json"

# reports/migration/dt=D/: flows, top flows against the week before, per-category table, chart.
MIGRATION_FILES = {"summary": "summary.json", "flows": "flows.parquet", "top_flows": "top_flows.parquet",
                   "categories": "categories.parquet", "chart": "interest_by_category.png"}
# reports/monitoring/dt=D/: written by the outcome-monitoring DAG, read by the UI plugin.
MONITORING_FILES = {"metrics": "metrics.json", "table": "metrics.parquet"}
INBOX_MANIFEST_SUFFIX = ".manifest.json"
INBOX_OUTCOMES = {"processed": INBOX_PROCESSED, "failed": INBOX_FAILED}


def partition_prefix(area: str, date: dt.date) -> str:
    """``<area>/dt=YYYY-MM-DD/`` for one of RAW, QUARANTINE, VALIDATED, CLEAN, PREDICTIONS."""
    return f"{area}/dt={date.isoformat()}/"


def area_prefix(area: str) -> str:
    """``<area>/``: everything of one area (for listings)."""
    return f"{area}/"


def raw_key(date: dt.date, name: str, suffix: str) -> str:
    """A landed raw file, ``raw/events/dt=D/<name><suffix>`` (suffix ``.csv.zst`` or ``.parquet``)."""
    return f"{partition_prefix(RAW, date)}{name}{suffix}"


def raw_meta_key(date: dt.date, name: str) -> str:
    """The sidecar of a landed raw file: ``raw/events/dt=D/<name>.meta.json``."""
    return f"{partition_prefix(RAW, date)}{name}{META_SUFFIX}"


def meta_key_of(data_key: str) -> str:
    """The sidecar key of a landed raw data key (same stem, ``.meta.json``)."""
    for suffix in RAW_SUFFIXES:
        if data_key.endswith(suffix):
            return data_key.removesuffix(suffix) + META_SUFFIX
    return data_key.rsplit(".", 1)[0] + META_SUFFIX


def unplaced_key(name: str) -> str:
    """Rows of landing ``name`` that could not be dated: ``quarantine/events/unplaced/<name>.parquet``."""
    return f"{UNPLACED}/{name}.parquet"


def landing_report_key(name: str) -> str:
    return f"{LANDING_REPORTS}/{name}.json"


def quarantine_key(date: dt.date, stage: str) -> str:
    """Rows of day D set aside by ``stage`` (``validation`` or ``preprocess``)."""
    return partition_prefix(QUARANTINE, date) + QUARANTINE_FILES[stage]


def handover_key(date: dt.date) -> str:
    """Validated rows of day D handed to preprocessing."""
    return partition_prefix(VALIDATED, date) + HANDOVER_FILE


def clean_key(date: dt.date) -> str:
    return partition_prefix(CLEAN, date) + CLEAN_PART


def validation_run_prefix(report_id: str) -> str:
    """``reports/validation/<report id>/``: the reports of every partition one validation run checked."""
    return f"{VALIDATION_REPORTS}/{report_id}/"


def validation_report_prefix(report_id: str, date: dt.date) -> str:
    """``reports/validation/<report id>/dt=D/`` (result.json, ge_result.json, summary.md)."""
    return f"{VALIDATION_REPORTS}/{report_id}/dt={date.isoformat()}/"


def preprocess_report_key(date: dt.date) -> str:
    return f"{PREPROCESS_REPORTS}/dt={date.isoformat()}.json"


def dataset_prefix(dataset_id: str) -> str:
    """``features/<dataset id>/``: one encoded dataset."""
    return f"{FEATURES}/{dataset_id}/"


def prediction_part_key(date: dt.date, shard: int) -> str:
    return partition_prefix(PREDICTIONS, date) + PREDICTION_PART.format(shard=shard)


def scoring_staging_prefix(date: dt.date) -> str:
    """``staging/scoring/dt=D/``: the per-shard scoring inputs of day D (removed after publishing)."""
    return partition_prefix(SCORING_STAGING, date)


def scoring_input_key(date: dt.date, shard: int, bucket: int) -> str:
    """The look-back events of one bucket of one shard's users for day D (Arrow IPC file):
    ``staging/scoring/dt=D/shard-NNNNN/bucket-MMMMM.arrow``."""
    return scoring_staging_prefix(date) + SCORING_INPUT_PART.format(shard=shard, bucket=bucket)


def success_key(date: dt.date) -> str:
    """The manifest of a published prediction partition (written last)."""
    return partition_prefix(PREDICTIONS, date) + SUCCESS


def mlflow_artifacts_uri(bucket: str) -> str:
    return f"s3://{bucket}/{MLFLOW_ARTIFACTS}"


def predictions_uri(bucket: str) -> str:
    """The URI of the predictions asset downstream DAGs are scheduled on."""
    return f"s3://{bucket}/{PREDICTIONS}"


def migration_report_key(date: dt.date, name: str) -> str:
    """One file of day D's migration report (``name`` a key of MIGRATION_FILES):
    ``reports/migration/dt=D/<file>``."""
    return partition_prefix(MIGRATION_REPORTS, date) + MIGRATION_FILES[name]


def monitoring_report_key(date: dt.date, name: str) -> str:
    """One file of day D's monitoring report (``metrics`` or ``table``): ``reports/monitoring/dt=D/<file>``."""
    return partition_prefix(MONITORING_REPORTS, date) + MONITORING_FILES[name]


def intraday_prefix(date: dt.date, hour: int) -> str:
    """An intraday micro-batch partition: ``predictions_intraday/dt=D/hour=HH/``."""
    return partition_prefix(PREDICTIONS_INTRADAY, date) + f"hour={hour:02d}/"


def intraday_success_key(date: dt.date, hour: int) -> str:
    """The manifest of an intraday partition (same rules as the daily ``_SUCCESS``)."""
    return intraday_prefix(date, hour) + SUCCESS


def intraday_monitoring_report_key(date: dt.date, hour: int, name: str) -> str:
    """One file (``metrics`` or ``table``) of the monitoring report of an intraday partition:
    ``reports/monitoring_intraday/dt=D/hour=HH/<file>``."""
    return partition_prefix(MONITORING_INTRADAY_REPORTS, date) + f"hour={hour:02d}/" + MONITORING_FILES[name]


def inbox_key(file_name: str) -> str:
    """A file dropped into the inbox (data file or its manifest): ``inbox/events/<file name>``."""
    return f"{INBOX}/{file_name}"


def inbox_manifest_name(data_file_name: str) -> str:
    """The manifest that announces ``data_file_name``: its name up to the first dot + ``.manifest.json``
    (``export.csv.gz`` -> ``export.manifest.json``)."""
    return data_file_name.split(".", 1)[0] + INBOX_MANIFEST_SUFFIX


def inbox_outcome_key(outcome: str, batch_id: str, file_name: str) -> str:
    """Where an inbox file goes once handled (outcome ``processed`` or ``failed``):
    ``inbox/<outcome>/<batch id>/<file name>``."""
    return f"{INBOX_OUTCOMES[outcome]}/{batch_id}/{file_name}"


def raw_events_uri(bucket: str) -> str:
    """The URI of the landed-raw-events asset the ingest DAG emits (``s3://<bucket>/raw/events``)."""
    return f"s3://{bucket}/{RAW}"


def retraining_requests_uri(bucket: str) -> str:
    """The URI of the asset a retraining request is an event of; the training DAG is scheduled on it."""
    return f"s3://{bucket}/{RETRAINING_REQUESTS}"


VALIDATION_DATA_DOCS = "data_docs.html"


def validation_data_docs_key(report_id: str, date: dt.date) -> str:
    """The Great Expectations Data Docs page of day D in validation run ``report_id``:
    ``reports/validation/<report id>/dt=D/data_docs.html``."""
    return validation_report_prefix(report_id, date) + VALIDATION_DATA_DOCS


def validation_data_docs_index_key(report_id: str) -> str:
    """The index of one validation run's Data Docs pages (a link per day):
    ``reports/validation/<report id>/data_docs.html``."""
    return validation_run_prefix(report_id) + VALIDATION_DATA_DOCS


# --- privacy (pipelines/privacy): retention and erasure audit records, the restricted pseudonym map ----
RETENTION_REPORTS = "reports/retention"
ERASURE_REPORTS = "reports/erasure"
# Raw-id -> pseudonym tables, written only on request (`pseudonym --restricted NAME`); give this prefix its own
# access policy: it is the one place in the bucket that links pseudonyms to raw ids.
RESTRICTED_PSEUDONYMS = "restricted/pseudonyms"
# A prediction part rewritten by an erasure gets a new key (``-e<tag>`` before ``.parquet``), so the old
# manifest keeps naming the old part until one manifest PUT switches readers to the new parts.
REWRITE_SUFFIX = "-e{tag}.parquet"


def retention_report_key(stamp: str) -> str:
    """The audit record of one retention run: ``reports/retention/<UTC timestamp>.json``."""
    return f"{RETENTION_REPORTS}/{stamp}.json"


def erasure_report_key(erasure_id: str) -> str:
    """The report of one erasure: ``reports/erasure/<erasure id>.json``."""
    return f"{ERASURE_REPORTS}/{erasure_id}.json"


def pseudonym_map_key(name: str) -> str:
    """A requested raw-id -> pseudonym table: ``restricted/pseudonyms/<name>.parquet``."""
    return f"{RESTRICTED_PSEUDONYMS}/{name}.parquet"


def rewritten_part_key(part_key: str, tag: str) -> str:
    """A prediction part (daily or intraday) rewritten by erasure ``tag``, beside the old one:
    ``.../part-NNNNN.parquet`` -> ``.../part-NNNNN-e<tag>.parquet`` (an earlier tag is replaced)."""
    stem = part_key.removesuffix(".parquet")
    folder, _, name = stem.rpartition("/")
    return f"{folder}/{name.split('-e', 1)[0]}" + REWRITE_SUFFIX.format(tag=tag)


# --- scoring runs (pipelines/serving/scoring): each run writes its parts under its own folder -----------
# ``predictions/dt=D/run=<run id>/part-NNNNN.parquet``: a rerun never overwrites the parts the published
# manifest lists; one manifest PUT switches readers to the new run, then older runs are removed.
PREDICTION_RUN = "run={run_id}/"


def prediction_run_prefix(date: dt.date, run_id: str) -> str:
    """The folder of one scoring run's parts of day D: ``predictions/dt=D/run=<run id>/``."""
    if not run_id or "/" in run_id:
        raise ValueError(f"invalid scoring run id {run_id!r}")
    return partition_prefix(PREDICTIONS, date) + PREDICTION_RUN.format(run_id=run_id)


def prediction_run_part_key(date: dt.date, run_id: str, shard: int) -> str:
    """One shard's part of one scoring run: ``predictions/dt=D/run=<run id>/part-NNNNN.parquet``."""
    return prediction_run_prefix(date, run_id) + PREDICTION_PART.format(shard=shard)


# --- landing (pipelines/data/landing): a landing's files are complete in staging before they replace ---
LANDING_STAGING = "staging/landing"


def landing_staging_prefix(landing_id: str) -> str:
    """``staging/landing/<landing id>/``: one landing's files before they are copied into ``raw/``."""
    if not landing_id or "/" in landing_id:
        raise ValueError(f"invalid landing id {landing_id!r}")
    return f"{LANDING_STAGING}/{landing_id}/"


def landing_staging_key(landing_id: str, raw_key_: str) -> str:
    """Where a raw key waits in staging: ``staging/landing/<landing id>/<raw key>``."""
    return landing_staging_prefix(landing_id) + raw_key_


def validation_failed_key(date: dt.date) -> str:
    """``staging/validated/dt=D/_FAILED.json``: the last validation of D failed (preprocessing refuses D
    while it exists; the next passing validation removes it)."""
    return partition_prefix(VALIDATED, date) + "_FAILED.json"
