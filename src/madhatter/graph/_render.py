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
  layout is layered, as in Sugiyama's method but without its dummy nodes: a step's layer is the
  longest path to it from a source, and layers are columns left to right. Within a column, steps
  are sorted by the mean height of their upstreams (one barycenter sweep, ties kept in
  topological order), which removes most crossings in the small graphs pipelines have. Columns are
  as wide as their widest label (monospace, so the width is known without measuring fonts) and
  are centred vertically. Edges are cubic curves from the right side of a box to the left side of
  the next; when a box has several edges on a side, their ends are spread down that side in the
  order of the boxes at their other ends, so they neither overlap nor cross at the box.
"""

from __future__ import annotations

import html
import zlib
from collections.abc import Callable
from statistics import fmean

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


def _decorator(step: Step) -> str:
    """The decorator call that makes ``step``, with the options that differ from the defaults."""
    options = [f"n={step.n}"] if step.n is not None else []
    if step.chunk_by is not None:
        options.append(f"chunk_by={step.chunk_by}")
    if step.retries:
        options.append(f"retries={step.retries}")
    if step.retry_delay:
        options.append(f"retry_delay={step.retry_delay:g}")
    if step.timeout is not None:
        options.append(f"timeout={step.timeout:g}")
    if step.on_error != "raise":
        options.append(f"on_error={step.on_error!r}")
    if not step.ordered:
        options.append("ordered=False")
    if step.stream:
        options.append("stream=True")
    if step.engine is not None:
        options.append(f"engine={step.engine!r}")
    decorator = _DECORATORS[step.kind]
    return f"{decorator}({', '.join(options)})" if options else decorator


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
            mark = (
                " " if len(group) == 1 else "┌" if i == 0 else "└" if i == len(group) - 1 else "│"
            )
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
            f"fused: {' -> '.join(map(_printable, group))} run as one task per chunk"
            for group in fused
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
_BOX_H, _BOX_PAD, _GAP_X, _GAP_Y, _MARGIN = 46, 12, 56, 18, 16
_MAX_CHARS = 36  # longer labels are cut with an ellipsis; the full text is in the box's <title>
_FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace"
_COLOURS: dict[str, tuple[str, str]] = {  # kind -> (fill, stroke)
    "source": ("#e3eefb", "#3b73b9"),
    "chunks": ("#fdf1dc", "#c2841a"),
    "map": ("#fdf1dc", "#c2841a"),
    "filter": ("#fbe6ea", "#b8475d"),
    "whole": ("#e3f4e6", "#3b8a4c"),
}


def _fit(text: str) -> str:
    text = _printable(text)
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 1] + "…"


def _columns(graph: Graph) -> list[list[str]]:
    """Steps by layer (longest path from a source), each column sorted by upstream barycenter."""
    layer: dict[str, int] = {}
    for step in graph:
        layer[step.name] = 1 + max((layer[up] for up in step.upstreams), default=-1)
    columns: list[list[str]] = [[] for _ in range(max(layer.values()) + 1)]
    for name in graph.steps:
        columns[layer[name]].append(name)
    height: dict[str, float] = {}  # row in the column, measured from the column's centre
    for column in columns:
        if height:
            column.sort(key=lambda name: fmean(height[up] for up in graph[name].upstreams))
        height.update((name, i - (len(column) - 1) / 2) for i, name in enumerate(column))
    return columns


def render_svg(graph: Graph) -> str:
    """A self-contained SVG drawing of the graph, laid out by this module (see its docstring)."""
    columns = _columns(graph)
    labels = {step.name: (_fit(step.name), _fit(_decorator(step))) for step in graph}
    tallest = max(len(column) for column in columns)
    height = 2 * _MARGIN + tallest * _BOX_H + (tallest - 1) * _GAP_Y
    boxes: dict[str, tuple[float, float, float]] = {}  # name -> (x, y, width)
    x: float = _MARGIN
    for column in columns:
        chars = [(len(labels[n][0]) * _NAME_PX, len(labels[n][1]) * _KIND_PX) for n in column]
        width = 0.6 * max(max(pair) for pair in chars) + 2 * _BOX_PAD
        top = (height - len(column) * _BOX_H - (len(column) - 1) * _GAP_Y) / 2
        for i, name in enumerate(column):
            boxes[name] = (x, top + i * (_BOX_H + _GAP_Y), width)
        x += width + _GAP_X
    total_width = x - _GAP_X + _MARGIN

    edges = [(up, step.name) for step in graph for up in step.upstreams]
    ends: dict[tuple[int, int], float] = {}  # (edge index, 0 at the start / 1 at the end) -> y
    for side in (0, 1):
        for name, (_, y, _) in boxes.items():
            mine = [i for i, edge in enumerate(edges) if edge[side] == name]
            mine.sort(key=lambda i: boxes[edges[i][1 - side]][1])
            for k, i in enumerate(mine):
                ends[i, side] = y + _BOX_H * (k + 1) / (len(mine) + 1)

    key = "\0".join([*graph.steps, graph.output]).encode("utf-8", "backslashreplace")
    uid = f"mh{zlib.crc32(key):08x}"  # ids unique per graph, so several SVGs can share a page
    title = f"Pipeline of {len(boxes)} steps: {', '.join(graph.steps)}; output {graph.output}"
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
        x1, x2 = boxes[up][0] + boxes[up][2], boxes[down][0]
        y1, y2, bend = ends[i, 0], ends[i, 1], (x2 - x1) / 2
        out.append(
            f'<path class="mh-edge" d="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} '
            f'{x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" fill="none" stroke="#555" '
            f'stroke-width="1.4" marker-end="url(#{uid}-arrow)"/>'
        )
    for step in graph:
        bx, by, width = boxes[step.name]
        fill, stroke = _COLOURS[step.kind]
        name, kind = (html.escape(text) for text in labels[step.name])
        centre = bx + width / 2
        is_output = step.name == graph.output
        full = f"{_printable(step.name)}: {_decorator(step)}" + (" (output)" if is_output else "")
        out += [
            f'<g data-step="{html.escape(_printable(step.name))}">'
            f"<title>{html.escape(full)}</title>",
            f'<rect class="mh-step" x="{bx:.1f}" y="{by:.1f}" width="{width:.1f}" '
            f'height="{_BOX_H}" rx="6" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{2.6 if is_output else 1.2}"/>',
            f'<text x="{centre:.1f}" y="{by + 19:.1f}" text-anchor="middle" font-size="{_NAME_PX}" '
            f'font-weight="bold" fill="#1a1a1a">{name}</text>',
            f'<text x="{centre:.1f}" y="{by + 36:.1f}" text-anchor="middle" font-size="{_KIND_PX}" '
            f'fill="#444">{kind}</text></g>',
        ]
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
        raise ValueError(
            f"unknown graph format {fmt!r}; choose one of: {', '.join(sorted(RENDERERS))}"
        )
    return renderer(graph)
