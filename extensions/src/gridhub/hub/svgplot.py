"""Line charts as SVG text, drawn on the server (the usage page, gridhub.hub.monitoring).

No plotting library in the hub image and no JavaScript in the page: a chart is
a few polylines, axes with ticks and a legend. ``step=True`` draws a running
total that rises at each point (CPU hours as jobs end).
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
Series = Sequence[tuple[float, float]]  # (unix time, value), in time order


def _nice_ticks(top: float, n: int = 4) -> list[float]:
    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _time_label(t: float, span: float) -> str:
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    return d.strftime("%H:%M") if span <= 2 * 86400 else d.strftime("%m-%d")


def _number(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.3g}"


def line_chart(
    title: str,
    series: Mapping[str, Series],
    *,
    y_label: str = "",
    start: float | None = None,
    end: float | None = None,
    step: bool = False,
    width: int = 720,
    height: int = 260,
    chart_id: str = "",
) -> str:
    """One SVG chart of ``series`` (legend label -> points); time runs from
    ``start`` to ``end`` (default: the points' own range), in UTC."""
    left, right, top, bottom = 56, 170, 28, 30
    w, h = width - left - right, height - top - bottom
    points = [p for s in series.values() for p in s]
    t0 = start if start is not None else min((p[0] for p in points), default=0.0)
    t1 = end if end is not None else max((p[0] for p in points), default=t0 + 1)
    t1 = max(t1, t0 + 1)
    ticks = _nice_ticks(max((p[1] for p in points), default=0.0))
    ymax = ticks[-1] or 1.0

    def x(t: float) -> float:
        return left + (min(max(t, t0), t1) - t0) / (t1 - t0) * w

    def y(v: float) -> float:
        return top + h - v / ymax * h

    ident = f" id='{html.escape(chart_id)}'" if chart_id else ""
    out = [
        f"<svg{ident} xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'"
        f" viewBox='0 0 {width} {height}' role='img' aria-label='{html.escape(title)}'"
        " font-family='sans-serif' font-size='11'>",
        f"<text x='{left}' y='16' font-size='13' font-weight='bold'>{html.escape(title)}</text>",
    ]
    for v in ticks:  # horizontal grid and y labels
        out.append(
            f"<line x1='{left}' x2='{left + w}' y1='{y(v):.1f}' y2='{y(v):.1f}' stroke='#ddd'/>"
            f"<text x='{left - 6}' y='{y(v) + 4:.1f}' text-anchor='end'>{_number(v)}</text>"
        )
    for i in range(5):  # time labels
        t = t0 + (t1 - t0) * i / 4
        out.append(
            f"<text x='{x(t):.1f}' y='{top + h + 16}' text-anchor='middle'>"
            f"{_time_label(t, t1 - t0)}</text>"
        )
    if y_label:
        out.append(
            f"<text transform='translate(12,{top + h / 2}) rotate(-90)' text-anchor='middle'>"
            f"{html.escape(y_label)}</text>"
        )
    out.append(f"<rect x='{left}' y='{top}' width='{w}' height='{h}' fill='none' stroke='#999'/>")
    if not points:
        out.append(
            f"<text class='no-data' x='{left + w / 2}' y='{top + h / 2}' text-anchor='middle'"
            " fill='#888'>no data in this period</text>"
        )
    for i, (label, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = []
        for j, (t, v) in enumerate(pts):
            if step and j:
                coords.append(f"{x(t):.1f},{y(pts[j - 1][1]):.1f}")
            coords.append(f"{x(t):.1f},{y(v):.1f}")
        if step and pts:  # a running total holds until the end
            coords.append(f"{x(t1):.1f},{y(pts[-1][1]):.1f}")
        if len(coords) == 1:
            cx, cy = coords[0].split(",")
            out.append(f"<circle cx='{cx}' cy='{cy}' r='2.5' fill='{colour}'/>")
        elif coords:
            out.append(
                f"<polyline fill='none' stroke='{colour}' stroke-width='1.8'"
                f" points='{' '.join(coords)}'/>"
            )
        ly = top + 12 + 16 * i
        last = _number(round(pts[-1][1], 2)) if pts else "-"
        out.append(
            f"<rect x='{left + w + 10}' y='{ly - 8}' width='10' height='10' fill='{colour}'/>"
            f"<text class='legend' x='{left + w + 24}' y='{ly + 1}'>"
            f"{html.escape(label[:18])} ({last})</text>"
        )
    out.append("</svg>")
    return "".join(out)
