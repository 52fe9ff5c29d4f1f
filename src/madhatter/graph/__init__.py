"""The pipeline as data: build a graph of steps, validate it, plan it, render it.

The renderers load on first use (``madhatter.graph.render``...): a run never draws its graph, and
``import madhatter`` should not pay for them.
"""

from typing import TYPE_CHECKING, Any

from ._build import build_graph, steps_of_module
from ._model import Graph, Param, Step
from ._plan import Plan, Stage, plan_graph
from ._validate import graph_params

if TYPE_CHECKING:
    from ._render import RENDERERS, render, render_svg, render_text

_RENDERING = ("RENDERERS", "render", "render_svg", "render_text")

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


def __getattr__(name: str) -> Any:
    if name in _RENDERING:
        from . import _render

        return getattr(_render, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
