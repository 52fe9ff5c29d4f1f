"""The web app's API and pages, in process (the real app over a real store; no server socket):
validation with 422 naming the field, clear 4xx for bad input, tokens, CSRF, pages, the live stream."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from service_helpers import write_pipeline

from madhatter.service import Registry, Store, open_store
from madhatter.service._auth import CSRF_COOKIE, digest, setup_token
from madhatter.service._records import SUCCEEDED, Outcome

FORM = "/pipelines/counting/runs"
JSON = {"content-type": "application/json"}

PIPELINE = """
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(n: int = 4, label: str = "x"):
    return list(range(n))

@depends(numbers)
@parallel.map
def double(x, factor: float = 2.0, loud: bool = False):
    return x * factor

@depends(double)
@postprocess
def total(values):
    return sum(values)
"""


@pytest.fixture
def registry(tmp_path: pathlib.Path) -> Registry:
    return Registry.load([str(write_pipeline(tmp_path, "counting", PIPELINE))])


@pytest.fixture
def sqlite_store(tmp_path: pathlib.Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'api.db'}") as store:
        yield store


def make_client(store: Store, registry: Registry, token: str | None = None) -> Any:
    from fastapi.testclient import TestClient

    from madhatter.service._app import create_app

    app = create_app(store, registry, token_digest=digest(token) if token else None)
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture
def client(sqlite_store: Store, registry: Registry) -> Iterator[Any]:
    with make_client(sqlite_store, registry) as test_client:
        yield test_client


def test_pipelines_are_listed_with_steps_and_typed_params(client: Any) -> None:
    answer = client.get("/api/pipelines")
    assert answer.status_code == 200
    (pipeline,) = answer.json()
    assert pipeline["name"] == "counting"
    assert pipeline["steps"] == ["numbers", "double", "total"]
    params = {p["name"]: (p["type"], p["default"]) for p in pipeline["params"]}
    assert params == {
        "n": ("int", 4),
        "label": ("str", "x"),
        "factor": ("float", 2.0),
        "loud": ("bool", False),
    }
    svg = client.get("/api/pipelines/counting/graph.svg")
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.text.startswith("<svg")
    assert "double" in svg.text


def test_a_run_is_submitted_fetched_listed_and_cancelled(client: Any) -> None:
    created = client.post("/api/runs", json={"pipeline": "counting", "params": {"n": "7", "factor": 3}})
    assert created.status_code == 201
    run = created.json()
    assert (run["status"], run["params"]) == ("queued", {"n": 7, "factor": 3.0})  # converted
    assert client.get(f"/api/runs/{run['id']}").json()["id"] == run["id"]
    listed = client.get("/api/runs", params={"pipeline": "counting", "status": "queued"}).json()
    assert [r["id"] for r in listed["runs"]] == [run["id"]]
    assert listed["total"] == 1
    assert client.get("/api/runs", params={"status": "failed"}).json()["total"] == 0
    assert client.get(f"/api/runs/{run['id']}/result").status_code == 409  # not finished
    cancelled = client.post(f"/api/runs/{run['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    again = client.post(f"/api/runs/{run['id']}/rerun")
    assert again.status_code == 201
    assert again.json()["id"] != run["id"]
    assert again.json()["params"] == run["params"]


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"n": "many"}, "n", "expects int"),
        ({"n": 1.5}, "n", "expects int"),
        ({"n": True}, "n", "expects int"),
        ({"loud": "perhaps"}, "loud", "is a bool"),
        ({"factor": "fast"}, "factor", "expects float"),
        ({"nope": 1}, "nope", "unknown parameter"),
    ],
)
def test_bad_parameters_get_422_naming_the_field(
    client: Any, params: dict[str, Any], field: str, message: str
) -> None:
    answer = client.post("/api/runs", json={"pipeline": "counting", "params": params})
    assert answer.status_code == 422
    (problem,) = answer.json()["detail"]
    assert problem["loc"] == ["body", "params", field]
    assert message in problem["msg"]
    assert client.get("/api/runs").json()["total"] == 0  # nothing was queued


def test_bad_requests_get_clear_4xx_and_the_server_keeps_serving(client: Any) -> None:
    unknown = client.post("/api/runs", json={"pipeline": "nope"})
    assert unknown.status_code == 404
    assert "no pipeline named 'nope'" in unknown.json()["detail"]
    malformed = client.post(
        "/api/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422
    not_an_object = client.post("/api/runs", json=[1, 2])
    assert not_an_object.status_code == 422
    extra = client.post("/api/runs", json={"pipeline": "counting", "code": "import os"})
    assert extra.status_code == 422
    nested = client.post("/api/runs", json={"pipeline": "counting", "params": {"n": {"a": 1}}})
    assert nested.status_code == 422
    huge = client.post("/api/runs", content=b"x" * 100_000, headers=JSON)
    assert huge.status_code == 413
    for path in ("/api/runs/nope", "/api/runs/nope/events", "/api/runs/nope/result"):
        assert client.get(path).status_code == 404, path
    assert client.post("/api/runs/nope/cancel").status_code == 404
    assert client.post("/api/runs/nope/rerun").status_code == 404
    assert client.get("/api/runs", params={"status": "lost"}).status_code == 422
    assert client.get("/api/runs", params={"limit": 0}).status_code == 422
    assert client.get("/api/pipelines/nope").status_code == 404
    assert client.get("/api/pipelines").status_code == 200  # still serving


def test_the_openapi_schema_documents_the_api(client: Any) -> None:
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    assert {
        "/api/pipelines",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/events",
        "/api/runs/{run_id}/stream",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/result",
    } <= paths
    assert not any(p.startswith("/runs") or p == "/" for p in paths)  # pages are not API
    assert client.get("/docs").status_code == 200


def test_the_schema_describes_each_pipelines_parameters_and_every_answer(client: Any) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["SubmitRun"]
    assert body["discriminator"]["propertyName"] == "pipeline"
    (ref,) = [variant["$ref"] for variant in body["oneOf"]]
    counting = schema["components"]["schemas"][ref.rpartition("/")[2]]
    assert counting["properties"]["pipeline"]["enum"] == ["counting"]
    params = counting["properties"]["params"]
    assert params["additionalProperties"] is False
    assert set(params["properties"]) == {"n", "label", "factor", "loud"}
    operations = [
        (path, method, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]
    for path, method, operation in operations:
        if "{" in path or (path, method) == ("/api/runs", "post"):
            assert "404" in operation["responses"], (method, path)
    submit = schema["paths"]["/api/runs"]["post"]["responses"]
    assert {"201", "400", "404", "413", "422"} <= set(submit)
    assert submit["201"]["links"]["GetRun"]["operationId"] == "get_run"


def test_a_refused_method_names_every_method_the_path_serves(client: Any) -> None:
    for method, path, allowed in [
        ("OPTIONS", "/api/runs", "GET, POST"),
        ("PUT", "/api/runs", "GET, POST"),
        ("DELETE", "/api/runs/abc", "GET"),
        ("GET", "/api/runs/abc/cancel", "POST"),
    ]:
        answer = client.request(method, path)
        assert (answer.status_code, answer.headers["allow"]) == (405, allowed), (method, path)


def test_a_token_is_declared_in_the_schema_when_one_is_set(
    sqlite_store: Store, registry: Registry
) -> None:
    with make_client(sqlite_store, registry, token="t0ken") as secured:
        schema = secured.get("/openapi.json", headers={"authorization": "Bearer t0ken"}).json()
    assert schema["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert schema["security"] == [{"token": []}]
    assert "401" in schema["paths"]["/api/runs"]["get"]["responses"]


def _finish_as_a_worker(store: Store, run_id: str, result: bytes) -> None:
    lease = store.lease("test-worker")
    assert lease is not None
    assert lease.run.id == run_id
    events = [  # as a worker stores them: Event.to_dict() with the store's run id
        {
            "type": "RunStarted",
            "run_id": run_id,
            "at": 1.0,
            "pipeline": "counting",
            "engine": "serial",
            "workers": 1,
            "steps": ["numbers", "double", "total"],
        },
        {"type": "StepStarted", "run_id": run_id, "at": 1.0, "step": "double", "total": 4},
        {
            "type": "ChunkDone",
            "run_id": run_id,
            "at": 1.5,
            "step": "double",
            "chunk": 0,
            "items_in": 4,
            "items_out": 4,
            "seconds": 0.5,
            "worker": "thread-1",
            "started_at": 1.0,
        },
        {
            "type": "StepFinished",
            "run_id": run_id,
            "at": 1.5,
            "step": "double",
            "items_in": 4,
            "items_out": 4,
            "seconds": 0.5,
        },
        {"type": "RunFinished", "run_id": run_id, "at": 2.0, "status": "succeeded", "seconds": 1.0},
    ]
    assert store.add_events(run_id, lease.token, events)
    assert store.finish(
        run_id, lease.token, Outcome(SUCCEEDED, None, "json", result, result.decode(), 4)
    )


def test_a_run_whose_worker_died_shows_as_queued_again_with_no_worker_alive(
    client: Any, sqlite_store: Store
) -> None:
    run = client.post("/api/runs", json={"pipeline": "counting"}).json()
    assert sqlite_store.lease("dies", lease_seconds=-1.0) is not None  # expired at once
    shown = client.get(f"/api/runs/{run['id']}").json()
    assert (shown["status"], shown["lost"], shown["attempt"]) == ("queued", 1, 1)


def test_the_result_and_events_of_a_finished_run(client: Any, sqlite_store: Store) -> None:
    run = client.post("/api/runs", json={"pipeline": "counting"}).json()
    _finish_as_a_worker(sqlite_store, run["id"], b"12.0")
    assert client.get(f"/api/runs/{run['id']}/result").json() == 12.0
    page = client.get(f"/api/runs/{run['id']}/events").json()
    assert next(e["type"] for e in page["events"]) == "RunStarted"
    assert (
        client.get(f"/api/runs/{run['id']}/events", params={"after": page["next"]}).json()["events"]
        == []
    )


def test_the_stream_sends_progress_and_ends_with_the_run(client: Any, sqlite_store: Store) -> None:
    run = client.post("/api/runs", json={"pipeline": "counting"}).json()
    _finish_as_a_worker(sqlite_store, run["id"], b"12.0")
    with client.stream("GET", f"/api/runs/{run['id']}/stream") as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        text = "".join(answer.iter_text())
    blocks = [b for b in text.split("\n\n") if b.strip()]
    kinds = [re.search(r"^event: (\w+)", b, re.M).group(1) for b in blocks]  # type: ignore[union-attr]
    assert kinds[-1] == "end"
    assert "progress" in kinds
    assert kinds.count("madhatter") == 5
    progress = json.loads(blocks[kinds.index("progress")].partition("data: ")[2])
    double = next(s for s in progress["steps"] if s["name"] == "double")
    assert (double["done"], double["total"], double["percent"]) == (4, 4, 100.0)


def test_a_resumed_stream_sends_only_what_follows_and_counts_each_event_once(
    client: Any, sqlite_store: Store
) -> None:
    run = client.post("/api/runs", json={"pipeline": "counting"}).json()
    _finish_as_a_worker(sqlite_store, run["id"], b"12.0")
    seqs = [seq for seq, _ in sqlite_store.events(run["id"])]
    resume = {"Last-Event-ID": str(seqs[1])}  # the client saw RunStarted and StepStarted
    with client.stream("GET", f"/api/runs/{run['id']}/stream", headers=resume) as answer:
        text = "".join(answer.iter_text())
    assert re.findall(r"^id: (\d+)$", text, re.M) == [str(s) for s in seqs[2:]]
    progress = json.loads(text.split("event: progress\ndata: ")[1].split("\n")[0])
    double = next(s for s in progress["steps"] if s["name"] == "double")
    assert (double["done"], double["total"]) == (4, 4)


def test_pages_render_and_escape_what_users_typed(client: Any, sqlite_store: Store) -> None:
    home = client.get("/")
    assert home.status_code == 200
    assert 'for="counting-n"' in home.text
    assert "<svg" in home.text
    run = client.post(
        "/api/runs", json={"pipeline": "counting", "params": {"label": "<script>x</script>"}}
    )
    page = client.get(f"/runs/{run.json()['id']}")
    assert page.status_code == 200
    assert "<script>x</script>" not in page.text
    assert "\\u003cscript\\u003ex" in page.text  # the parameters, as escaped JSON
    assert "Waiting for a worker" in page.text
    _finish_as_a_worker(sqlite_store, run.json()["id"], b"12.0")
    done = client.get(f"/runs/{run.json()['id']}").text
    assert 'value="100.0"' in done
    assert "12.0" in done
    assert "Timeline" in done
    runs = client.get("/runs", params={"status": "succeeded"})
    assert run.json()["id"] in runs.text
    assert client.get("/runs", params={"status": "queued"}).text.count("/runs/") == 0


def test_form_posts_need_the_csrf_token(client: Any) -> None:
    client.get("/")  # sets the CSRF cookie
    csrf = client.cookies.get(CSRF_COOKIE)
    assert csrf
    forged = client.post(FORM, data={"param.n": "3"}, follow_redirects=False)
    assert forged.status_code == 403
    wrong = client.post(FORM, data={"csrf": "guess", "param.n": "3"}, follow_redirects=False)
    assert wrong.status_code == 403
    assert client.get("/api/runs").json()["total"] == 0
    posted = client.post(
        FORM,
        data={"csrf": csrf, "param.n": "3", "param.label": ""},
        follow_redirects=False,
    )
    assert posted.status_code == 303
    run_id = posted.headers["location"].rpartition("/")[2]
    assert client.get(f"/api/runs/{run_id}").json()["params"] == {"n": 3}
    bad = client.post(FORM, data={"csrf": csrf, "param.n": "x"}, follow_redirects=False)
    assert bad.status_code == 422
    assert "n: parameter" in bad.text
    cancel = client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert cancel.status_code == 303
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "cancelled"
    assert client.post(f"/runs/{run_id}/rerun", follow_redirects=False).status_code == 403
    rerun = client.post(f"/runs/{run_id}/rerun", data={"csrf": csrf}, follow_redirects=False)
    assert rerun.status_code == 303
    again = client.get(f"/api/runs/{rerun.headers['location'].rpartition('/')[2]}").json()
    assert (again["status"], again["params"]) == ("queued", {"n": 3})


def test_the_runs_page_is_paginated_and_filtered(client: Any, sqlite_store: Store) -> None:
    ids = [sqlite_store.submit("counting", {"n": i}).id for i in range(30)]
    sqlite_store.cancel(ids[0])
    first = client.get("/runs").text
    assert "30 run(s)" in first
    assert "page 1 of 2" in first
    assert ids[-1] in first
    assert ids[5] in first
    assert ids[4] not in first
    second = client.get("/runs", params={"page": 2}).text
    assert "page 2 of 2" in second
    assert ids[4] in second
    assert ids[0] in second
    cancelled = client.get("/runs", params={"status": "cancelled"}).text
    assert "1 run(s)" in cancelled
    assert ids[0] in cancelled


def test_a_token_is_needed_when_one_is_set(sqlite_store: Store, registry: Registry) -> None:
    with make_client(sqlite_store, registry, token="s3cret") as client:
        assert client.get("/api/runs").status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/openapi.json").status_code == 401
        ok = client.get("/api/runs", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        page = client.get("/runs", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"].startswith("/login")
        login = client.get("/login")
        csrf = client.cookies.get(CSRF_COOKIE)
        assert login.status_code == 200
        assert csrf
        refused = client.post("/login", data={"csrf": csrf, "token": "wrong", "next": "/runs"})
        assert refused.status_code == 401
        logged = client.post(
            "/login",
            data={"csrf": csrf, "token": "s3cret", "next": "//evil.example/"},
            follow_redirects=False,
        )
        assert logged.status_code == 303
        assert logged.headers["location"] == "/"
        assert client.get("/runs").status_code == 200  # the session cookie works


def test_tokens_are_generated_off_loopback_and_stored_only_as_a_digest(sqlite_store: Store) -> None:
    assert setup_token(sqlite_store, "127.0.0.1", None) == (None, None)
    assert setup_token(sqlite_store, "::1", None) == (None, None)
    expected, printed = setup_token(sqlite_store, "0.0.0.0", None)
    assert printed
    assert expected == digest(printed)
    assert sqlite_store.get_meta("token_sha256") == expected
    assert printed not in json.dumps(sqlite_store.get_meta("token_sha256"))
    assert setup_token(sqlite_store, "0.0.0.0", None) == (expected, None)  # printed only once
    assert setup_token(sqlite_store, "127.0.0.1", "given") == (digest("given"), None)
