"""The web app: the JSON API (``_api``) and the pages (``_pages``) over one store and registry.

Both are thin over the store: submitting records a queued run, cancelling flags it, and pages and
the live stream read records and events. The server holds no state of its own, so restarting it
loses nothing; workers never talk to it. Requests can only name registered pipelines and give
JSON parameter values, validated against the pipeline's signature (422 naming the field); nothing
a request carries is imported, executed or unpickled.

This module assembles the app and does what applies to every request: the token check (when one
is set), bodies over :data:`MAX_BODY_BYTES` refused with 413, and errors answered as JSON for the
API (plain text for pages), a 405 with an ``Allow`` naming every method its path serves. The
OpenAPI schema is completed in ``_openapi``. CSS and script are served from the package, never
fetched elsewhere.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._version import __version__
from . import _auth
from ._api import MAX_BODY_BYTES, Service, api_router
from ._extras import require_web
from ._openapi import install_schema
from ._pages import pages_router
from ._registry import InvalidParams, Registry, UnknownPipelineError
from ._store import Store

require_web("fastapi")

from fastapi import FastAPI, Request, Response  # noqa: E402  (after the check naming the extra)
from fastapi.exceptions import HTTPException, RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.routing import Match  # noqa: E402

STATIC = pathlib.Path(__file__).parent / "static"


class _BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(send, self.limit)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body larger than {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(store: Store, registry: Registry, *, token_digest: str | None = None) -> FastAPI:
    """The web app over ``store``, running only ``registry``'s pipelines.

    Args:
        store: where runs live (shared with the workers).
        registry: the pipelines that may run.
        token_digest: SHA-256 of the token every request must present, or None for none.
    """
    app = FastAPI(
        title="madhatter",
        version=__version__,
        description="Queue runs of registered madhatter pipelines, follow them live, fetch results.",
    )
    service = Service(store, registry)
    app.include_router(api_router(service))
    app.include_router(pages_router(service, token_digest=token_digest), include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.middleware("http")
    async def authenticate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        public = request.url.path in ("/login", "/healthz") or request.url.path.startswith("/static/")
        if token_digest is None or public or _presented_token_ok(request, token_digest):
            return await call_next(request)
        if request.url.path.startswith("/api/") or request.url.path in ("/openapi.json", "/docs"):
            return JSONResponse({"detail": "a token is required: Authorization: Bearer TOKEN"}, 401)
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(UnknownPipelineError)
    async def unknown_pipeline(request: Request, exc: UnknownPipelineError) -> Response:
        return JSONResponse({"detail": str(exc)}, 404)

    @app.exception_handler(InvalidParams)
    async def invalid_params(request: Request, exc: InvalidParams) -> Response:
        detail = [
            {"loc": ["body", "params", p.field], "msg": p.message, "type": "value_error"}
            for p in exc.problems
        ]
        return JSONResponse({"detail": detail}, 422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = json.loads(json.dumps(exc.errors(), default=str))  # ctx may hold exceptions
        for error in errors:
            error.pop("input", None)  # never echo a request back (it could be large, or a secret)
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(StarletteHTTPException)  # the router's 404 and 405, and ours
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=headers)
        return PlainTextResponse(str(exc.detail), exc.status_code, headers=headers)

    install_schema(app, registry, token_required=token_digest is not None)
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    return app


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method the app routes at the request's path. Starlette's 405 names only the methods
    of the first route matching the path, and ``/api/runs`` has two routes (GET and POST)."""
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in app.router.routes
        )
    ]


def _presented_token_ok(request: Request, token_digest: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and _auth.token_matches(token_digest, value.strip()):
        return True
    return _auth.token_matches(token_digest, request.cookies.get(_auth.SESSION_COOKIE))
