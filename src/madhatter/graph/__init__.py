"""The pipeline as data: build a graph of steps, validate it, plan it, render it."""

from ._build import build_graph, steps_of_module
from ._model import Graph, Param, Step
from ._plan import Plan, Stage, plan_graph
from ._render import RENDERERS, render, render_svg, render_text
from ._validate import graph_params

__all__ = [
    "RENDERERS",
    "Graph",
    "Param",
    "Plan",
    "Stage",
    "Step",
    "build_graph",
    "graph_params",
    "plan_graph",
    "render",
    "render_svg",
    "render_text",
    "steps_of_module",
]
