"""The JSON API: pipelines, runs, their events (also as server-sent events) and results.

Documented by the app's OpenAPI schema (``/openapi.json``, browsable at ``/docs``). Every handler
is thin over the store; parameters are validated against the pipeline's signature by the registry,
and its errors (:class:`UnknownPipelineError`, :class:`InvalidParams`) become 404 and 422 in
``_app``. Results are served as stored: JSON as it is, anything else as a pickle download that
the server itself never unpickles.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from ..graph import render_svg
from ._extras import require_web
from ._progress import RunView
from ._records import RunRecord
from ._registry import Registry
from ._store import Store

require_web("fastapi")

import anyio  # noqa: E402  (after the check that names the extra)
from fastapi import APIRouter, Query, Request, Response  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.exceptions import HTTPException  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted (413 beyond, in ``_app``): parameters are small; results never go up."""

STREAM_POLL_SECONDS = 0.25
"""How often the event stream looks for new events (the store is polled; see docs/service.md)."""

REFRESH_SECONDS = 1.0
"""How often the app itself re-queues runs whose lease expired (see :meth:`Service.refresh`)."""

Scalar = str | int | float | bool | None
StatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


# -- models (they make the OpenAPI schema) ------------------------------------------------------


class ParamOut(BaseModel):
    name: str
    type: str
    default: Any = None


class PipelineOut(BaseModel):
    name: str
    steps: list[str]
    params: list[ParamOut]


class SubmitRun(BaseModel):
    """A run to queue: a registered pipeline's name and its parameters."""

    model_config = ConfigDict(extra="forbid")
    pipeline: str = Field(min_length=1, max_length=200)
    params: dict[str, Scalar] = Field(default_factory=dict)
    submitted_by: str = Field(default="", max_length=100)


class Problem(BaseModel):
    """Why a request was refused (every 4xx but 422, whose ``detail`` lists each bad field)."""

    detail: str


class FailureOut(BaseModel):
    type: str
    message: str
    step: str | None = None
    chunk: int | None = None
    traceback: str | None = None


class RunOut(BaseModel):
    id: str
    pipeline: str
    params: dict[str, Any]
    status: StatusName
    submitted_at: float
    submitted_by: str
    started_at: float | None
    finished_at: float | None
    seconds: float | None
    worker: str | None
    attempt: int
    lost: int
    cancel_requested: bool
    error: FailureOut | None
    result_kind: str | None
    result_preview: str | None
    items: int


class RunsPage(BaseModel):
    runs: list[RunOut]
    total: int
    offset: int
    limit: int


class StepProgressOut(BaseModel):
    """One step's progress: the fold of its events, the numbers ``madhatter run`` draws."""

    name: str
    total: int | None = Field(description="the step's items in, once known")
    done: int = Field(description="items in so far (those found in the chunk cache included)")
    items_out: int
    work_seconds: float = Field(description="time the step's function spent on the engine")
    started_at: float | None
    finished_at: float | None
    retries: int = Field(description="chunks tried again")
    skipped: int = Field(description="items that failed and were skipped (`on_error`)")
    cached: int = Field(
        description="of `done`, the items found in the chunk cache, not computed (0 unless the "
        "worker has a cache: `madhatter worker --cache`)"
    )
    percent: float = Field(description="0 to 100; 0 while the total is unknown")
    rate: float = Field(description="items per second")


class ProgressOut(BaseModel):
    """A run's progress, per step in plan order (its current attempt's; empty while queued)."""

    status: StatusName
    items: int
    steps: list[StepProgressOut]


class EventsPage(BaseModel):
    events: list[dict[str, Any]]
    next: int = Field(description="pass as `after` to get the events that follow")


