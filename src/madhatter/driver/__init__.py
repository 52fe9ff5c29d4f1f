"""The driver's side of a run: everything madhatter does in the caller's process to execute a plan.

=================  ================================================================================
``_execute``       :func:`execute_plan`, the entry point: start, run, stop everything, report
``_evaluator``     evaluates driver steps and drives the parallel stages until what is asked is ready
``_stage``         one parallel stage: chunking, back-pressure, retries, ordering, statistics
                   and events
``_placement``     where a stage's chunks run: the probe, then inline in the driver or shipped
``_readers``       a stage's input: a driver step's iterable, or a channel cursor
``_channel``       a stage's ordered output, read by one cursor per consumer
``_sizing``        how big a chunk is, and whether shipping pays off
``_context``       what the stages of one run share: events, statistics, futures in flight
``_engines``       the run's engines, made once from a name or taken as given
``_chain``         the task function every engine runs: one chunk through a fused chain of steps
``_stage_cache``   what the chunk cache knows of a chunk before it is launched; why a step misses
=================  ================================================================================

Imports go one way: the driver imports ``graph``, ``engines`` and ``cache``; engines never import the
driver (they run its :class:`~._chain.ChainTask` as an opaque function).
"""

from ._execute import execute_plan
from ._stage_cache import explain as explain_cache_miss

__all__ = ["execute_plan", "explain_cache_miss"]
