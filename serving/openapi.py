"""The OpenAPI document at ``/v1/openapi.json``: FastAPI's, patched where the API departs from FastAPI's
defaults. Request bodies are parsed by hand (serving/body.py, so UTF-8 and JSON errors get their own
codes), so their schemas are added here; errors are 400 in our shape, never 422; the security schemes
are the API keys'."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shenhe.serving.config import ServingConfig
from shenhe.serving.schemas import ClassifyRequest, ReviewDecisionIn

if TYPE_CHECKING:
    from shenhe.serving.runtime import Runtime


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model`` (read by hand, not by FastAPI)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def install_openapi(app: FastAPI) -> None:
    """Serve the patched document (built once, on the first request for it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        _, defs = models_json_schema([(ClassifyRequest, "validation"), (ReviewDecisionIn, "validation")],
                                     ref_template="#/components/schemas/{model}")
        schemas.update(defs.get("$defs", {}))
        runtime: Runtime | None = getattr(app.state, "runtime", None)
        config = runtime.config if runtime is not None else ServingConfig.from_env()
        schemas["ClassifyItem"]["properties"]["text"]["maxLength"] = config.max_text_chars
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for path in schema["paths"].values():
            for op in path.values():
                op["responses"].pop("422", None)
                op["responses"].setdefault("400", {
                    "description": "Bad request",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        if runtime is None or runtime.keys.enabled:
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
