"""Validate responses against the served OpenAPI document."""

from __future__ import annotations

from typing import Any

import jsonschema

from ztpd.http.openapi import document


def response_schema(method: str, route: str, status: int) -> dict[str, Any]:
    doc = document()
    op = doc["paths"][route][method.lower()]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = doc["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    (media,) = resp["content"].values()
    schema: dict[str, Any] = media["schema"]
    return schema


def validate(body: Any, method: str, route: str, status: int) -> None:
    """Raise if ``body`` does not match what the document says ``route`` answers."""
    schema = {**response_schema(method, route, status), "components": document()["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)
