"""The plugin's FastAPI app, mounted by Airflow's API server under ``/interest-migration``.

Every route sits behind Airflow's own login: the app-wide dependency is Airflow's
``requires_authenticated`` (the JWT of the ``Authorization: Bearer`` header, or the ``_token``
cookie the Airflow UI sets at login), exactly what guards Airflow's REST API. An anonymous call
of an ``/api/...`` route answers 401 (403 for a bad token); an anonymous browser asking for the
page is redirected to Airflow's login page, which sends it back afterwards.

Routes: ``/`` (the page; ``?user=U&date=D`` looks a user up, ``?flows_date=D`` picks the
migration day), ``/api/partitions``, ``/api/migration[?date=D]``, ``/api/migration/<D>/chart.png``,
``/api/monitoring``, ``/api/user?user=U&date=D``. Reads are bounded and cached
(:mod:`pipelines.ui.reads`); a slow source answers 504 on the API and an error line on the page.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.api_fastapi.core_api.security import requires_authenticated
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pipelines.config import load_settings
from pipelines.platform.dates import to_date
from pipelines.ui import page, reads

app = FastAPI(title="interest-migration", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(requires_authenticated())])


@app.exception_handler(HTTPException)
async def _login_redirect(request: Request, exc: HTTPException) -> Response:
    """Send an anonymous browser to Airflow's login page instead of a bare 401 (not the API)."""
    wants_page = request.method == "GET" and not request.url.path.startswith(f"{_base(request)}/api/")
    if exc.status_code in (401, 403) and wants_page:
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
    return await http_exception_handler(request, exc)


def _base(request: Request) -> str:
    """The prefix the app is mounted under (``/interest-migration``)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _answer(result: dict[str, Any]) -> Any:
    """The value of a bounded read, or the HTTP error saying why there is none."""
    if result["ok"]:
        return result["value"]
    status = 504 if "did not answer within" in result["error"] else 404 if "LookupError" in result["error"] or \
        "NotFound" in result["error"] else 502
    raise HTTPException(status_code=status, detail=result["error"])


def _date(value: str) -> str:
    try:
        return to_date(value, "date").isoformat()
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


@app.get("/api/partitions")
def api_partitions() -> dict[str, Any]:
    settings = load_settings()
    return {"bucket": settings.bucket, "model_name": settings.model_name,
            "aliases": reads.aliases(settings).get("value") or {}, "partitions": _answer(reads.partitions(settings))}


@app.get("/api/migration")
def api_migration(date: str | None = None) -> dict[str, Any]:
    return dict(_answer(reads.migration(load_settings(), _date(date) if date else None)))


@app.get("/api/migration/{date}/chart.png")
def api_migration_chart(date: str) -> Response:
    return Response(_answer(reads.chart_png(load_settings(), _date(date))), media_type="image/png")


@app.get("/api/monitoring")
def api_monitoring() -> list[dict[str, Any]]:
    return list(_answer(reads.monitoring(load_settings())))


@app.get("/api/user")
def api_user(user: str, date: str) -> dict[str, Any]:
    return dict(_answer(reads.user(load_settings(), _date(date), user)))


@app.get("/", response_class=HTMLResponse)
def index(request: Request, user: str = "", date: str = "", flows_date: str = "") -> str:
    settings = load_settings()
    base = _base(request)
    user, day = user.strip(), _date(date) if date else ""
    # The reads run side by side, so a slow source costs one timeout, not one per section.
    with ThreadPoolExecutor(max_workers=5, thread_name_prefix="im-ui-page") as pool:
        futures = {
            "partitions": pool.submit(reads.partitions, settings),
            "migration": pool.submit(reads.migration, settings, _date(flows_date) if flows_date else None),
            "monitoring": pool.submit(reads.monitoring, settings),
            "aliases": pool.submit(reads.aliases, settings),
        }
        if user and day:
            futures["user"] = pool.submit(reads.user, settings, day, user)
        got = {name: future.result() for name, future in futures.items()}
    published = [r["as_of_date"] for r in got["partitions"].get("value") or [] if r.get("status") == "published"]
    if user and not day and published:
        day = published[0]
        got["user"] = reads.user(settings, day, user)
    sections = [
        page.migration_section(got["migration"], base),
        page.monitoring_section(got["monitoring"], settings.gate_metric),
        page.user_section(base, published, user, day, got.get("user")),
        page.partitions_section(got["partitions"]),
    ]
    return page.render(bucket=settings.bucket, model_name=settings.model_name, aliases=got["aliases"],
                       sections=sections)
