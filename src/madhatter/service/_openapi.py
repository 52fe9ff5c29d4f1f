"""The API's OpenAPI schema, completed with what FastAPI cannot know from the models alone.

FastAPI derives ``/openapi.json`` from the routes and their pydantic models. Two things the models
cannot say are added here, so that a client generated from the schema is never surprised (and
``schemathesis --checks all`` finds nothing to report):

* **Each pipeline's parameters.** The model of ``POST /api/runs`` takes any ``params``; the server
  accepts only the parameters of the pipeline named, with values of their types. The request body
  becomes one variant per registered pipeline (``oneOf``, with ``pipeline`` as discriminator),
  each listing that pipeline's parameters with the JSON Schema of their values
  (:func:`._param_schema.value_schema`, written next to the check the server makes).
* **The token.** A server that asks for one declares an HTTP bearer security scheme, and 401 on
  every operation.

The schema is built once, on the first request for it, like FastAPI's own.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ._api import Problem
from ._extras import require_web
from ._registry import Registry

require_web("fastapi")

from fastapi import FastAPI  # noqa: E402  (after the check that names the extra)
from fastapi.openapi.utils import get_openapi  # noqa: E402

SUBMIT = "SubmitRun"
"""The component of ``POST /api/runs``'s body, as FastAPI names it after the model."""
_COMPONENT_NAME = re.compile(r"[A-Za-z0-9._-]+")


def install_schema(app: FastAPI, registry: Registry, *, token_required: bool) -> None:
    """Make ``app`` serve the completed schema (see the module docstring) at ``/openapi.json``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            describe_pipelines(schema, registry)
            if token_required:
                require_token(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise


def describe_pipelines(schema: dict[str, Any], registry: Registry) -> None:
    """Replace the generic body of ``POST /api/runs`` by one variant per registered pipeline.
    With none registered, the generic body stays (and every submission gets 404)."""
    components = schema["components"]["schemas"]
    generic = components[SUBMIT]
    variants: dict[str, str] = {}
    for index, name in enumerate(registry.names()):
        key = f"{SUBMIT}.{name}" if _COMPONENT_NAME.fullmatch(name) else f"{SUBMIT}.{index}"
        properties = copy.deepcopy(generic["properties"])
        properties["pipeline"] = {"type": "string", "enum": [name], "title": "Pipeline"}
        properties["params"] = {
            "type": "object",
            "title": "Params",
            "description": f"the run parameters of {name!r}; any left out take their default",
            "properties": registry.param_schemas(name),
            "additionalProperties": False,
            "default": {},
        }
        components[key] = {
            "type": "object",
            "title": f"{SUBMIT} {name}",
            "description": f"A run of pipeline {name!r} to queue.",
            "properties": properties,
            "required": ["pipeline"],
            "additionalProperties": False,
        }
        variants[name] = f"#/components/schemas/{key}"
    if variants:
        components[SUBMIT] = {
            "title": SUBMIT,
            "description": generic.get("description", ""),
            "oneOf": [{"$ref": ref} for ref in variants.values()],
            "discriminator": {"propertyName": "pipeline", "mapping": variants},
        }


def require_token(schema: dict[str, Any]) -> None:
    """Declare the bearer token every operation needs, and the 401 without it."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["token"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "the server's token (`madhatter serve --token`, or the one it generated)",
    }
    components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
    schema["security"] = [{"token": []}]
    refused = {
        "description": "no token, or a wrong one",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation.setdefault("responses", {})["401"] = refused
