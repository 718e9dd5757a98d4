"""
How figures look to people: aligned tables, sparklines, CSV and JSON, and
a small SVG chart (no plotting library: two polylines need none).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

from livemon.views.report import Report, Table

SPARKS = "▁▂▃▄▅▆▇█"


def cell(column: str, value: Any) -> str:
    """One value as a table shows it; the column's name gives its unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if column.endswith("_rate"):
            return f"{value:.1%}"
        if column.endswith("_ms"):
            return f"{value:,.0f}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned table: text left, numbers right, a rule under the head."""
    shown = [
        [cell(c, v) for c, v in zip(columns, r, strict=True)] for r in rows
    ]
    widths = [
        max([len(c), *(len(r[i]) for r in shown)])
        for i, c in enumerate(columns)
    ]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) for r in rows)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    head = line(columns)
    return "\n".join([head, "-" * len(head), *map(line, shown)])


def sparkline(values: Sequence[float]) -> str:
    """Values as a row of block characters, low to high (blank: unknown)."""
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    scale = (len(SPARKS) - 1) / (high - low) if high > low else 0.0
    return "".join(
        " " if math.isnan(v) else SPARKS[round((v - low) * scale)]
        for v in values
    )


def bars(fractions: Sequence[float]) -> str:
    """Fractions of a whole (0..1) as block characters on a fixed scale."""
    top = len(SPARKS) - 1
    return "".join(
        " " if f <= 0 else SPARKS[min(top, max(0, math.ceil(f * top)))]
        for f in fractions
    )


def titled(table: Table) -> str:
    """A table under its title; "(none)" when it has no rows."""
    body = table_text(table.columns, table.rows) if table.rows else "(none)"
    return f"{table.title}\n{body}"


def report_text(report: Report) -> str:
    """The whole report for a terminal, with trend sparklines."""
    parts = []
    for table in report.tables:
        parts.append(titled(table))
        if table.name == "trend" and len(table.rows) > 1:
            parts.append("")
            parts.extend(_trend_lines(table))
        parts.append("")
    return "\n".join(parts)


def _trend_lines(trend: Table) -> list[str]:
    lines = []
    for column, label in (
        ("requests", "requests"),
        ("p95_ms", "latency p95"),
        ("quality", "quality"),
        ("success_rate", "success"),
    ):
        values = [_number(v) for v in trend.column(column)]
        known = [v for v in values if not math.isnan(v)]
        span = (
            f"  {cell(column, min(known))} .. {cell(column, max(known))}"
            if known
            else ""
        )
        lines.append(f"{label:>12} {sparkline(values)}{span}")
    return lines


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _axis(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def report_json(report: Report) -> str:
    """The report as one JSON object; unknown values are null."""
    body = {
        "since": report.span.start_ns,
        "until": report.span.end_ns,
        "per": report.per,
        **{t.name: json_rows(t) for t in report.tables},
    }
    return json.dumps(body, indent=2, ensure_ascii=False)


def json_rows(table: Table) -> list[dict[str, Any]]:
    """A table's rows as JSON-ready mappings; unknown values are None."""
    return [
        {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in record.items()
        }
        for record in table.records()
    ]


def report_csv(report: Report, only: str | None = None) -> str:
    """Tables as CSV: one (``only``), or each after a ``# name`` line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for table in report.tables:
        if only is not None and table.name != only:
            continue
        if only is None:
            out.write(f"# {table.name}\n")
        writer.writerow(table.columns)
        for row in table.rows:
            writer.writerow(
                "" if isinstance(v, float) and math.isnan(v) else v
                for v in row
            )
        if only is None:
            out.write("\n")
    return out.getvalue()


def trend_svg(report: Report) -> str:
    """Latency (mean, p95) and quality per trend bucket, as an SVG image."""
    trend = report.table("trend")
    starts = trend.column("start")
    panels = [
        ("latency (ms)", {"p95": "p95_ms", "mean": "mean_ms"}),
        ("quality", {"mean": "quality"}),
    ]
    width, panel_height, margin = 720, 200, 70
    height = len(panels) * (panel_height + margin) + margin
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    colours = ("#d62728", "#1f77b4")
    for p, (title, series) in enumerate(panels):
        top = margin + p * (panel_height + margin)
        parts.append(
            f'<text x="{margin}" y="{top - 10}">{escape(title)}</text>'
        )
        parts.append(
            f'<rect x="{margin}" y="{top}" width="{width - 2 * margin}" '
            f'height="{panel_height}" fill="none" stroke="#999"/>'
        )
        values = {
            name: [_number(v) for v in trend.column(column)]
            for name, column in series.items()
        }
        known = [v for vs in values.values() for v in vs if not math.isnan(v)]
        if not known:
            continue
        low, high = min(known), max(known)
        high = high if high > low else low + 1
        parts.append(
            f'<text x="{margin - 5}" y="{top + 10}" text-anchor="end">'
            f"{_axis(high)}</text>"
            f'<text x="{margin - 5}" y="{top + panel_height}" '
            f'text-anchor="end">{_axis(low)}</text>'
        )
        for k, (name, ys) in enumerate(values.items()):
            colour = colours[k % len(colours)]
            parts.append(
                f'<text x="{width - margin - 60 * k}" y="{top - 10}" '
                f'text-anchor="end" fill="{colour}">{escape(name)}</text>'
            )
            step = (width - 2 * margin) / max(len(ys) - 1, 1)
            points = " ".join(
                f"{margin + i * step:.1f},"
                f"{top + panel_height * (1 - (y - low) / (high - low)):.1f}"
                for i, y in enumerate(ys)
                if not math.isnan(y)
            )
            parts.append(
                f'<polyline points="{points}" fill="none" '
                f'stroke="{colour}" stroke-width="1.5"><title>{name}</title>'
                "</polyline>"
            )
    if starts:
        bottom = height - 15
        parts.append(
            f'<text x="{margin}" y="{bottom}">{escape(str(starts[0]))}</text>'
            f'<text x="{width - margin}" y="{bottom}" text-anchor="end">'
            f"{escape(str(starts[-1]))}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
