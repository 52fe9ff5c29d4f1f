"""The graph renderers: every step and edge in every format, escaping, fusion, and SVG layout."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

import madhatter
from madhatter import depends, parallel, postprocess, preprocess
from madhatter.graph import Graph
from madhatter.graph._render import (
    RENDERERS,
    render,
    render_dot,
    render_mermaid,
    render_svg,
    render_text,
)

SVG = "{http://www.w3.org/2000/svg}"
NASTY = 'a "quoted" <step> & co'  # a step name with every character that needs escaping somewhere


@preprocess
def load(path: str = "data/") -> list[int]:
    return [1, 2, 3]


@depends(load)
@parallel.map(n=2)
def double(x: int) -> int:
    return x * 2


@depends(load)
@parallel.filter
def odd(x: int) -> bool:
    return x % 2 == 1


@depends(double, odd)
@postprocess
def report(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    return a, b


@preprocess
def numbers() -> list[int]:
    return list(range(10))


@parallel.map(chunk_by=1000)
def square(x: int) -> int:
    return x * x


@parallel
def shift(xs: list[int]) -> list[int]:
    return [x + 1 for x in xs]


@parallel.filter
def even(x: int) -> bool:
    return x % 2 == 0


@parallel.map(retries=2, timeout=30, on_error="skip")
def risky(x: int) -> int:
    return x


@postprocess(stream=True)
def total(xs: Any) -> int:
    return sum(xs)


@preprocess(name=NASTY)
def nasty() -> list[int]:
    return [1]


@depends(nasty)
@parallel.map(name="back\\slash #1 `tick` {brace}")
def slashed(x: int) -> int:
    return x


@depends(nasty, slashed)
@postprocess(name="x" * 60)
def long_name(a: list[int], b: list[int]) -> int:
    return 0


@depends(nasty)
@parallel.map(name="bad\x01control")
def side(x: int) -> int:
    return x


@depends(side, long_name)
@postprocess
def finish(a: list[int], b: int) -> int:
    return b


DIAMOND = madhatter.Pipeline([load, double, odd, report])
CHAIN = madhatter.Pipeline.chain(numbers, square, shift, even, risky, total)
WEIRD = madhatter.Pipeline([nasty, slashed, long_name, side, finish])
GRAPHS = {"diamond": DIAMOND.graph, "chain": CHAIN.graph, "weird": WEIRD.graph}


@pytest.fixture(params=sorted(GRAPHS))
def graph(request: pytest.FixtureRequest) -> Graph:
    return GRAPHS[request.param]


def edges_of(graph: Graph) -> list[tuple[str, str]]:
    return sorted((up, step.name) for step in graph for up in step.upstreams)


# text


def test_text_has_one_line_per_step_in_the_users_vocabulary() -> None:
    lines = render_text(DIAMOND.graph).splitlines()
    assert [line.split()[0] for line in lines] == ["load", "double", "odd", "report"]
    by_name = {line.split()[0]: line for line in lines}
    assert "@preprocess" in by_name["load"]
    assert "params: path" in by_name["load"]
    assert "@parallel.map(n=2)" in by_name["double"]
    assert "@parallel.filter" in by_name["odd"]
    assert "@postprocess" in by_name["report"]
    assert by_name["double"].split("<- ")[1].strip() == "load"
    assert "<- double, odd" in by_name["report"]
    assert [line for line in lines if "(output)" in line] == [by_name["report"]]
    assert all(line == line.rstrip() for line in lines)


def test_text_shows_options_that_differ_from_the_defaults() -> None:
    text = render_text(CHAIN.graph)
    assert "@parallel.map(chunk_by=1000)" in text
    assert "@parallel.map(retries=2, timeout=30, on_error='skip')" in text
    assert "@postprocess(stream=True)" in text
    shift_line = next(line for line in text.splitlines() if line.startswith("shift"))
    assert shift_line.split()[:2] == ["shift", "@parallel"]  # no options: no parentheses


def test_text_brackets_the_steps_of_a_fused_chain() -> None:
    plan = CHAIN.plan()
    fused = [stage.step_names for stage in plan.stages if len(stage.steps) > 1]
    assert fused == [("square", "shift", "even")]  # the planner fuses these three; risky differs
    text = render_text(CHAIN.graph, plan=plan)
    lines = text.splitlines()
    marks = {line[2:].split()[0]: line[0] for line in lines if line[2:].strip() and line[1] == " "}
    assert marks == {
        "numbers": " ",
        "square": "┌",
        "shift": "│",
        "even": "└",
        "risky": " ",
        "total": " ",
    }
    assert "fused: square -> shift -> even" in text


def test_text_with_an_unfused_plan_has_no_marks() -> None:
    text = render_text(CHAIN.graph, plan=CHAIN.plan(fuse=False))
    assert text == render_text(CHAIN.graph)
    assert "fused" not in text


def test_text_rejects_a_plan_of_another_graph() -> None:
    with pytest.raises(ValueError, match="not a plan of this graph"):
        render_text(DIAMOND.graph, plan=CHAIN.plan())


def test_text_shows_control_characters_escaped() -> None:
    text = render_text(WEIRD.graph)
    assert "\x01" not in text
    assert "bad\\x01control" in text
    assert len(text.splitlines()) == len(WEIRD.graph.steps)


# DOT

DOT_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|->|[{}\[\];,=]|[^\s{}\[\];,="]+')


def dot_unquote(token: str) -> str:
    assert len(token) >= 2, token
    assert token[0] == token[-1] == '"', token
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), token[1:-1])


def test_dot_is_a_digraph_with_every_step_and_edge(graph: Graph) -> None:
    tokens = DOT_TOKEN.findall(render_dot(graph))
    assert tokens[:2] == ["digraph", "pipeline"]
    depth = 0
    for token in tokens:  # braces outside quoted strings balance and never go negative
        depth += {"{": 1, "}": -1}.get(token, 0)
        assert depth >= 0
    assert depth == 0
    assert tokens.count("->") == len(edges_of(graph))
    edges = sorted(
        (dot_unquote(tokens[i - 1]), dot_unquote(tokens[i + 1]))
        for i, token in enumerate(tokens)
        if token == "->"
    )
    assert edges == edges_of(graph)
    statements = [tokens[i - 1] for i, token in enumerate(tokens) if token == "["]
    assert statements[0] == "node"  # the node defaults, then one statement per step
    assert [dot_unquote(token) for token in statements[1:]] == list(graph.steps)
    assert "rankdir" in tokens


def test_dot_labels_escape_quotes_and_backslashes() -> None:
    dot = render_dot(WEIRD.graph)
    assert '"a \\"quoted\\" <step> & co"' in dot
    assert "back\\\\slash" in dot
    labels = [dot_unquote(t) for t in DOT_TOKEN.findall(dot) if t.startswith('"')]
    assert f"{NASTY}\n@preprocess" in labels


# Mermaid


def mermaid_unescape(text: str) -> str:
    return re.sub(r"#(\d+);", lambda m: chr(int(m[1])), text)


def test_mermaid_has_unique_ids_every_step_and_edge(graph: Graph) -> None:
    lines = render_mermaid(graph).splitlines()
    assert lines[0] == "flowchart LR"
    nodes = [re.match(r'  (\w+)\W+"(.*)"\W+$', line) for line in lines[1:] if '"' in line]
    ids = {match[1]: mermaid_unescape(match[2]).split("<br/>")[0] for match in nodes if match}
    assert len(ids) == len(nodes) == len(graph.steps)
    assert all(re.fullmatch(r"s\d+", node_id) for node_id in ids)
    assert sorted(ids.values()) == sorted(graph.steps)
    edges = [re.fullmatch(r"  (s\d+) --> (s\d+)", line) for line in lines if "-->" in line]
    assert sorted((ids[m[1]], ids[m[2]]) for m in edges if m) == edges_of(graph)
    assert len(edges) == len(edges_of(graph))
    output_id = next(node_id for node_id, name in ids.items() if name == graph.output)
    assert f"  class {output_id} output;" in lines


def test_mermaid_labels_hold_no_raw_markup() -> None:
    for line in render_mermaid(WEIRD.graph).splitlines():
        match = re.search(r'"(.*)"', line)
        if match:
            label = match[1].replace("<br/>", "")
            assert not set(label) & set('"<>&`\\\x01'), line
            assert re.sub(r"#\d+;", "", label).count("#") == 0, line


# SVG


def svg_tree(graph: Graph) -> ET.Element:
    return ET.fromstring(render_svg(graph))


def boxes(root: ET.Element) -> dict[str, tuple[float, float, float, float]]:
    """Step name -> (left, top, right, bottom) of its box."""
    found = {}
    for group in root.iter(f"{SVG}g"):
        rect = group.find(f"{SVG}rect")
        assert rect is not None
        x, y = float(rect.attrib["x"]), float(rect.attrib["y"])
        found[group.attrib["data-step"]] = (
            x,
            y,
            x + float(rect.attrib["width"]),
            y + float(rect.attrib["height"]),
        )
    return found


def path_points(d: str) -> list[tuple[float, float]]:
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", d)]
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def test_svg_is_accessible_standalone_markup(graph: Graph) -> None:
    root = svg_tree(graph)
    assert root.tag == f"{SVG}svg"
    assert root.attrib["role"] == "img"
    title = root[0]
    assert title.tag == f"{SVG}title"
    assert root.attrib["aria-labelledby"] == title.attrib["id"]
    assert graph.output in (title.text or "")
    width, height = float(root.attrib["width"]), float(root.attrib["height"])
    assert root.attrib["viewBox"] == f"0 0 {width:.0f} {height:.0f}"
    svg = render_svg(graph)
    for banned in ("<script", "<style", "href=", "<image", "@import", "url(http"):
        assert banned not in svg


def test_svg_has_one_box_per_step_inside_the_canvas_without_overlaps(graph: Graph) -> None:
    root = svg_tree(graph)
    rects = root.findall(f".//{SVG}rect")
    assert len(rects) == len(graph.steps)
    found = boxes(root)
    assert sorted(found) == sorted(name.replace("\x01", "\\x01") for name in graph.steps)
    width, height = float(root.attrib["width"]), float(root.attrib["height"])
    for left, top, right, bottom in found.values():
        assert 0 < left < right < width
        assert 0 < top < bottom < height
    placed = list(found.values())
    for i, a in enumerate(placed):
        for b in placed[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_svg_has_one_arrow_per_edge_from_box_to_box(graph: Graph) -> None:
    root = svg_tree(graph)
    marker = root.find(f".//{SVG}marker")
    assert marker is not None
    edges = [path for path in root.iter(f"{SVG}path") if path.attrib.get("class") == "mh-edge"]
    assert len(edges) == len(edges_of(graph))
    assert all(p.attrib["marker-end"] == f"url(#{marker.attrib['id']})" for p in edges)
    found = boxes(root)
    ends = []
    for path in edges:
        points = path_points(path.attrib["d"])
        start, end = points[0], points[-1]
        up = [
            n for n, box in found.items() if abs(box[2] - start[0]) < 0.2 and box[1] < start[1] < box[3]
        ]
        down = [n for n, box in found.items() if abs(box[0] - end[0]) < 0.2 and box[1] < end[1] < box[3]]
        assert len(up) == len(down) == 1, path.attrib["d"]
        ends.append((up[0], down[0]))
    clean = sorted((a.replace("\x01", "\\x01"), b.replace("\x01", "\\x01")) for a, b in edges_of(graph))
    assert sorted(ends) == clean


def test_svg_edges_that_skip_a_column_pass_between_boxes() -> None:
    root = svg_tree(WEIRD.graph)
    found = boxes(root).values()
    straight = 0
    for path in root.iter(f"{SVG}path"):
        if path.attrib.get("class") != "mh-edge":
            continue
        for run in re.findall(r"[\d.]+,[\d.]+ L[\d.]+,[\d.]+", path.attrib["d"]):
            (x1, y), (x2, _) = path_points(run)
            straight += 1
            for left, top, right, bottom in found:
                assert not (left < x2 and x1 < right and top <= y <= bottom), (run, left, top)
    assert straight == 2  # nasty -> long_name crosses one column, bad\x01control -> finish one


def test_svg_escapes_text_and_keeps_the_names() -> None:
    svg = render_svg(WEIRD.graph)
    assert "&lt;step&gt; &amp; co" in svg
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert NASTY in texts
    assert "x" * 35 + "…" in texts  # long names are cut, and kept whole in the box's <title>
    titles = [t.text or "" for t in root.iter(f"{SVG}title")]
    assert any(title.startswith("x" * 60) for title in titles)


def test_svg_ids_differ_between_graphs() -> None:
    ids = {svg_tree(graph).find(f".//{SVG}marker").attrib["id"] for graph in GRAPHS.values()}  # type: ignore[union-attr]
    assert len(ids) == len(GRAPHS)


def test_svg_of_a_single_step() -> None:
    root = svg_tree(madhatter.Pipeline([numbers]).graph)
    assert len(root.findall(f".//{SVG}rect")) == 1
    assert not [p for p in root.iter(f"{SVG}path") if p.attrib.get("class") == "mh-edge"]


# dispatch


def test_render_dispatches_by_format_name(graph: Graph) -> None:
    assert sorted(RENDERERS) == ["dot", "mermaid", "svg", "text"]
    for fmt, renderer in RENDERERS.items():
        assert render(graph, fmt) == renderer(graph)


def test_render_names_the_known_formats_for_an_unknown_one() -> None:
    with pytest.raises(ValueError, match=r"'png'.*dot, mermaid, svg, text"):
        render(DIAMOND.graph, "png")
