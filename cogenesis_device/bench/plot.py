"""A line chart of the collab rows, tokens/s against RTT for each protocol, as a standalone SVG (no
plotting library: the package does not depend on one)."""
from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 64, 190, 40, 52  # margins: the legend sits on the right
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def rtt_chart(rows: list[dict], title: str) -> str | None:
    """The SVG text, or None when the rows hold no collab measurement at two RTTs or more."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for r in rows:
        if "rtt_ms" in r and "protocol" in r:
            threads = f", {r['threads']} thread" + ("s" if r["threads"] != 1 else "")
            label = r["protocol"] + (threads if len({x.get("threads") for x in rows}) > 1 else "")
            series.setdefault(label, []).append((r["rtt_ms"], r["mean"], r["sd"]))
    if not series or max(len(points) for points in series.values()) < 2:
        return None
    xs = [x for points in series.values() for x, _, _ in points]
    top = max(y + sd for points in series.values() for _, y, sd in points)
    x_step, y_step = _nice_step(max(xs) - min(xs)), _nice_step(top)
    x_lo, x_hi = math.floor(min(xs) / x_step) * x_step, math.ceil(max(xs) / x_step) * x_step
    y_hi = math.ceil(top / y_step) * y_step or y_step
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / ((x_hi - x_lo) or 1) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - y / y_hi * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2:.0f}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for i in range(round((x_hi - x_lo) / x_step) + 1):
        x = x_lo + i * x_step
        out.append(f'<line x1="{px(x):.1f}" y1="{TOP}" x2="{px(x):.1f}" y2="{TOP + plot_h}" stroke="#eee"/>'
                   f'<text x="{px(x):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{x:g}</text>')
    for i in range(round(y_hi / y_step) + 1):
        y = i * y_step
        out.append(f'<line x1="{LEFT}" y1="{py(y):.1f}" x2="{LEFT + plot_w}" y2="{py(y):.1f}" stroke="#eee"/>'
                   f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    out += [f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>',
            f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 12}" text-anchor="middle">round-trip time (ms)</text>',
            f'<text transform="translate(16 {TOP + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle">'
            'tokens/s after the first</text>']
    for n, (label, points) in enumerate(series.items()):
        color = COLORS[n % len(COLORS)]
        points.sort()
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in points)
        out.append(f'<polyline class="series" points="{path}" fill="none" stroke="{color}" stroke-width="2">'
                   f'<title>{escape(label)}</title></polyline>')
        for x, y, sd in points:  # mean with a ± sd bar
            out.append(f'<line x1="{px(x):.1f}" y1="{py(max(y - sd, 0)):.1f}" x2="{px(x):.1f}" y2="{py(y + sd):.1f}" '
                       f'stroke="{color}"/><circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        legend_y = TOP + 12 + 20 * n
        out.append(f'<line x1="{WIDTH - RIGHT + 14}" y1="{legend_y - 4}" x2="{WIDTH - RIGHT + 34}" y2="{legend_y - 4}" '
                   f'stroke="{color}" stroke-width="2"/><text x="{WIDTH - RIGHT + 40}" y="{legend_y}">'
                   f'{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
