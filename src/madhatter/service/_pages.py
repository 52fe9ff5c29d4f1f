"""The pages: pipelines with their DAG and a form, the runs list, one run live, and log-in.

Rendered on the server with Jinja2 (autoescaped, so nothing a user typed becomes markup) and
complete without JavaScript. Form posts carry a CSRF token that must match the ``madhatter_csrf``
cookie (see ``_auth``). The run page's one script (``static/run.js``) follows the run over the API's
event stream and updates the progress table in place.
"""

from __future__ import annotations

import pathlib
import time
from typing import Annotated, Any

from .._version import __version__
from ..graph import render_svg
from . import _auth
from ._api import Service, StatusName
from ._charts import timeline_svg
from ._extras import require_web
from ._progress import RunView, cache_share
from ._records import STATUSES
from ._registry import InvalidParams

require_web("fastapi")
require_web("jinja2")

import jinja2  # noqa: E402  (after the check that names the extra)
from fastapi import APIRouter, Form, Query, Request, Response  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.exceptions import HTTPException  # noqa: E402
from fastapi.responses import HTMLResponse, RedirectResponse  # noqa: E402

TEMPLATES = pathlib.Path(__file__).parent / "templates"
PAGE_SIZE = 25


def pages_router(service: Service, *, token_digest: str | None) -> APIRouter:
    """The pages over ``service``; ``token_digest`` is what the log-in form checks."""
    router = APIRouter()
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    templates.filters["when"] = _when
    templates.filters["duration"] = _duration

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        csrf = request.cookies.get(_auth.CSRF_COOKIE) or _auth.new_csrf()
        text = templates.get_template(name).render(
            csrf=csrf, version=__version__, statuses=STATUSES, **context
        )
        response = HTMLResponse(text, status_code)
        if request.cookies.get(_auth.CSRF_COOKIE) != csrf:
            response.set_cookie(_auth.CSRF_COOKIE, csrf, httponly=True, samesite="strict")
        return response

    def check_csrf(request: Request, field: str) -> None:
        if not _auth.csrf_matches(request.cookies.get(_auth.CSRF_COOKIE), field):
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")

    @router.get("/", response_class=HTMLResponse)
    def pipelines_page(request: Request) -> HTMLResponse:
        pipelines = [
            {**service.pipeline_out(name), "svg": render_svg(service.registry.get(name).graph)}
            for name in service.registry.names()
        ]
        return page(request, "pipelines.html", pipelines=pipelines)

    @router.post("/pipelines/{name}/runs")
    async def start_from_form(name: str, request: Request) -> Response:
        form = await request.form()
        check_csrf(request, str(form.get("csrf", "")))
        params = {
            key.removeprefix("param."): str(value)
            for key, value in form.items()
            if key.startswith("param.") and str(value) != ""
        }
        try:
            record = await run_in_threadpool(service.submit, name, params, "web form")
        except InvalidParams as exc:
            pipelines = [
                {**service.pipeline_out(name), "svg": render_svg(service.registry.get(name).graph)}
            ]
            return page(request, "pipelines.html", 422, pipelines=pipelines, problems=exc.problems)
        return RedirectResponse(f"/runs/{record.id}", status_code=303)

    @router.get("/runs", response_class=HTMLResponse)
    def runs_page(
        request: Request,
        pipeline: Annotated[str | None, Query(max_length=200)] = None,
        status: StatusName | None = None,
        page_number: Annotated[int, Query(alias="page", ge=1, le=10**6)] = 1,
    ) -> HTMLResponse:
        offset = (page_number - 1) * PAGE_SIZE
        service.refresh()
        runs, total = service.store.list_runs(
            pipeline=pipeline or None, status=status, offset=offset, limit=PAGE_SIZE
        )
        pages = max(1, -(-total // PAGE_SIZE))
        return page(
            request,
            "runs.html",
            runs=runs,
            total=total,
            page=page_number,
            pages=pages,
            pipeline=pipeline or "",
            status=status or "",
            pipeline_names=service.registry.names(),
        )

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        record = service.found(run_id)
        stored = service.store.events(run_id)
        view = RunView(record.attempt).add_all(e for _, e in stored)
        steps = view.snapshot(time.time())
        cacheable = None  # the steps the chunk cache keeps, if the pipeline is still registered
        if record.pipeline in service.registry:
            graph = service.registry.get(record.pipeline).graph
            cacheable = [name for name, step in graph.steps.items() if step.is_parallel and step.cache]
        return page(
            request,
            "run.html",
            run=record,
            steps=steps,
            cacheable=cacheable,
            cache_share=cache_share(steps, cacheable),
            logs=view.logs,
            outputs=view.outputs,
            outputs_left_out=view.outputs_left_out,
            last_event=stored[-1][0] if stored else 0,  # the stream replays; the page has these
            engine=view.engine,
            timeline=timeline_svg(view.bars),
        )

    @router.post("/runs/{run_id}/cancel")
    def cancel_from_form(run_id: str, request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        check_csrf(request, csrf)
        service.found(run_id)
        service.store.cancel(run_id)
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    @router.post("/runs/{run_id}/rerun")
    def rerun_from_form(run_id: str, request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        check_csrf(request, csrf)
        record = service.found(run_id)
        new = service.submit(record.pipeline, record.params, "web form (re-run)")
        return RedirectResponse(f"/runs/{new.id}", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, "login.html", next=_local_path(next), failed=False)

    @router.post("/login")
    def login(
        request: Request,
        token: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        check_csrf(request, csrf)
        if token_digest is not None and not _auth.token_matches(token_digest, token):
            return page(request, "login.html", 401, next=_local_path(next), failed=True)
        response = RedirectResponse(_local_path(next), status_code=303)
        response.set_cookie(_auth.SESSION_COOKIE, token, httponly=True, samesite="strict")
        return response

    return router


def _local_path(target: str) -> str:
    """Only redirect within this site (an open redirect would help phishing)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.2f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
