"""A small client of the service's JSON API, for ``madhatter submit``, ``runs`` and ``status``.

Standard library only (``urllib``), so a terminal can talk to a server without the ``web`` extra.
The server is found at ``--url``, else ``$MADHATTER_URL``, else the local default; its token comes
from ``--token`` or ``$MADHATTER_TOKEN``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .._errors import MadhatterError

DEFAULT_URL = "http://127.0.0.1:8000"
WAIT_POLL_SECONDS = 0.2


class ClientError(MadhatterError):
    """The server answered with an error, or could not be reached."""


class Client:
    """Talks to one server's API."""

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0
    ) -> None:
        self.url = (url or os.environ.get("MADHATTER_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("MADHATTER_TOKEN")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[str, bytes]:
        """``(content type, body)`` of a successful request; ClientError otherwise."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as exc:
            raise ClientError(f"{method} {path}: {exc.code} {_detail(exc.read())}") from None
        except urllib.error.URLError as exc:
            raise ClientError(
                f"cannot reach the madhatter server at {self.url} ({exc.reason})"
            ) from None

    def json(self, method: str, path: str, body: Any = None) -> Any:
        return json.loads(self.request(method, path, body)[1])

    def submit(self, pipeline: str, params: dict[str, Any], *, submitted_by: str = "") -> dict[str, Any]:
        body = {"pipeline": pipeline, "params": params, "submitted_by": submitted_by}
        answer: dict[str, Any] = self.json("POST", "/api/runs", body)
        return answer

    def run(self, run_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.json("GET", f"/api/runs/{urllib.parse.quote(run_id)}")
        return answer

    def runs(self, **filters: Any) -> dict[str, Any]:
        query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
        answer: dict[str, Any] = self.json("GET", f"/api/runs?{query}")
        return answer

    def wait(self, run_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Poll until the run is terminal; returns its record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in ("succeeded", "failed", "cancelled"):
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"run {run_id} is still {run['status']} after {timeout}s")
            time.sleep(WAIT_POLL_SECONDS)

    def result(self, run_id: str) -> tuple[str, bytes]:
        return self.request("GET", f"/api/runs/{urllib.parse.quote(run_id)}/result")


def _detail(body: bytes) -> str:
    """The ``detail`` of a JSON error answer, readable; else the body's start."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
    if isinstance(detail, list):  # validation errors: name each field
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail)
    return str(detail)
