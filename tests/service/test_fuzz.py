"""Fuzz the API from its own OpenAPI schema (schemathesis): whatever a client sends, no server
error, and every documented answer matches the schema."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from service_helpers import write_pipeline

from madhatter.service import Registry, open_store

pytestmark = pytest.mark.slow

PIPELINE = """
from madhatter import depends, postprocess, preprocess

@preprocess
def numbers(n: int = 4, label: str = "x", scale: float = 1.0, loud: bool = False):
    return list(range(n))

@depends(numbers)
@postprocess
def total(values):
    return sum(values)
"""

EXAMPLES = 300


def test_no_request_makes_a_server_error(tmp_path: pathlib.Path) -> None:
    schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (a test dependency)")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    from madhatter.service._app import create_app

    store = open_store(f"sqlite:///{tmp_path / 'fuzz.db'}")
    registry = Registry.load([str(write_pipeline(tmp_path, "fuzzed", PIPELINE))])
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(store, registry))
    # The event stream is left out: it lasts as long as its run, and no worker runs any here.
    fuzzed = schema.exclude(path_regex=r"/stream$")
    seen: set[int] = set()

    cases = st.one_of(
        fuzzed.as_strategy(GenerationMode.POSITIVE),  # valid by the schema
        fuzzed.as_strategy(GenerationMode.NEGATIVE),  # invalid by the schema
    )

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def fuzz(case: Any) -> None:
        response = case.call()
        seen.add(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    try:
        fuzz()
    finally:
        store.close()
    assert {200, 404, 422} <= seen  # it reached real answers and rejections
