"""Inline SVG charts for the plugin page, drawn on the server: no script, no CDN, nothing fetched.

Each function takes plain lists and returns one ``<svg>`` element; every mark carries a
``<title>`` so hovering shows its exact value.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
FONT = 'font-family="sans-serif" font-size="11"'


def _label(text: str, width: int = 18) -> str:
    return html.escape(text if len(text) <= width else text[:width - 1] + "…")


def heatmap_svg(sources: Sequence[str], targets: Sequence[str], weights: Sequence[Sequence[float]]) -> str:
    """A from (rows) x to (columns) grid of flow weights, darker = heavier (square-root scale)."""
    cell, left, top = 34, 130, 10 + 6 * max((min(len(t), 18) for t in targets), default=0)
    width, height = left + cell * len(targets) + 10, top + cell * len(sources) + 10
    peak = max((w for row in weights for w in row), default=0.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" width="{width}" height="{height}" {FONT}>']
    for j, target in enumerate(targets):
        x = left + j * cell + cell / 2
        parts.append(f'<text x="{x:.0f}" y="{top - 6}" transform="rotate(-55 {x:.0f} {top - 6})">{_label(target)}</text>')
    for i, source in enumerate(sources):
        y = top + i * cell
        parts.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4:.0f}" text-anchor="end">{_label(source)}</text>')
        for j, target in enumerate(targets):
            weight = weights[i][j]
            alpha = math.sqrt(weight / peak) if weight > 0 else 0.0
            parts.append(
                f'<rect x="{left + j * cell}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="rgba(196,78,82,{0.06 + 0.94 * alpha:.3f})"><title>{html.escape(source)} → '
                f'{html.escape(target)}: {weight:.1f} users</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(categories: Sequence[str], series: dict[str, Sequence[float]], *, label: str = "") -> str:
    """Grouped vertical bars: one group per category, one bar per series, legend under the title."""
    group, bar_gap, left, plot_h = 16 * max(1, len(series)) + 14, 2, 40, 160
    top = 24 + 14 * len(series)
    width = max(320, left + group * len(categories) + 10)
    height = top + plot_h + 90
    bar_w = (group - 14) / max(1, len(series)) - bar_gap
    peak = max((v for values in series.values() for v in values), default=0.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{width}" height="{height}" {FONT}>',
             f'<text x="{left}" y="14">{html.escape(label)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#999"/>']
    for k, (name, _) in enumerate(series.items()):
        parts.append(f'<rect x="{left}" y="{20 + 14 * k}" width="10" height="10" fill="{PALETTE[k % 8]}"/>'
                     f'<text x="{left + 14}" y="{29 + 14 * k}">{html.escape(name)}</text>')
    for i, category in enumerate(categories):
        x0 = left + i * group
        for k, (name, values) in enumerate(series.items()):
            value = values[i]
            h = plot_h * value / peak
            parts.append(f'<rect x="{x0 + k * (bar_w + bar_gap):.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                         f'height="{h:.1f}" fill="{PALETTE[k % 8]}"><title>{html.escape(category)} {html.escape(name)}: '
                         f'{value:.3f}</title></rect>')
        x = x0 + group / 2
        parts.append(f'<text x="{x:.0f}" y="{top + plot_h + 12}" transform="rotate(-50 {x:.0f} {top + plot_h + 12})" '
                     f'text-anchor="end">{_label(category)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def lines_svg(dates: Sequence[str], series: dict[str, Sequence[float | None]], *, label: str = "") -> str:
    """One polyline per series over ``dates`` (a gap where a value is missing), with y-axis bounds."""
    left, top, plot_w, plot_h = 50, 24, max(320, 14 * len(dates)), 180
    values = [v for vs in series.values() for v in vs if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.05, high + 0.05
    width, height = left + plot_w + 170, top + plot_h + 40

    def xy(i: int, v: float) -> str:
        x = left + (plot_w * i / max(1, len(dates) - 1))
        return f"{x:.1f},{top + plot_h - plot_h * (v - low) / (high - low):.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lines" width="{width}" height="{height}" {FONT}>',
             f'<text x="{left}" y="14">{html.escape(label)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{high:.3f}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">{low:.3f}</text>']
    if dates:
        parts.append(f'<text x="{left}" y="{top + plot_h + 14}">{html.escape(dates[0])}</text>')
        parts.append(f'<text x="{left + plot_w}" y="{top + plot_h + 14}" text-anchor="end">{html.escape(dates[-1])}</text>')
    for k, (name, vs) in enumerate(series.items()):
        color = PALETTE[k % 8]
        run: list[str] = []
        for i, v in enumerate([*vs, None]):
            if v is None:
                if len(run) > 1:
                    parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(run)}"/>')
                run = []
                continue
            run.append(xy(i, v))
            parts.append(f'<circle cx="{xy(i, v).split(",")[0]}" cy="{xy(i, v).split(",")[1]}" r="2.5" fill="{color}">'
                         f'<title>{html.escape(name)} {html.escape(dates[i])}: {v:.4f}</title></circle>')
        parts.append(f'<rect x="{left + plot_w + 12}" y="{top + 14 * k}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + plot_w + 26}" y="{top + 9 + 14 * k}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
