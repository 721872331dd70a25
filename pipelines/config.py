"""One typed settings object for the whole package.

Every setting comes from an environment variable with the prefix ``IM_`` (for example
``IM_HORIZON_DAYS=3``), optionally from a YAML/JSON file named by ``IM_CONFIG_FILE`` (keys are
the field names, lower case); the environment wins over the file, the file over the defaults.
Values are parsed to their real types and validated once, at start; a bad value raises
:class:`ConfigError` naming the variable, the value and what was expected.

Credentials are *not* settings: boto3 reads ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
from the environment itself, so they never sit in this object, in its repr, or in a log line.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.platform.dates import is_time_zone

ENV_PREFIX = "IM_"
CONFIG_FILE_VAR = "IM_CONFIG_FILE"
DEFAULT_BUCKET = "interest-migration"


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _field(default: Any, doc: str, *, check: typing.Callable[[Any], bool] | None = None,
           rule: str = "") -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc, "check": check, "rule": rule})


_MONITOR_METRICS = ("ndcg_at_5", "recall_at_5", "precision_at_5", "hit_rate_at_5", "explore_recall_at_3")


def _positive(x: Any) -> bool:
    return x > 0


def _port(x: Any) -> bool:
    return 1 <= x <= 65535


def _share(x: Any) -> bool:
    return 0.0 <= x <= 1.0


def _hhmm(x: Any) -> bool:
    hours, _, minutes = str(x).partition(":")
    return len(hours) == 2 and len(minutes) == 2 and hours.isdigit() and minutes.isdigit() and \
        int(hours) < 24 and int(minutes) < 60


@dataclasses.dataclass(frozen=True)
class Settings:
    """All knobs of the product. See README "Configuration" for the table of variables."""

    # --- services -------------------------------------------------------------------------
    s3_endpoint_url: str = _field("http://127.0.0.1:8333", "S3 API endpoint (SeaweedFS, MinIO, AWS)")
    s3_region: str = _field("us-east-1", "S3 region name handed to boto3")
    bucket: str = _field(DEFAULT_BUCKET, "the one bucket holding raw/clean/predictions/...")
    mlflow_tracking_uri: str = _field("http://127.0.0.1:5000", "MLflow tracking server URI")
    mlflow_experiment: str = _field("interest_migration", "MLflow experiment of the training runs")
    model_name: str = _field("interest_migration", "registered model name")
    mlflow_timeout_s: int = _field(20, "seconds one MLflow request may take (sets MLFLOW_HTTP_REQUEST_TIMEOUT)",
                                   check=_positive, rule="> 0")
    mlflow_retries: int = _field(2, "retries of a failed MLflow request before a task fails "
                                 "(sets MLFLOW_HTTP_REQUEST_MAX_RETRIES; backoff 1 s, 2 s, 4 s, ...)",
                                 check=lambda x: x >= 0, rule=">= 0")
    mlflow_ui_url: str = _field("", "MLflow UI address shown in Airflow's navigation (empty: the tracking URI)")
    code_version: str = _field("", "code version recorded on training runs (empty: the git commit of this "
                               "checkout); images and CI set it")
    work_dir: Path = _field(Path(".local/work"), "local scratch folder for a task's temporary files")

    # --- data window and validation --------------------------------------------------------
    window_start: dt.date | None = _field(None, "first event date accepted (UTC); empty = no bound")
    window_end: dt.date | None = _field(None, "last event date accepted (UTC); empty = no bound")
    window_timezone: str = _field("UTC", "time zone of the window's day bounds (e.g. Asia/Shanghai for the "
                                  "official Taobao window); partitions stay UTC dates",
                                  check=is_time_zone, rule="an IANA time zone name such as Asia/Shanghai")
    max_bad_row_share: float = _field(0.05, "batch fails when quarantined/total exceeds this",
                                      check=_share, rule="a share in [0, 1]")
    max_duplicate_share: float = _field(0.5, "batch fails when exact duplicates/total exceeds this",
                                        check=_share, rule="a share in [0, 1]")
    min_volume_ratio: float = _field(0.2, "batch fails when a partition has fewer rows than this times "
                                     "the median of recent partitions", check=_share, rule="a share in [0, 1]")
    crawler_max_events_per_hour: int = _field(2000, "a user above this many events in one hour is set "
                                              "aside as crawler-like", check=_positive, rule="> 0")
    crawler_min_events_for_diversity: int = _field(500, "users with at least this many events in a day "
                                                   "are checked for item diversity", check=_positive, rule="> 0")
    crawler_max_item_diversity: float = _field(0.98, "distinct items/events above this (with the count "
                                               "above) marks a crawler", check=_share, rule="a share in [0, 1]")
    share_checks_min_rows: int = _field(200, "bad-row and duplicate shares fail a batch only for partitions "
                                        "with at least this many rows (tiny partitions are quarantined row by "
                                        "row instead)", check=_positive, rule="> 0")
    volume_lookback_partitions: int = _field(7, "recent raw partitions whose median volume the volume check "
                                             "compares against (needs at least 3)", check=_positive, rule="> 0")
    ge_row_sample_rows: int = _field(1000, "evenly spaced rows per partition checked by the Great "
                                     "Expectations row-sample suite (recorded, not a gate); 0 = off",
                                     check=lambda x: x >= 0, rule=">= 0")
    expectation_suites_dir: Path | None = _field(
        None, "folder of your own Great Expectations suite files (partition_profile.json, row_sample.json); "
        "a file there replaces the shipped suite of that name; empty = the suites in pipelines/data/suites/",
        check=lambda p: p is None or p.is_dir(), rule="an existing folder")
    near_duplicate_seconds: int = _field(1, "same user/item/category/behaviour within this many seconds of "
                                         "the previous one is a near duplicate (0 = exact only)",
                                         check=lambda x: x >= 0, rule=">= 0")
    burst_max_events_per_second: int = _field(20, "a user's events in one second above this are an "
                                              "impossible burst and set aside", check=_positive, rule="> 0")

    # --- examples and model -----------------------------------------------------------------
    horizon_days: int = _field(3, "label window [T, T+H) length in days", check=_positive, rule="> 0")
    lookback_days: int = _field(30, "history used for features and for 'active user'", check=_positive,
                                rule="> 0")
    seq_len: int = _field(50, "last L events of a user fed to the model", check=_positive, rule="> 0")
    asof_step_days: int = _field(1, "spacing of rolling as-of times for training examples",
                                 check=_positive, rule="> 0")
    min_category_count: int = _field(1, "categories seen fewer times go to the OOV bucket",
                                     check=_positive, rule="> 0")
    top_k: int = _field(10, "length of predicted_categories", check=_positive, rule="> 0")
    eval_ks: tuple[int, ...] = _field((5, 10, 20), "k values for ranked metrics (comma separated)")
    epochs: int = _field(20, "maximum training epochs (early stopping ends sooner)", check=_positive,
                         rule="> 0")
    batch_size: int = _field(256, "training batch size", check=_positive, rule="> 0")
    seed: int = _field(42, "seed for every random choice")
    eval_asof_step_days: int = _field(1, "spacing of the validation and test as-of times", check=_positive,
                                      rule="> 0")
    validation_asof_count: int = _field(2, "number of validation as-of times (early stopping)",
                                        check=_positive, rule="> 0")
    test_asof_count: int = _field(2, "number of held-out test as-of times (evaluation)", check=_positive,
                                  rule="> 0")
    embed_dim: int = _field(32, "embedding width of the model", check=_positive, rule="> 0")
    sequence_encoder: str = _field("gru", "sequence encoder of the model: gru | attention (gru: same quality, 3x faster on CPU)")
    patience: int = _field(3, "early-stopping patience in epochs", check=_positive, rule="> 0")
    min_epochs: int = _field(6, "early stopping never ends training before this many epochs (validation curves "
                             "often dip for a few epochs after the first)", check=_positive, rule="> 0")
    learning_rate: float = _field(0.003, "Adam learning rate", check=_positive, rule="> 0")

    # --- registry gate ----------------------------------------------------------------------
    gate_metric: str = _field("ndcg_at_5", "metric that decides promotion")
    gate_margin_vs_champion: float = _field(0.0, "challenger must beat champion by this (absolute)")
    gate_margin_vs_baselines: float = _field(0.0, "challenger must beat every baseline by this (absolute)")

    # --- scoring ----------------------------------------------------------------------------
    scoring_start_date: dt.date = _field(dt.date(2000, 1, 1), "start date of the daily scoring schedule "
                                         "(read when the DAG file is parsed); backfills reach any later day")
    scoring_catchup: bool = _field(False, "let the scheduler create every missed daily scoring run since the "
                                   "start date")
    score_quiet_days: bool = _field(False, "score a day that has no events at all (nothing landed for it) from its "
                                    "look-back window alone: for a sparse log whose quiet days are real; by "
                                    "default such a day is refused, since its data is usually just late")
    scoring_batch_users: int = _field(5000, "users scored per model call", check=_positive, rule="> 0")
    scoring_runtime: str = _field("numpy", "what runs this product's models when scoring: numpy (no TensorFlow "
                                  "import; the Keras model is used for any architecture numpy does not run) "
                                  "| keras", check=lambda x: x in ("numpy", "keras"), rule="numpy or keras")
    scoring_shards: int = _field(2, "mapped scoring tasks per day", check=_positive, rule="> 0")
    emerging_k: int = _field(5, "length of emerging_categories", check=_positive, rule="> 0")
    fading_k: int = _field(5, "maximum length of fading_categories", check=_positive, rule="> 0")
    scoring_top_n: int = _field(50, "categories asked from the model per user (the predicted distribution "
                                "the migration score compares)", check=_positive, rule="> 0")
    interest_half_life_days: float = _field(7.0, "half-life of an event's weight in current interests",
                                            check=_positive, rule="> 0")
    emerging_max_history_share: float = _field(0.0, "a category is new to a user when its share of the "
                                               "look-back history is at most this (0: not touched in the "
                                               "look-back, the evaluation's one definition of new)",
                                               check=_share,
                                               rule="a share in [0, 1]")
    fading_min_current_share: float = _field(0.1, "a category is 'strong today' from this current share",
                                             check=_share, rule="a share in [0, 1]")
    fading_max_probability: float = _field(0.25, "a strong category is fading when its predicted "
                                           "probability in the horizon is below this", check=_share,
                                           rule="a probability in [0, 1]")

    # --- operations: alerts, deadlines, retraining, inbox, UI (pipelines/ops, pipelines/ui) ----
    notify_channel: str = _field("log", "where alerts go: log | webhook (Slack-style incoming webhook) | smtp",
                                 check=lambda x: x in ("log", "webhook", "smtp"), rule="one of log, webhook, smtp")
    notify_webhook_url_file: Path | None = _field(None, "file holding the webhook URL (a secret: read when "
                                                  "sending, never logged)")
    notify_smtp_host: str = _field("", "SMTP server of the smtp channel")
    notify_smtp_port: int = _field(25, "SMTP port of the smtp channel", check=_port, rule="a TCP port")
    notify_smtp_starttls: bool = _field(False, "upgrade the SMTP connection with STARTTLS")
    notify_smtp_user: str = _field("", "SMTP login (empty: no login)")
    notify_smtp_password_file: Path | None = _field(None, "file holding the SMTP password (a secret)")
    notify_email_from: str = _field("", "sender address of alert e-mails")
    notify_email_to: str = _field("", "recipients of alert e-mails (comma separated)")
    notify_timeout_seconds: float = _field(10.0, "how long a notifier waits for the webhook or SMTP server",
                                           check=_positive, rule="> 0")
    scoring_deadline: str = _field("", "HH:MM (UTC) on D+1 by which predictions for D must be published; a "
                                   "run still unfinished then sends a late-partition alert (empty: no deadline)",
                                   check=lambda x: x == "" or _hhmm(x), rule="HH:MM, e.g. 06:00, or empty")
    training_schedule: str = _field("", "cron expression or preset of scheduled training runs, e.g. '0 3 * * 1' "
                                    "(empty: only triggered or requested runs)")
    training_window_days: int = _field(0, "a training run without a config window trains on the last N landed "
                                       "days up to its data interval end (0: every landed day)",
                                       check=lambda x: x >= 0, rule=">= 0")
    inbox_poll_seconds: int = _field(60, "how often the ingest DAG's sensor lists inbox/events/",
                                     check=_positive, rule="> 0")
    ui_cache_seconds: float = _field(30.0, "how long the Airflow plugin page keeps what it read from S3/MLflow",
                                     check=_positive, rule="> 0")
    ui_timeout_seconds: float = _field(3.0, "how long the plugin page waits for S3 or MLflow before it shows "
                                       "the cached value or says the source is slow", check=_positive, rule="> 0")
    monitor_metric: str = _field("ndcg_at_5", "outcome metric the monitoring check compares (model vs best "
                                 "baseline and vs the model's own evaluation)",
                                 check=lambda x: x in _MONITOR_METRICS, rule=f"one of {', '.join(_MONITOR_METRICS)}")
    monitor_margin: float = _field(0.02, "a monitored day is degraded when the model's metric is more than this "
                                   "(absolute) below the best baseline's or below its own evaluation",
                                   check=_share, rule="a number in [0, 1]")
    monitor_consecutive_days: int = _field(3, "degraded monitored days in a row (same model version) that fail "
                                           "the check, send a model_degraded alert and request retraining",
                                           check=_positive, rule="> 0")

    # --- privacy: pseudonymisation, retention, erasure (pipelines/privacy, docs/privacy.md) -----
    pseudonymize: bool = _field(False, "replace user ids at landing with a keyed hash (HMAC-SHA256, 20 digits) so "
                                "raw, quarantine, clean, reports and predictions hold no raw id; needs "
                                "IM_PSEUDONYM_KEY_FILE")
    pseudonym_key_file: Path | None = _field(None, "file holding the pseudonymisation key (a secret: read when "
                                             "used, never logged; the stacks generate secrets/pseudonym_key)")
    retention_raw_days: int = _field(0, "the retention DAG deletes raw and quarantine partitions (and the "
                                     "validated hand-over) older than this many days (0: keep them)",
                                     check=lambda x: x >= 0, rule=">= 0")
    retention_clean_days: int = _field(0, "the retention DAG deletes clean partitions older than this many days "
                                       "(0: keep them)", check=lambda x: x >= 0, rule=">= 0")
    retention_predictions_days: int = _field(0, "the retention DAG deletes prediction partitions older than this "
                                             "many days (0: keep them)", check=lambda x: x >= 0, rule=">= 0")

    # --- online scoring (pipelines/online, docs/online.md) --------------------------------------
    online_port: int = _field(8790, "port of the online scoring endpoint (bound to 127.0.0.1)", check=_port,
                              rule="1..65535")
    online_token_file: Path | None = _field(None, "file holding the online endpoint's bearer token (a secret: "
                                            "never logged; the stacks generate secrets/online_token)")
    online_reload_seconds: float = _field(30.0, "how often the online endpoint checks the champion alias and the "
                                          "latest clean day (a change reloads it)", check=_positive, rule="> 0")
    online_max_body_bytes: int = _field(1_000_000, "largest request body the online endpoint reads (larger: 413)",
                                        check=_positive, rule="> 0")
    online_cache_users: int = _field(50_000, "answers of users who post no events the online endpoint keeps per "
                                     "loaded model and day (0: off)", check=lambda x: x >= 0, rule=">= 0")
    online_batch_requests: int = _field(64, "most requests the online endpoint scores together in one pass",
                                        check=_positive, rule="> 0")
    online_max_events: int = _field(10_000, "most events one online request may post (more: 400)",
                                    check=_positive, rule="> 0")

    # --- embedded stack (`make up`, `make run`) ------------------------------------------------
    stack_root_dir: Path | None = _field(None, "folder of the embedded stack's state (empty: .local/ in "
                                         "the repository)")
    stack_s3_port: int = _field(8333, "S3 (SeaweedFS) port of the embedded stack", check=_port, rule="a TCP port")
    stack_mlflow_port: int = _field(5000, "MLflow port of the embedded stack", check=_port, rule="a TCP port")
    stack_airflow_port: int = _field(8080, "Airflow API/UI port of the embedded stack", check=_port,
                                     rule="a TCP port")
    stack_port_base: int = _field(18330, "first of 14 ports for SeaweedFS's internal listeners and Airflow's "
                                  "log servers", check=lambda x: 1 <= x <= 65515, rule="a TCP port <= 65515")
    stack_use_schedule: bool = _field(False, "let the embedded stack's scheduler create scheduled runs (off: "
                                      "runs happen when triggered or backfilled)")
    stack_strict_gate: bool = _field(False, "`make run` stops when the gate promotes no champion instead of "
                                     "promoting the first version by hand")

    def describe(self) -> dict[str, str]:
        """Settings as strings, for logs and MLflow params (holds no secret)."""
        return {f.name: _render(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _render(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return ENV_PREFIX + field_name.upper()


def _parse(name: str, raw: Any, annotation: Any) -> Any:
    """Parse ``raw`` (a string from the environment, or a YAML/JSON value) to ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(name, raw, inner)
    try:
        if annotation is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            if isinstance(raw, bool):
                raise ValueError
            return int(str(raw).strip())
        if annotation is float:
            number = float(str(raw).strip())
            if not math.isfinite(number):  # nan fails every comparison (a nan gate margin passes nothing)
                raise ValueError
            return number
        if annotation is str:
            return str(raw)
        if annotation is Path:
            return Path(str(raw)).expanduser()
        if annotation is dt.date:
            if isinstance(raw, dt.date):
                return raw
            return dt.date.fromisoformat(str(raw).strip())
        if origin is tuple:
            items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
            return tuple(int(str(i).strip()) for i in items if str(i).strip())
    except ValueError:
        pass
    else:
        raise ConfigError(f"{name}: unsupported setting type {annotation!r}")
    expected = {int: "an integer", float: "a finite number", bool: "true/false", dt.date: "a date YYYY-MM-DD",
                Path: "a path"}.get(annotation, "a comma-separated list of integers")
    raise ConfigError(f"{name}={raw!r} is not {expected}")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{CONFIG_FILE_VAR}={path}: cannot read the file ({exc.strerror})") from exc
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{CONFIG_FILE_VAR}={path}: expected a mapping of setting names to values")
    return data


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from defaults, ``IM_CONFIG_FILE``, the environment and ``overrides``.

    ``overrides`` take already-typed values (used by tests and the CLI). Raises
    :class:`ConfigError` for an unknown key in the file, a value of the wrong type, or a value
    outside its allowed range.
    """
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(Settings)
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    file_var = env.get(CONFIG_FILE_VAR)
    if file_var:
        for key, raw in _read_file(Path(file_var)).items():
            if key not in fields:
                raise ConfigError(f"{CONFIG_FILE_VAR}={file_var}: unknown setting {key!r}")
            values[key] = _parse(f"{file_var}:{key}", raw, hints[key])
    for name in fields:
        var = env_name(name)
        if var in env:
            values[name] = _parse(var, env[var], hints[name])
    for name, value in overrides.items():
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = value

    settings = Settings(**values)
    for name, f in fields.items():
        check = f.metadata.get("check")
        value = getattr(settings, name)
        if check is not None and value is not None and not check(value):
            raise ConfigError(f"{env_name(name)}={_render(value)!r} is out of range: must be {f.metadata['rule']}")
    if settings.window_start and settings.window_end and settings.window_start > settings.window_end:
        raise ConfigError(f"{env_name('window_start')} ({settings.window_start}) is after "
                          f"{env_name('window_end')} ({settings.window_end})")
    if settings.pseudonymize and settings.pseudonym_key_file is None:
        raise ConfigError(f"{env_name('pseudonymize')}=true needs {env_name('pseudonym_key_file')} (the file holding "
                          "the key; `python -m pipelines pseudonym --new-key PATH` writes one)")
    if not settings.eval_ks or any(k <= 0 for k in settings.eval_ks):
        raise ConfigError(f"{env_name('eval_ks')}={_render(settings.eval_ks)!r} must list positive integers")
    return settings


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) rows, for the README and ``python -m pipelines config``."""
    return [(env_name(f.name), _render(f.default), f.metadata["doc"]) for f in dataclasses.fields(Settings)]


def setting_variables(environ: Mapping[str, str] | None = None, *, include_stack: bool = False) -> dict[str, str]:
    """The ``IM_*`` variables of ``environ`` (default: this process) that set a setting, plus
    ``IM_CONFIG_FILE``: what a launcher hands on to the processes it starts (the embedded stack
    passes the caller's settings to its tasks, without its own ``IM_STACK_*`` ones)."""
    env = os.environ if environ is None else environ
    names = {env_name(f.name) for f in dataclasses.fields(Settings)
             if include_stack or not f.name.startswith("stack_")} | {CONFIG_FILE_VAR}
    return {k: v for k, v in env.items() if k in names}
