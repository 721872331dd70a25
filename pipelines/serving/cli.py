"""Serving commands: ``score`` (publish predictions for days) and ``predictions`` (read them back)."""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.cli import UsageError, add_days, add_json, days_of, emit, error_line, fail
from pipelines.config import Settings


def _cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data.events import MissingInputError
    from pipelines.model.registry import ModelDownloadError, ModelIntegrityError
    from pipelines.platform.tracking import TrackingUnavailable
    from pipelines.serving.scoring import NoChampionError, ScoringError, score_date

    try:
        days = days_of(args)
    except UsageError as exc:
        return fail(str(exc), 2)
    manifests, failed = [], {}
    for day in days:
        try:
            manifest = score_date(settings, day)
        except (NoChampionError, ModelDownloadError, ModelIntegrityError, TrackingUnavailable) as exc:
            return fail(f"{day}: {exc}")  # no day can score: stop here
        except (MissingInputError, ScoringError, ValueError) as exc:
            if len(days) == 1:
                return fail(f"{day}: {exc}")
            error_line(f"{day}: {exc}")  # this day only: the other days of the range are still scored
            failed[day.isoformat()] = str(exc)
            continue
        manifests.append(manifest)
        if not args.json:
            print(f"{manifest['uri']}: {manifest['row_count']} users scored by {manifest['model_name']} "
                  f"version {manifest['model_version']} ({len(manifest['files'])} parts)")
    if args.json:
        emit(args, manifests[0] if len(days) == 1 else {"published": manifests, "failed": failed}, "")
    if failed:
        error_line(f"scored {len(manifests)} of {len(days)} days; failed: {', '.join(failed)}")
        return 1
    return 0


def _cmd_predictions(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.serving import predictions as reader

    if args.user is not None and not args.user.strip():  # an empty id is not "no --user" (the summary)
        return fail("predictions: --user is empty: give a user id, or leave --user out for the day's summary", 2)
    if args.top < 1:
        return fail(f"predictions: --top {args.top}: give at least 1", 2)
    try:
        day = days_of(args)[0]
        payload: dict[str, Any] = {}
        lines = []
        if args.user:
            from pipelines.privacy.pseudonym import stored_id

            payload["user"] = reader.user_view(settings, day, stored_id(settings, args.user))
            lines.append(reader.format_user(payload["user"]))
        if args.summary or not args.user:
            payload["summary"] = reader.summarize_day(settings, day, args.top)
            lines.append(reader.format_summary(payload["summary"]))
    except UsageError as exc:
        return fail(str(exc), 2)
    except (reader.PredictionsNotFound, ValueError) as exc:
        return fail(str(exc))
    emit(args, payload, "\n".join(lines))
    return 0


def register_cli(subparsers: Any) -> None:
    """``score --date D`` (or ``--start A --end B``) and ``predictions --date D [--user U] [--summary]``."""
    score = subparsers.add_parser("score", help="score every user active in the look-back window of day D "
                                                "with the champion; writes predictions/dt=D/")
    add_days(score)
    add_json(score)
    score.set_defaults(func=_cmd_score)

    read = subparsers.add_parser("predictions", help="read published predictions: one user's current vs "
                                                     "predicted interests, or the day's summary")
    add_days(read, window=False)
    read.add_argument("--user", help="user id to show")
    read.add_argument("--summary", action="store_true", help="print the day's summary (default without --user)")
    read.add_argument("--top", type=int, default=10, help="categories in the summary's top lists (default 10)")
    add_json(read)
    read.set_defaults(func=_cmd_predictions)
