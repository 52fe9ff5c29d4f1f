"""Show a :class:`Graph` to people: as terminal text, Graphviz DOT, Mermaid, or a standalone SVG.

Every view names a step's kind by the decorator the user wrote (``@parallel.map(n=4)``), not by
the internal kind (``"map"``), so what is shown can be found in the source.

* **Text** lists the steps one a line in topological order, in columns: name, decorator with its
  non-default options, upstreams (``<- a, b``), run parameters and the output mark. Given a
  :class:`Plan`, it lists the steps stage by stage (still a topological order), so each fused chain
  is a run of adjacent lines, bracketed (``┌ │ └``) and summarised at the end.
* **DOT** and **Mermaid** leave the layout to their tools. DOT quotes and escapes the names and
  uses them as node ids; Mermaid ids are ``s0, s1, ...`` (names may hold anything) and the names
  go into quoted labels, with Mermaid's ``#code;`` entities for the characters it would parse.
* **SVG** is laid out here, so it needs no graphviz binary, fonts, scripts or stylesheet (a
  ``<style>`` would leak into the page embedding it; everything is a presentation attribute). The
  layout is layered, after Sugiyama: a step's layer is the longest path to it from a source, and
  layers are columns, left to right. An edge that spans several columns gets a *crossing* in each
  column it passes, a thin slot ordered like a step, so it runs between the boxes, not through
  them. Each column is sorted by the mean height of its nodes' neighbours in the column before
  (one barycenter sweep, ties in topological order), which removes most crossings in the small
  graphs pipelines have. Columns are as wide as their widest label (monospace, so widths are known
  without measuring fonts) and centred vertically. Edges are cubic curves between columns and
  straight through crossings; where a box has several edges on one side, their ends are spread
  down that side in the order of their other ends, so they neither overlap nor cross there.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import zlib
from collections.abc import Callable, Mapping, Sequence

from ._model import Graph, Step
from ._plan import Plan

_DECORATORS: dict[str, str] = {
    "source": "@preprocess",
    "chunks": "@parallel",
    "map": "@parallel.map",
    "filter": "@parallel.filter",
    "whole": "@postprocess",
}


def _printable(text: str) -> str:
    """``text`` with control characters shown as escapes (they break terminals and XML)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _options(step: Step) -> list[str]:
    """The decorator options of ``step`` that differ from their defaults, as keyword arguments."""
    options = {
        "n": step.n,
        "chunk_by": step.chunk_by,
        "retries": step.retries or None,
        "retry_delay": step.retry_delay or None,
        "timeout": step.timeout,
        "on_error": None if step.on_error == "raise" else step.on_error,
        "ordered": None if step.ordered else False,
        "stream": step.stream or None,
        "engine": step.engine,
    }
    return [f"{key}={value!r}" for key, value in options.items() if value is not None]


def _decorator(step: Step) -> str:
    """The decorator call that makes ``step``, e.g. ``@parallel.map(n=4)``."""
    options = _options(step)
    return f"{_DECORATORS[step.kind]}({', '.join(options)})" if options else _DECORATORS[step.kind]


def render_text(graph: Graph, *, plan: Plan | None = None) -> str:
    """A terminal view of the graph: one line per step, in topological order.

    Args:
        graph: the graph to show.
        plan: a plan of this graph; when given, steps fused into one task are bracketed together.

    Returns:
        Lines without trailing spaces, joined by newlines, with no final newline.

    Raises:
        ValueError: if ``plan`` does not hold exactly the graph's steps.
    """
    if plan is None:
        groups: list[tuple[str, ...]] = [(name,) for name in graph.steps]
    else:
        groups = [stage.step_names for stage in plan.stages]
        if sorted(name for group in groups for name in group) != sorted(graph.steps):
            raise ValueError("the plan is not a plan of this graph: their steps differ")
    fused = [group for group in groups if len(group) > 1]
    rows: list[tuple[str, tuple[str, str, str], str]] = []  # (fusion mark, columns, notes)
    for group in groups:
        for i, name in enumerate(group):
            step = graph[name]
            mark = " " if len(group) == 1 else "┌" if i == 0 else "└" if i == len(group) - 1 else "│"
            notes = [f"params: {', '.join(step.param_names)}"] if step.param_names else []
            if name == graph.output:
                notes.append("(output)")
            upstreams = ", ".join(_printable(upstream) for upstream in step.upstreams)
            columns = (_printable(name), _decorator(step), f"<- {upstreams}" if upstreams else "")
            rows.append((mark, columns, "  ".join(notes)))
    widths = [max(len(columns[i]) for _, columns, _ in rows) for i in range(3)]
    lines: list[str] = []
    for mark, columns, note in rows:
        cells = "  ".join(cell.ljust(width) for cell, width in zip(columns, widths, strict=True))
        lines.append((f"{mark} " if fused else "") + f"{cells}  {note}".rstrip())
    if fused:
        lines.append("")
        lines.extend(
            f"fused: {' -> '.join(map(_printable, group))} (one task per chunk)" for group in fused
        )
    return "\n".join(lines)


