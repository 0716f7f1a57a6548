"""Charts as inline SVG, drawn on the server: no JavaScript library, nothing fetched by the browser."""

from __future__ import annotations

import time
from html import escape

from markupsafe import Markup

W, H, PAD_L, PAD_B, PAD_T = 480, 150, 46, 20, 10


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if v >= 1 else f"{v:.2g}"


def line_chart(points: list[tuple[float, float | None]], title: str, unit: str, x_label: str | None = None) -> Markup:
    """A line (gaps where a value is None) with its latest value in the title. x is a time (seconds since the
    epoch, drawn as minutes ago) unless `x_label` names it (e.g. "step": drawn from its first to its last value)."""
    values = [v for _, v in points if v is not None]
    latest = f"{_fmt(values[-1])} {unit}".strip() if values else "no data yet"
    top = max(values, default=0.0) or 1.0
    if x_label is None:
        right = time.time()
        left = right - max((right - points[0][0]) if points else 60.0, 60.0)
        ends = (f"-{(right - left) / 60:.0f} min", "now")
    else:
        left, right = (points[0][0], points[-1][0]) if points else (0.0, 1.0)
        right = right if right > left else left + 1
        ends = (f"{x_label} {left:g}", f"{right:g}")
    plot_w, plot_h = W - PAD_L - 6, H - PAD_B - PAD_T

    def xy(x: float, v: float) -> str:
        return f"{PAD_L + plot_w * (x - left) / (right - left):.1f},{PAD_T + plot_h * (1 - v / top):.1f}"

    paths, run = [], []
    for x, v in points:
        if v is None:
            if run:
                paths.append(run)
            run = []
        else:
            run.append(xy(x, v))
    if run:
        paths.append(run)
    lines = "".join(f'<polyline class="series" points="{" ".join(p)}"/>' if len(p) > 1 else
                    f'<circle class="dot" cx="{p[0].split(",")[0]}" cy="{p[0].split(",")[1]}" r="2"/>'
                    for p in paths)
    axis = (f'<line class="axis" x1="{PAD_L}" y1="{PAD_T + plot_h}" x2="{W - 6}" y2="{PAD_T + plot_h}"/>'
            f'<text class="tick" x="{PAD_L - 4}" y="{PAD_T + 8}" text-anchor="end">{_fmt(top)}</text>'
            f'<text class="tick" x="{PAD_L - 4}" y="{PAD_T + plot_h}" text-anchor="end">0</text>'
            f'<text class="tick" x="{PAD_L}" y="{H - 4}">{escape(ends[0])}</text>'
            f'<text class="tick" x="{W - 6}" y="{H - 4}" text-anchor="end">{escape(ends[1])}</text>')
    return Markup(f'<figure class="chart"><figcaption>{escape(title)} <b>{escape(latest)}</b></figcaption>'
                  f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">{axis}{lines}</svg></figure>')


def bar_chart(bars: list[tuple[str, float]], title: str, limit: float | None = None) -> Markup:
    """Horizontal bars (label, value), scaled to `limit` (e.g. the rank) or to the largest value."""
    if not bars:
        return Markup(f'<figure class="chart"><figcaption>{escape(title)} <b>no data</b></figcaption></figure>')
    top = limit or max(v for _, v in bars) or 1.0
    row, label_w = 16, 230
    height = row * len(bars) + 4
    rows = []
    for i, (label, v) in enumerate(bars):
        y = i * row + 2
        width = max(0.0, min(v / top, 1.0)) * (W - label_w - 40)
        rows.append(f'<text class="tick" x="{label_w - 4}" y="{y + 11}" text-anchor="end">{escape(label[-38:])}'
                    f'</text><rect class="bar" x="{label_w}" y="{y}" width="{width:.1f}" height="{row - 4}"/>'
                    f'<text class="tick" x="{label_w + width + 4:.1f}" y="{y + 11}">{_fmt(v)}</text>')
    return Markup(f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
                  f'<svg viewBox="0 0 {W} {height}" role="img" aria-label="{escape(title)}">{"".join(rows)}</svg>'
                  f'</figure>')
