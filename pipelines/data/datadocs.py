"""Data Docs: the Great Expectations HTML page of each validated day, and an index per validation run.

:func:`render_day` renders a day's validation results (the partition-profile gate and the row
sample, split per day by :func:`pipelines.data.expectations.split_by_day`) with Great
Expectations' own Data Docs renderers (``ValidationResultsPageRenderer`` and
``DefaultJinjaPageView``), as one page. :func:`render_index` lists the days of one validation
run with their outcome and a link to each page. Validation publishes both under
``reports/validation/<report id>/`` (keys from :mod:`pipelines.platform.layout`:
``validation_data_docs_key``, ``validation_data_docs_index_key``). Pure: no storage here.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

PAGE_SUITE_NAME = "interest_migration.validation"
BLOCK_CACHE_ENTRIES = 4096
_RENDERERS: dict[str, Any] = {}


def _renderers() -> tuple[Any, Any]:
    """GX's page renderer and Jinja view, built once per process (building them costs more than a page)."""
    if not _RENDERERS:
        from great_expectations.render.renderer import ValidationResultsPageRenderer

        view = _view_class()()
        view.env.auto_reload = False  # templates do not change in a run: no file check per include
        _RENDERERS.update(page=ValidationResultsPageRenderer(), view=view)
    return _RENDERERS["page"], _RENDERERS["view"]


def _view_class() -> type:
    """GX's ``DefaultJinjaPageView`` that renders an identical content block once: the days of a run
    share most of their blocks (an expectation that passed with the same numbers), and Jinja is
    most of a page's cost. The HTML is the same as without the cache (up to the random element ids)."""
    from great_expectations.render.view import DefaultJinjaPageView
    from jinja2 import pass_context

    class CachingPageView(DefaultJinjaPageView):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self._blocks: dict[tuple[Any, ...], Any] = {}

        @pass_context
        def render_content_block(self, jinja_context: Any, content_block: Any, index: Any = None,
                                 content_block_id: Any = None, render_to_markdown: bool = False) -> Any:
            key = None
            if isinstance(content_block, dict) or hasattr(content_block, "to_json_dict"):
                try:
                    data = content_block if isinstance(content_block, dict) else content_block.to_json_dict()
                    key = (json.dumps(data, sort_keys=True, default=str), index, content_block_id, render_to_markdown)
                except (TypeError, ValueError):
                    key = None
            if key is not None and key in self._blocks:
                return self._blocks[key]
            html_out = DefaultJinjaPageView.render_content_block(self, jinja_context, content_block, index,
                                                                 content_block_id, render_to_markdown)
            if key is not None:
                if len(self._blocks) >= BLOCK_CACHE_ENTRIES:
                    self._blocks.clear()
                self._blocks[key] = html_out
            return html_out

    return CachingPageView


def render_day(day: str, suite_results: Sequence[Any], meta: dict[str, Any] | None = None) -> str:
    """One HTML page with the expectations of ``suite_results`` (a day's results of several suites,
    None for a suite that was not run), under Great Expectations' Data Docs look."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult

    present = [r for r in suite_results if r is not None]
    results = [res for suite in present for res in suite.results]
    ok = sum(bool(r.success) for r in results)
    run_meta = dict(present[0].meta) if present else {}
    run_meta.update(meta or {})
    run_meta["dt"] = day
    merged = ExpectationSuiteValidationResult(
        success=all(bool(s.success) for s in present), results=results, suite_name=PAGE_SUITE_NAME,
        statistics={"evaluated_expectations": len(results), "successful_expectations": ok,
                    "unsuccessful_expectations": len(results) - ok,
                    "success_percent": 100.0 * ok / len(results) if results else None},
        meta=run_meta)
    page, view = _renderers()
    return view.render(page.render(merged))


def render_index(report_id: str, days: Sequence[tuple[str, bool, str]]) -> str:
    """A small HTML index of one validation run: per day (``dt``, passed, relative link to its page)."""
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(link)}">dt={html.escape(day)}</a></td>'
        f'<td class="{"ok" if passed else "failed"}">{"passed" if passed else "FAILED"}</td></tr>'
        for day, passed, link in days)
    failed = sum(1 for _, passed, _ in days if not passed)
    title = f"Validation {html.escape(report_id)}: {len(days)} day(s), {failed} failed"
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + title + "</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 12px}.ok{color:#2a7}"
            ".failed{color:#c22;font-weight:bold}</style></head><body>"
            f"<h1>{title}</h1><p>Great Expectations Data Docs, one page per validated day.</p>"
            f"<table><tr><th>day</th><th>outcome</th></tr>\n{rows}\n</table></body></html>\n")