_DOT_SHAPES: dict[str, str] = {
    "source": "parallelogram",
    "chunks": "box3d",
    "map": "box",
    "filter": "invtrapezium",
    "whole": 'box, style="rounded"',
}


def _dot_quote(text: str) -> str:
    r"""A DOT double-quoted string; ``\`` is escaped too, as labels read ``\n``, ``\N``, ..."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "\\r").replace("\n", "\\n") + '"'


def render_dot(graph: Graph) -> str:
    """Graphviz DOT source for the graph (``dot -Tsvg`` draws it); the output has two borders."""
    lines = ["digraph pipeline {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for step in graph:
        label = _dot_quote(f"{step.name}\n{_decorator(step)}")
        output = ", peripheries=2" if step.name == graph.output else ""
        lines.append(
            f"  {_dot_quote(step.name)} [shape={_DOT_SHAPES[step.kind]}{output}, label={label}];"
        )
    for step in graph:
        lines.extend(f"  {_dot_quote(up)} -> {_dot_quote(step.name)};" for up in step.upstreams)
    lines.append("}")
    return "\n".join(lines)


_MERMAID_SHAPES: dict[str, tuple[str, str]] = {
    "source": ("[/", "/]"),
    "chunks": ("[[", "]]"),
    "map": ("[", "]"),
    "filter": ("{{", "}}"),
    "whole": ("(", ")"),
}


def _mermaid_escape(text: str) -> str:
    """Text safe inside a quoted Mermaid label: markup characters become ``#code;`` entities."""
    return "".join(f"#{ord(c)};" if c in '"#&<>`\\' or not c.isprintable() else c for c in text)


def render_mermaid(graph: Graph) -> str:
    """A Mermaid ``flowchart LR``; node ids are ``s0, s1, ...`` in topological order."""
    ids = {name: f"s{i}" for i, name in enumerate(graph.steps)}
    lines = ["flowchart LR"]
    for step in graph:
        opening, closing = _MERMAID_SHAPES[step.kind]
        label = f"{_mermaid_escape(step.name)}<br/>{_mermaid_escape(_decorator(step))}"
        lines.append(f'  {ids[step.name]}{opening}"{label}"{closing}')
    for step in graph:
        lines.extend(f"  {ids[up]} --> {ids[step.name]}" for up in step.upstreams)
    lines.append("  classDef output stroke-width:3px;")
    lines.append(f"  class {ids[graph.output]} output;")
    return "\n".join(lines)


# SVG geometry, in pixels. Monospace glyphs are 0.6em wide (DejaVu Sans Mono: 0.602em).
_NAME_PX, _KIND_PX = 13, 11
_BOX_H, _LINE_H, _LANE_H, _BOX_PAD, _GAP_X, _GAP_Y, _MARGIN = 46, 13, 12, 12, 56, 18, 16
_MAX_CHARS = 36  # longer labels are cut with an ellipsis; the full text is in the box's <title>
_FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace"
_COLOURS: dict[str, tuple[str, str]] = {  # kind -> (fill, stroke)
    "source": ("#e3eefb", "#3b73b9"),
    "chunks": ("#fdf1dc", "#c2841a"),
    "map": ("#fdf1dc", "#c2841a"),
    "filter": ("#fbe6ea", "#b8475d"),
    "whole": ("#e3f4e6", "#3b8a4c"),
}
_Node = str | tuple[int, int]  # a step's name, or (edge index, column) where an edge crosses one


