"""The pipeline as data: build a graph of steps, validate it, plan it, render it."""

from ._build import build_graph, steps_of_module
from ._model import Graph, Param, Step
from ._plan import Plan, Stage, plan_graph
from ._validate import graph_params, topological_order

__all__ = [
    "Graph",
    "Param",
    "Plan",
    "Stage",
    "Step",
    "build_graph",
    "graph_params",
    "plan_graph",
    "steps_of_module",
    "topological_order",
]
