"""The run's graph as inline SVG, from the edges its ``RunStarted`` event carries.

A report has no :class:`~madhatter.graph.Graph` (a stored run's pipeline may be gone), only step
names and ``(upstream, step)`` edges, so the boxes say what the run did (items in and out, work
time) rather than which decorator made each step. The layout is the graph renderer's own
(:func:`madhatter.graph._render._columns`: layers by longest path, crossings for long edges, one
barycenter sweep), given a stand-in graph of the names and edges; the drawing is simpler than
``render_svg``'s (edge ends at the middle of each box's side).
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Mapping, Sequence

from ..graph._render import edge_path, layout
from ._summary import StepRow
from ._text import clean, fit

_NAME_PX, _INFO_PX = 13, 11  # the layout (``graph._render.layout``) sizes the boxes from these
_BOX_H = 52
_FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace"
_STATES: dict[str, tuple[str, str]] = {  # state -> (fill, stroke)
    "finished": ("#e3f4e6", "#3b8a4c"),
    "running": ("#fdf1dc", "#c2841a"),  # started, never finished: where a failed run stopped
    "waiting": ("#f1f1f1", "#999999"),
}


def ordered(steps: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str]:
    """``steps`` (and any name only an edge has) in a topological order, keeping the given order
    where the edges allow; steps on a cycle (which a valid graph has none of) go last."""
    names = list(dict.fromkeys([*steps, *itertools.chain.from_iterable(edges)]))
    upstreams: dict[str, set[str]] = {name: set() for name in names}
    for up, down in edges:
        upstreams[down].add(up)
    done: list[str] = []
    placed: set[str] = set()
    while len(done) < len(names):
        ready = [n for n in names if n not in placed and upstreams[n] <= placed]
        if not ready:  # a cycle: place the rest as given, with no edges into them
            ready = [n for n in names if n not in placed]
        for name in ready[:1]:
            done.append(name)
            placed.add(name)
    return done


def dag_svg(steps: Sequence[str], edges: Sequence[tuple[str, str]], rows: Mapping[str, StepRow]) -> str:
    """The graph of ``steps`` as an SVG element (no ``xmlns``: it is inline in HTML), each box
    with its step's items and time from ``rows``; empty text when there are no steps."""
    names = ordered(steps, edges)
    if not names:
        return ""
    position = {name: i for i, name in enumerate(names)}
    edges = [(up, down) for up, down in edges if position[up] < position[down]]  # no cycles
    upstreams: dict[str, list[str]] = {name: [] for name in names}
    for up, down in edges:
        upstreams[down].append(up)
    labels = {name: _labels(name, rows.get(name)) for name in names}
    drawn = layout(upstreams, labels, box_h=_BOX_H, small_px=_INFO_PX)
    edges, place, via, middle = drawn.edges, drawn.place, drawn.via, drawn.middle
    total_width, height = drawn.width, drawn.height

    out = [
        f'<svg class="dag" width="{total_width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {total_width:.0f} {height:.0f}" role="img" '
        f'aria-label="graph of {len(names)} steps" font-family="{html.escape(_FONT)}">',
        '<defs><marker id="dag-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" markerUnits="userSpaceOnUse" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    for i, (up, down) in enumerate(edges):
        points = [(place[up][0] + place[up][2], middle(up))]
        for node in via[i]:  # straight through each column it crosses, curved between columns
            points += [(place[node][0], middle(node)), (place[node][0] + place[node][2], middle(node))]
        points.append((place[down][0], middle(down)))
        path = edge_path(points)
        out.append(
            f'<path d="{path}" fill="none" stroke="#555" stroke-width="1.4" '
            'marker-end="url(#dag-arrow)"/>'
        )
    for name in names:
        bx, by, width = place[name]
        row = rows.get(name)
        state = "finished" if row and row.finished else "running" if row and row.started else "waiting"
        fill, stroke = _STATES[state]
        title = " | ".join(label for label in labels[name] if label)
        out.append(
            f'<g class="dag-step" data-step="{html.escape(clean(name))}"><title>'
            f"{html.escape(clean(name))}: {html.escape(title)} ({state})</title>"
            f'<rect x="{bx:.1f}" y="{by:.1f}" width="{width:.1f}" height="{_BOX_H}" rx="6" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.4"/>'
        )
        for j, (text, dy) in enumerate(zip(labels[name], (19, 34, 47), strict=True)):
            if text:
                px, weight, colour = (
                    (_NAME_PX, "bold", "#1a1a1a") if j == 0 else (_INFO_PX, "normal", "#555")
                )
                out.append(
                    f'<text x="{bx + width / 2:.1f}" y="{by + dy:.1f}" text-anchor="middle" '
                    f'font-size="{px}" font-weight="{weight}" fill="{colour}">{html.escape(text)}</text>'
                )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _labels(name: str, row: StepRow | None) -> tuple[str, str, str]:
    """A box's three lines: the name, items in and out, and work time (with trouble, if any)."""
    if row is None or not row.started:
        return fit(name), "not run", ""
    items = f"{row.items_in:,} in → {row.items_out:,} out"
    notes = [f"{row.work_seconds:.2f}s"]
    if row.skipped:
        notes.append(f"{len(row.skipped)} skipped")
    if row.retries:
        notes.append(f"{row.retries} retried")
    return fit(name), items, ", ".join(notes)