def _fit(text: str) -> str:
    text = _printable(text)
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 1] + "…"


def _columns(upstreams: Mapping[str, Sequence[str]], edges: list[tuple[str, str]]) -> list[list[_Node]]:
    """Steps and edge crossings by layer (longest path from a source), in barycenter order.
    ``upstreams`` lists each step's upstreams, in an order where every upstream comes first."""
    layer: dict[str, int] = {}
    for name, ups in upstreams.items():
        layer[name] = 1 + max((layer[up] for up in ups), default=-1)
    columns: list[list[_Node]] = [[] for _ in range(max(layer.values()) + 1)]
    left_of: dict[_Node, list[_Node]] = {}  # a node's neighbours in the column to its left
    for name in upstreams:
        columns[layer[name]].append(name)
        left_of[name] = []
    for i, (up, down) in enumerate(edges):
        left: _Node = up
        for column in range(layer[up] + 1, layer[down]):
            columns[column].append((i, column))
            left_of[i, column], left = [left], (i, column)
        left_of[down].append(left)
    height: dict[_Node, float] = {}  # place in the column, counted from the column's centre
    for nodes in columns:
        if height:
            nodes.sort(key=lambda node: _mean([height[left] for left in left_of[node]]))
        height.update((node, i - (len(nodes) - 1) / 2) for i, node in enumerate(nodes))
    return columns


@dataclasses.dataclass(frozen=True)
class Layout:
    """A layered drawing's geometry: each node's ``(x, y of its top, width)``, each edge's
    crossings of the columns between its ends, the drawing's size and a box's height."""

    edges: list[tuple[str, str]]
    place: dict[_Node, tuple[float, float, float]]
    via: dict[int, list[_Node]]
    width: float
    height: float
    box_h: float

    def size(self, node: _Node) -> float:
        return self.box_h if isinstance(node, str) else _LANE_H

    def middle(self, node: _Node) -> float:
        return self.place[node][1] + self.size(node) / 2


def layout(
    upstreams: Mapping[str, Sequence[str]],
    labels: Mapping[str, tuple[str, str, str]],
    *,
    box_h: float,
    small_px: float = _KIND_PX,
) -> Layout:
    """Lay out boxes labelled ``labels`` (a bold line, two small ones) in columns by layer, the
    steps' ``upstreams`` giving the edges (also used by the run report's graph)."""
    edges = [(up, name) for name, ups in upstreams.items() for up in ups]
    columns = _columns(upstreams, edges)

    def size(node: _Node) -> float:
        return box_h if isinstance(node, str) else _LANE_H

    tall = [sum(map(size, nodes)) + _GAP_Y * (len(nodes) - 1) for nodes in columns]
    height = 2 * _MARGIN + max(tall)
    place: dict[_Node, tuple[float, float, float]] = {}
    via: dict[int, list[_Node]] = {i: [] for i in range(len(edges))}
    x: float = _MARGIN
    for nodes, column_height in zip(columns, tall, strict=True):
        texts = [labels[node] for node in nodes if isinstance(node, str)]
        chars = max(max(len(a) * _NAME_PX, len(b) * small_px, len(c) * small_px) for a, b, c in texts)
        width, y = 0.6 * chars + 2 * _BOX_PAD, (height - column_height) / 2
        for node in nodes:
            place[node] = (x, y, width)
            y += size(node) + _GAP_Y
            if isinstance(node, tuple):
                via[node[0]].append(node)
        x += width + _GAP_X
    return Layout(edges, place, via, x - _GAP_X + _MARGIN, height, box_h)


def edge_path(points: Sequence[tuple[float, float]]) -> str:
    """An SVG path through ``points``: straight through each column an edge crosses, curved
    between columns."""
    path = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
    for j, ((x1, y1), (x2, y2)) in enumerate(itertools.pairwise(points)):
        bend = (x2 - x1) / 2
        curve = f"C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} "
        path += f" {'L' if j % 2 else curve}{x2:.1f},{y2:.1f}"
    return path


