"""The report's timeline: one lane per worker, one bar per chunk, as inline SVG.

Bars are coloured by step (the page's legend says which colour is which) and carry a ``<title>``
(step, chunk, items, seconds, worker) that browsers show on hover. Chunks found whole in the chunk
cache are on the lane ``cache``, paler; steps that ran on the driver are on the lane ``driver``.
The axis is in seconds from the first bar, with ticks at round numbers.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence

from ._summary import Bar
from ._text import clean, fit

LANE_HEIGHT = 20
LABEL_WIDTH = 170
CHART_WIDTH = 760
AXIS_HEIGHT = 26
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


def colours(steps: Sequence[str]) -> dict[str, str]:
    """A colour per step, in plan order (distinct for the first ten)."""
    return {step: PALETTE[i % len(PALETTE)] for i, step in enumerate(steps)}


def _lane_key(worker: str) -> tuple[int, list[tuple[int, int | str]]]:
    """Lanes in natural order (``worker-2`` before ``worker-10``), the driver first, the cache last."""
    rank = 0 if worker == "driver" else 2 if worker == "cache" else 1
    parts = re.split(r"(\d+)", worker)
    return rank, [(0, int(p)) if p.isdigit() else (1, p) for p in parts if p]


def _tick(span: float) -> float:
    """A round tick interval giving about six ticks over ``span`` seconds."""
    raw = span / 6
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def timeline_svg(bars: Sequence[Bar], colour: dict[str, str]) -> str:
    """The bars over time, a lane per worker; empty text when there are none."""
    if not bars:
        return ""
    workers = sorted({bar.worker for bar in bars}, key=_lane_key)
    lane = {worker: i for i, worker in enumerate(workers)}
    start = min(bar.start for bar in bars)
    end = max(bar.start + bar.seconds for bar in bars)
    span = max(end - start, 1e-3)
    scale = CHART_WIDTH / span
    lanes_height = LANE_HEIGHT * len(workers)
    height = lanes_height + AXIS_HEIGHT
    width = LABEL_WIDTH + CHART_WIDTH + 30
    font = 'font-family="ui-monospace, Menlo, Consolas, monospace" font-size="11" fill="#333"'
    parts = [
        f'<svg class="timeline" viewBox="0 0 {width} {height}" width="{width}" '
        f'role="img" aria-label="timeline of {len(bars)} chunks on {len(workers)} workers">'
    ]
    for i in range(len(workers)):
        if i % 2:
            parts.append(
                f'<rect x="{LABEL_WIDTH}" y="{i * LANE_HEIGHT}" width="{CHART_WIDTH}" '
                f'height="{LANE_HEIGHT}" fill="#f6f6f6"/>'
            )
    step = _tick(span)
    for k in range(int(span / step) + 1):
        x = LABEL_WIDTH + k * step * scale
        label = f"{k * step:g}s"
        parts.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{lanes_height + 4}" stroke="#ddd"/>'
            f'<text x="{x:.1f}" y="{lanes_height + 17}" text-anchor="middle" {font}>{label}</text>'
        )
    for worker, i in lane.items():
        parts.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{i * LANE_HEIGHT + 14}" text-anchor="end" {font}>'
            f"<title>{html.escape(clean(worker))}</title>{html.escape(fit(worker, 24))}</text>"
        )
    for bar in bars:
        x = LABEL_WIDTH + (bar.start - start) * scale
        w = max(bar.seconds * scale, 1.0)
        what = f"chunk {bar.chunk}" if bar.chunk is not None else "on the driver"
        cached = f", {bar.cached} from cache" if bar.cached else ""
        title = (
            f"{clean(bar.step)} {what}: {bar.items} items{cached}, {bar.seconds:.3f}s on "
            f"{clean(bar.worker)}, from {bar.start - start:.3f}s"
        )
        opacity = ' fill-opacity="0.45"' if bar.worker == "cache" else ""
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{lane[bar.worker] * LANE_HEIGHT + 3}" width="{w:.1f}" '
            f'height="{LANE_HEIGHT - 6}" fill="{colour.get(bar.step, "#888")}"{opacity}>'
            f"<title>{html.escape(title)}</title></rect>"
        )
    parts.append("</svg>")
    return "\n".join(parts)