Responses = dict[int | str, dict[str, Any]]
"""Extra answers of a route, as FastAPI's ``responses=`` takes them."""
NO_RUN: Responses = {404: {"model": Problem, "description": "no run with this id"}}
NO_PIPELINE: Responses = {
    404: {"model": Problem, "description": "no pipeline of this name is registered"}
}
RUN_LINKS: dict[str, Any] = {
    link: {"operationId": operation, "parameters": {"run_id": "$response.body#/id"}}
    for link, operation in [
        ("GetRun", "get_run"),
        ("GetRunEvents", "get_run_events"),
        ("GetRunProgress", "get_run_progress"),
        ("StreamRun", "stream_run"),
        ("CancelRun", "cancel_run"),
        ("RerunRun", "rerun_run"),
        ("GetRunResult", "get_run_result"),
        ("GetRunReport", "get_run_report"),
    ]
}
"""How a client (or schemathesis's stateful phase) goes from a created run to what it can do."""
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event of the stream: `madhatter` (a progress event, with its "
    "cursor as `id`), `progress` (a snapshot of the run's steps, as `GET /api/runs/{run_id}/progress` "
    "answers) or `end` (the run's final status); `data` is JSON.",
    "properties": {
        "event": {"type": "string", "enum": ["madhatter", "progress", "end"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
    },
    "required": ["event", "data"],
}
"""What each event of ``GET /api/runs/{run_id}/stream`` looks like (as schemathesis checks it)."""
QUEUED: Responses = {201: {"description": "the run, queued", "links": RUN_LINKS}}


# -- the app ----------------------------------------------------------------------------------


class Service:
    """What the API and the pages share: the store, the registry, and the steps they both take."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store, self.registry = store, registry
        self._refreshed = 0.0

    def refresh(self) -> None:
        """Re-queue runs whose worker died, at most every :data:`REFRESH_SECONDS`: workers do it
        when they ask for work, but with none alive the pages would show such runs as running."""
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_SECONDS:
            self._refreshed = now
            self.store.requeue_expired()

    def found(self, run_id: str) -> RunRecord:
        """The run, or 404."""
        self.refresh()
        record = self.store.get(run_id)
        if record is None:
            raise HTTPException(404, f"no run with id {run_id!r}")
        return record

    def pipeline_out(self, name: str) -> dict[str, Any]:
        pipeline = self.registry.get(name)
        return {
            "name": name,
            "steps": list(pipeline.graph.steps),
            "params": [p.to_dict() for p in self.registry.params(name)],
        }

    def submit(self, pipeline: str, params: dict[str, Any], submitted_by: str) -> RunRecord:
        """Validate the parameters (InvalidParams names each bad one) and queue the run."""
        values = self.registry.validate(pipeline, params)
        return self.store.submit(pipeline, values, submitted_by=submitted_by)

    @staticmethod
    def run_out(record: RunRecord) -> dict[str, Any]:
        return record.to_dict()


def api_router(service: Service) -> APIRouter:
    """The ``/api`` routes over ``service``."""
    router = APIRouter()

    @router.get(
        "/api/pipelines",
        response_model=list[PipelineOut],
        tags=["pipelines"],
        operation_id="list_pipelines",
    )
    def list_pipelines() -> list[dict[str, Any]]:
        """Every registered pipeline, with its steps and run parameters."""
        return [service.pipeline_out(name) for name in service.registry.names()]

    @router.get(
        "/api/pipelines/{name}",
        response_model=PipelineOut,
        tags=["pipelines"],
        operation_id="get_pipeline",
        responses=NO_PIPELINE,
    )
    def get_pipeline(name: str) -> dict[str, Any]:
        """One registered pipeline."""
        return service.pipeline_out(name)

    @router.get(
        "/api/pipelines/{name}/graph.svg",
        tags=["pipelines"],
        operation_id="get_pipeline_graph",
        response_class=Response,
        responses={200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}}}, **NO_PIPELINE},
    )
    def pipeline_graph(name: str) -> Response:
        """The pipeline's DAG as a standalone SVG picture."""
        return Response(render_svg(service.registry.get(name).graph), media_type="image/svg+xml")

    @router.post(
        "/api/runs",
        status_code=201,
        response_model=RunOut,
        tags=["runs"],
        operation_id="submit_run",
        responses={
            **QUEUED,
            400: {"model": Problem, "description": "the body is not JSON text"},
            **NO_PIPELINE,
            413: {"model": Problem, "description": f"the body is over {MAX_BODY_BYTES} bytes"},
        },
    )
    def submit_run(body: SubmitRun) -> dict[str, Any]:
        """Queue a run. 404 for an unknown pipeline; 422 naming each bad parameter. The schema
        of the body describes each registered pipeline's parameters."""
        return service.run_out(service.submit(body.pipeline, dict(body.params), body.submitted_by))

    @router.get("/api/runs", response_model=RunsPage, tags=["runs"], operation_id="list_runs")
    def list_runs(
        pipeline: Annotated[str | None, Query(max_length=200)] = None,
        status: StatusName | None = None,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        """Runs, newest first, optionally filtered by pipeline and status, one page at a time."""
        service.refresh()
        runs, total = service.store.list_runs(
            pipeline=pipeline, status=status, offset=offset, limit=limit
        )
        return {
            "runs": [service.run_out(r) for r in runs],
            "total": total,
            "offset": offset,
            "limit": limit,
        }

    @router.get(
        "/api/runs/{run_id}",
        response_model=RunOut,
        tags=["runs"],
        operation_id="get_run",
        responses=NO_RUN,
    )
    def get_run(run_id: str) -> dict[str, Any]:
        """One run's record; 404 if there is no such run."""
        return service.run_out(service.found(run_id))

    @router.get(
        "/api/runs/{run_id}/events",
        response_model=EventsPage,
        tags=["runs"],
        operation_id="get_run_events",
        responses=NO_RUN,
    )
    def get_events(run_id: str, after: Annotated[int, Query(ge=0, le=2**62)] = 0) -> dict[str, Any]:
        """The run's progress events after cursor ``after`` (0: from the start)."""
        service.found(run_id)
        events = service.store.events(run_id, after=after)
        return {"events": [e for _, e in events], "next": events[-1][0] if events else after}

    @router.get(
        "/api/runs/{run_id}/progress",
        response_model=ProgressOut,
        tags=["runs"],
        operation_id="get_run_progress",
        responses=NO_RUN,
    )
    def get_progress(run_id: str) -> dict[str, Any]:
        """The run's progress per step (of its current attempt): items done of total, items out,
        how many were found in the chunk cache, retries, skipped items, rate."""
        record = service.found(run_id)
        view = RunView(record.attempt).add_all(e for _, e in service.store.events(run_id))
        return progress_out(record, view)

    @router.get(
        "/api/runs/{run_id}/stream",
        tags=["runs"],
        operation_id="stream_run",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}, **NO_RUN},
    )
    async def stream_run(run_id: str, request: Request) -> StreamingResponse:
        """Server-sent events: each progress event (``madhatter``), a ``progress`` snapshot
        after each batch, and ``end`` once the run is over. Resumes after ``Last-Event-ID``."""
        record = await run_in_threadpool(service.found, run_id)
        last = request.headers.get("last-event-id", "0")
        cursor = int(last) if last.isdigit() else 0
        return StreamingResponse(
            _stream(service.store, record, cursor, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post(
        "/api/runs/{run_id}/cancel",
        response_model=RunOut,
        tags=["runs"],
        operation_id="cancel_run",
        responses=NO_RUN,
    )
    def cancel_run(run_id: str) -> dict[str, Any]:
        """Cancel a run: a queued one at once, a running one at its worker's next heartbeat."""
        service.found(run_id)
        record = service.store.cancel(run_id)
        assert record is not None
        return service.run_out(record)

    @router.post(
        "/api/runs/{run_id}/rerun",
        status_code=201,
        response_model=RunOut,
        tags=["runs"],
        operation_id="rerun_run",
        responses={**QUEUED, **NO_RUN},
    )
    def rerun(run_id: str) -> dict[str, Any]:
        """Queue a new run of the same pipeline with the same parameters."""
        record = service.found(run_id)
        return service.run_out(service.submit(record.pipeline, record.params, record.submitted_by))

    @router.get(
        "/api/runs/{run_id}/result",
        tags=["runs"],
        operation_id="get_run_result",
        responses={
            200: {
                "content": {
                    "application/json": {},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                }
            },
            **NO_RUN,
            409: {"model": Problem, "description": "the run has no result (not finished, or it failed)"},
        },
    )
    def get_result(run_id: str) -> Response:
        """The result: JSON as it is, or (for other Python objects) a cloudpickle download."""
        record = service.found(run_id)
        stored = service.store.result(run_id)
        if stored is None:
            raise HTTPException(409, f"run {run_id} has no result (it is {record.status})")
        kind, data = stored
        if kind == "json":
            return Response(data, media_type="application/json")
        disposition = f'attachment; filename="{record.pipeline}-{run_id}.pickle"'
        return Response(
            data, media_type="application/octet-stream", headers={"Content-Disposition": disposition}
        )

    @router.get(
        "/api/runs/{run_id}/report",
        tags=["runs"],
        operation_id="get_run_report",
        response_class=Response,
        responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}, **NO_RUN},
    )
    def get_report(run_id: str) -> Response:
        """The run as one self-contained HTML page, as a download: its graph, a timeline of chunks
        per worker, per-step statistics, skipped items, parameters, engine and versions (the page
        ``madhatter run --report`` writes). Of the current attempt; so far, while it runs."""
        record = service.found(run_id)
        text = run_report_html(record, [e for _, e in service.store.events(run_id)])
        disposition = f'attachment; filename="{_filename(record.pipeline)}-{record.id}-report.html"'
        return Response(
            text, media_type="text/html; charset=utf-8", headers={"Content-Disposition": disposition}
        )

    return router


def run_report_html(record: RunRecord, stored: list[dict[str, Any]]) -> str:
    """The report page of a stored run: its current attempt's events, and what its record knows
    (status, error with traceback, result preview)."""
    from ..report import events_from_dicts, render_events_html

    events = events_from_dicts(e for e in stored if e.get("attempt", record.attempt) == record.attempt)
    error = record.error
    return render_events_html(
        events,
        status=record.status,
        seconds=record.seconds,
        error=f"{error.type}: {error.message}" if error else None,
        traceback=error.traceback if error else None,
        result_preview=record.result_preview,
    )


def _filename(text: str) -> str:
    """``text`` safe in a Content-Disposition file name (letters, digits, ``._-``)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in text)[:80]


async def _stream(store: Store, record: RunRecord, cursor: int, request: Request) -> AsyncIterator[str]:
    """The server-sent events of one run (see ``stream_run``)."""
    progress = await _fold(store, record.id, record.attempt, cursor)  # what the client has seen
    first = True
    while True:
        current = await run_in_threadpool(store.get, record.id)
        if current is None:
            return
        if current.attempt != progress.attempt:  # re-queued: the new attempt starts over
            progress = await _fold(store, record.id, current.attempt, cursor)
        events = await run_in_threadpool(store.events, record.id, after=cursor)
        for seq, event in events:
            cursor = seq
            progress.add(event)
            yield f"id: {seq}\nevent: madhatter\ndata: {json.dumps(event)}\n\n"
        if events or first:
            yield f"event: progress\ndata: {json.dumps(progress_out(current, progress))}\n\n"
            first = False
        if current.terminal:
            yield f"event: end\ndata: {json.dumps({'status': current.status})}\n\n"
            return
        if await request.is_disconnected():
            return
        await anyio.sleep(STREAM_POLL_SECONDS)


def progress_out(record: RunRecord, view: RunView) -> dict[str, Any]:
    """What ``GET /api/runs/{run_id}/progress`` answers, and each ``progress`` event streams."""
    return {"status": record.status, "items": record.items, "steps": view.snapshot(time.time())}


async def _fold(store: Store, run_id: str, attempt: int, cursor: int) -> RunView:
    """The progress of ``attempt`` from the run's events up to ``cursor`` (those already sent)."""
    progress = RunView(attempt)
    if cursor:
        events = await run_in_threadpool(store.events, run_id)
        progress.add_all(event for seq, event in events if seq <= cursor)
    return progress