def render_svg(graph: Graph) -> str:
    """A self-contained SVG drawing of the graph, laid out by this module (see its docstring)."""
    labels = {
        step.name: (_fit(step.name), _DECORATORS[step.kind], _fit(", ".join(_options(step))))
        for step in graph
    }
    box_h = _BOX_H + (_LINE_H if any(label[2] for label in labels.values()) else 0)
    drawn = layout({step.name: step.upstreams for step in graph}, labels, box_h=box_h)
    edges, place, via, middle = drawn.edges, drawn.place, drawn.via, drawn.middle
    total_width, height = drawn.width, drawn.height

    ends: dict[tuple[int, int], float] = {}  # (edge, 0 at its start / 1 at its end) -> y
    for side in (0, 1):
        for name in graph.steps:
            mine = [i for i, edge in enumerate(edges) if edge[side] == name]
            # sort by the height of the next node along the edge, away from this box
            mine.sort(key=lambda i: middle([edges[i][0], *via[i], edges[i][1]][(1, -2)[side]]))
            for k, i in enumerate(mine):
                ends[i, side] = place[name][1] + box_h * (k + 1) / (len(mine) + 1)

    key = "\0".join([*graph.steps, graph.output]).encode("utf-8", "backslashreplace")
    uid = f"mh{zlib.crc32(key):08x}"  # ids unique per graph, so several SVGs can share a page
    title = f"Pipeline of {len(graph.steps)} steps: {', '.join(graph.steps)}; output {graph.output}"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {total_width:.0f} {height:.0f}" role="img" aria-labelledby="{uid}-title" '
        f'font-family="{html.escape(_FONT)}">',
        f'<title id="{uid}-title">{html.escape(_printable(title))}</title>',
        f'<defs><marker id="{uid}-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" markerUnits="userSpaceOnUse" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    for i, (up, down) in enumerate(edges):
        points = [(place[up][0] + place[up][2], ends[i, 0])]
        for node in via[i]:  # straight through each column it crosses, curved between columns
            points += [(place[node][0], middle(node)), (sum(place[node][::2]), middle(node))]
        points.append((place[down][0], ends[i, 1]))
        path = edge_path(points)
        out.append(
            f'<path class="mh-edge" d="{path}" fill="none" stroke="#555" stroke-width="1.4" '
            f'marker-end="url(#{uid}-arrow)"/>'
        )
    for step in graph:
        bx, by, width = place[step.name]
        fill, stroke = _COLOURS[step.kind]
        is_output = step.name == graph.output
        full = f"{_printable(step.name)}: {_decorator(step)}" + (" (output)" if is_output else "")
        out += [
            f'<g data-step="{html.escape(_printable(step.name))}"><title>{html.escape(full)}</title>',
            f'<rect class="mh-step" x="{bx:.1f}" y="{by:.1f}" width="{width:.1f}" '
            f'height="{box_h}" rx="6" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{2.6 if is_output else 1.2}"/>',
        ]
        lines = zip(labels[step.name], (19, 35, 49), (_NAME_PX, _KIND_PX, _KIND_PX), strict=True)
        for j, (text, dy, px) in enumerate(lines):
            if not text:
                continue
            weight, colour = ("bold", "#1a1a1a") if j == 0 else ("normal", "#444" if j == 1 else "#777")
            out.append(
                f'<text x="{bx + width / 2:.1f}" y="{by + dy:.1f}" text-anchor="middle" '
                f'font-size="{px}" font-weight="{weight}" fill="{colour}">'
                f"{html.escape(text)}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


RENDERERS: dict[str, Callable[[Graph], str]] = {
    "text": render_text,
    "dot": render_dot,
    "mermaid": render_mermaid,
    "svg": render_svg,
}


def render(graph: Graph, fmt: str) -> str:
    """Render ``graph`` in the format named ``fmt`` (a key of :data:`RENDERERS`).

    Raises:
        ValueError: for an unknown format, naming the known ones.
    """
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise ValueError(f"unknown graph format {fmt!r}; choose one of: {', '.join(sorted(RENDERERS))}")
    return renderer(graph)


def _mean(values: list[float]) -> float:
    """The arithmetic mean (``statistics.fmean`` without importing ``statistics``, whose import
    of ``decimal`` and ``fractions`` cost every ``import madhatter`` ~2 ms)."""
    return sum(values) / len(values)
