"""The run page's timeline chart: one lane per engine worker, one bar per chunk, as inline SVG.

Drawn on the server, with presentation attributes only (no script, no stylesheet, no fonts to
load), so the chart works without JavaScript and embeds in any page. Each bar has a ``<title>``
(step, chunk, seconds) that browsers show on hover and screen readers read.
"""

from __future__ import annotations

import html
import zlib

from ._progress import TimelineBar

LANE_HEIGHT = 18
LABEL_WIDTH = 150
CHART_WIDTH = 640
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")


def _colour(step: str) -> str:
    return PALETTE[zlib.crc32(step.encode()) % len(PALETTE)]


def timeline_svg(bars: list[TimelineBar]) -> str:
    """An SVG of ``bars`` over time, lanes by worker; empty text when there are none."""
    if not bars:
        return ""
    workers = sorted({bar.worker for bar in bars})
    start = min(bar.start for bar in bars)
    end = max(bar.start + bar.seconds for bar in bars)
    span = max(end - start, 1e-6)
    scale = CHART_WIDTH / span
    height = LANE_HEIGHT * len(workers) + 24
    width = LABEL_WIDTH + CHART_WIDTH + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" '
        f'width="100%" aria-label="timeline of {len(bars)} tasks on {len(workers)} workers">'
    ]
    for lane, worker in enumerate(workers):
        y = lane * LANE_HEIGHT
        label = html.escape(worker if len(worker) <= 22 else "..." + worker[-19:])
        parts.append(
            f'<text x="0" y="{y + 13}" font-family="monospace" font-size="11" fill="currentColor">'
            f"{label}</text>"
        )
    for bar in bars:
        lane = workers.index(bar.worker)
        x = LABEL_WIDTH + (bar.start - start) * scale
        w = max(bar.seconds * scale, 1.0)
        title = html.escape(f"{bar.step} chunk {bar.chunk}: {bar.seconds:.3f}s on {bar.worker}")
        parts.append(
            f'<rect x="{x:.1f}" y="{lane * LANE_HEIGHT + 2}" width="{w:.1f}" height="{LANE_HEIGHT - 4}" '
            f'fill="{_colour(bar.step)}"><title>{title}</title></rect>'
        )
    axis_y = LANE_HEIGHT * len(workers) + 16
    font = 'font-family="monospace" font-size="11" fill="currentColor"'
    parts.append(f'<text x="{LABEL_WIDTH}" y="{axis_y}" {font}>0s</text>')
    end_x = LABEL_WIDTH + CHART_WIDTH
    parts.append(f'<text x="{end_x}" y="{axis_y}" text-anchor="end" {font}>{span:.2f}s</text>')
    parts.append("</svg>")
    return "".join(parts)
