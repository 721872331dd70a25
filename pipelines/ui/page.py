"""The plugin's HTML page, assembled from what :mod:`pipelines.ui.reads` returned (pure functions).

Sections: population migration (heatmap of the latest flows, the top flows against the week
before, the bar chart), monitoring (the gate metric per day, model vs baselines, from
``reports/monitoring/``), the per-user lookup and the published partitions.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from pipelines.ui import charts

STYLE = ("body{font-family:sans-serif;margin:1.2em;max-width:1200px}h2{margin-top:1.6em}"
         "td,th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:left}"
         ".note{color:#666}.error{color:#b00}.num{text-align:right}form input,form select{margin-right:.6em}")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _problem(result: dict[str, Any]) -> str:
    return f'<p class="error">{_e(result["error"])}</p>'


def _stale(result: dict[str, Any]) -> str:
    return '<p class="note">(shown from cache: the source is slow right now)</p>' if result.get("stale") else ""


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _percent(value: Any) -> str:
    return "–" if value is None else f"{value:.1%}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _expected_movers(summary: dict[str, Any]) -> str:
    """The expected number of users touching a new category (reports written before it lack it)."""
    if summary.get("expected_new_category_users") is None:
        return ""
    return (f"; {_num(summary['expected_new_category_users'], 1)} expected to touch a category new to them "
            f"({_percent(summary['expected_new_category_share'])}: the sum of their migration scores)")


def migration_section(result: dict[str, Any], base: str) -> str:
    parts = ["<h2>Population migration</h2>"]
    if not result["ok"]:
        return "".join([*parts, _problem(result)])
    data = result["value"]
    if not data["date"]:
        return "".join([*parts, '<p class="note">No migration report yet: the scoring DAG writes '
                                "reports/migration/dt=D/ after it publishes day D.</p>"])
    summary = data["summary"]
    day = data["date"]
    links = " ".join(f'<a href="{base}/?flows_date={d}">{d}</a>' if d != day else f"<b>{d}</b>"
                     for d in data["dates"][-14:])
    parts.append(f"<p>Day {links}</p>{_stale(result)}")
    parts.append(f"<p>{_num(summary['users'])} users scored by model v{_e(summary['model_version'])}; "
                 f"{_num(summary['migrating_users'])} migrating ({_percent(summary['migrating_share'])} of users: "
                 "their most likely category in the horizon is new to them)"
                 f"{_expected_movers(summary)}. Flows compared with "
                 f"{_e(summary['compared_with'] or 'no earlier report (none 7 days before)')}.</p>")
    hm = data["heatmap"]
    parts.append("<h3>Flows: current top categories → predicted emerging ones</h3><p class='note'>Rows: "
                 "categories users are in now; columns: categories new to them that they are predicted to take up. "
                 "Darker = more users; hover a cell for its weight.</p>")
    parts.append(charts.heatmap_svg(hm["from"], hm["to"], hm["weights"]))
    rows = [[_e(f["from_category"]), _e(f["to_category"]), _num(f["users"]), _num(f["weight"], 1),
             _num(f["share"]), _num(f["previous_share"]), _num(f["share_change"])] for f in summary["top_flows"]]
    parts.append("<h3>Top flows</h3>" + _table(
        ["from", "to", "users with the pair", "weight (users)", "share", "share a week before", "change"], rows))
    # Drawn as SVG in the browser, whose fonts cover any script (category names in Chinese, emoji);
    # the report's PNG is drawn with the server's fonts and stays a link.
    strength = data.get("strength") or {"category": [], "current_strength": [], "predicted_strength": []}
    parts.append("<h3>Interest strength per category</h3>" + charts.bars_svg(strength["category"], {
        "current": strength["current_strength"], "predicted": strength["predicted_strength"]},
        label="mean share of a user's interest: current vs predicted")
        + f'<p class="note"><a href="{base}/api/migration/{day}/chart.png">the same chart as a PNG</a> '
        f"(reports/migration/dt={_e(day)}/interest_by_category.png)</p>")
    return "".join(parts)


def monitoring_section(result: dict[str, Any], metric: str) -> str:
    parts = ["<h2>Monitoring: predictions against what users did</h2>"]
    if not result["ok"]:
        return "".join([*parts, _problem(result)])
    points = result["value"]
    if not points:
        return "".join([*parts, '<p class="note">No monitoring yet: reports/monitoring/ is empty (the '
                                "outcome-monitoring DAG writes one report per day once its horizon has passed).</p>"])
    dates = [str(p.get("as_of_date")) for p in points]
    methods = sorted({m for p in points for m in (p.get("metrics") or {})}, key=lambda m: (m != "model", m))
    series = {m: [_metric(p, m, metric) for p in points] for m in methods}
    parts.append(_stale(result) + charts.lines_svg(dates, series, label=f"{metric} per day"))
    rows = [[_e(p.get("as_of_date")), _e(p.get("model_version")), *[_num(_metric(p, m, metric), 4) for m in methods]]
            for p in reversed(points[-10:])]
    parts.append(_table(["day", "model version", *methods], rows))
    return "".join(parts)


def _metric(point: dict[str, Any], method: str, metric: str) -> float | None:
    value = ((point.get("metrics") or {}).get(method) or {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def user_section(base: str, dates: Sequence[str], user_id: str, date: str, result: dict[str, Any] | None) -> str:
    options = "".join(f'<option{" selected" if d == date else ""}>{_e(d)}</option>' for d in dates)
    parts = ["<h2>User lookup</h2>",
             f'<form method="get" action="{base}/"><input name="user" placeholder="user id" value="{_e(user_id)}">'
             f'<select name="date">{options}</select><button type="submit">Look up</button></form>']
    if result is None:
        return "".join(parts)
    if not result["ok"]:
        return "".join([*parts, _problem(result)])
    row = result["value"]
    current = dict(zip(row["current_categories"], row["current_strengths"], strict=True))
    predicted = dict(zip(row["predicted_categories"], row["predicted_scores"], strict=True))
    categories = list(dict.fromkeys([*row["current_categories"], *row["predicted_categories"]]))
    parts.append(f'<p id="user-result">User <b>{_e(row["user_id"])}</b> as of {_e(row["as_of_date"])} (next '
                 f'{_e(row["horizon_days"])} days), model v{_e(row["model_version"])}: migration score '
                 f'<b id="migration-score">{row["migration_score"]:.3f}</b>; emerging '
                 f'{_e(", ".join(row["emerging_categories"]) or "-")}; fading {_e(", ".join(row["fading_categories"]) or "-")}.</p>')
    parts.append(charts.bars_svg(categories, {
        "current share": [current.get(c, 0.0) for c in categories],
        "predicted probability": [predicted.get(c, 0.0) for c in categories]},
        label="current interest vs predicted (next horizon)"))
    return "".join(parts)


def partitions_section(result: dict[str, Any]) -> str:
    parts = ["<h2>Published partitions</h2>"]
    if not result["ok"]:
        return "".join([*parts, _problem(result)])
    rows = [[_e(r.get(c)) for c in ("as_of_date", "status", "row_count", "model_version", "created_at")]
            for r in result["value"]]
    return "".join([*parts, _stale(result), _table(["as_of_date", "status", "rows", "model version", "created"], rows)])


def render(*, bucket: str, model_name: str, aliases: dict[str, Any], sections: Sequence[str]) -> str:
    if aliases["ok"]:
        shown = ", ".join(f"<b>{_e(k)}</b> = v{_e(v)}" for k, v in aliases["value"].items()) or "no aliases yet"
    else:
        shown = f'<span class="error">{_e(aliases["error"])}</span>'
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Interest migration</title>"
            f"<style>{STYLE}</style></head><body><h1>Interest migration</h1>"
            f"<p>Bucket <code>{_e(bucket)}</code>, model <code>{_e(model_name)}</code>: {shown}</p>"
            + "".join(sections) + "</body></html>")

