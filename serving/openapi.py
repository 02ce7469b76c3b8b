"""The OpenAPI spec as callers meet the service: BentoML's generated document plus what the
guards in front of it answer (401 without a key, 413 over the body limit, 503 without a
model), and the bearer-key scheme. Served at /docs and /docs.json, committed as
docs/openapi.json, and what the property-based API tests check every answer against."""

from __future__ import annotations

import copy
import json
from typing import Any

from serving.guards import OPEN_PATHS, Receive, Scope, Send

MODEL_ROUTES = frozenset({"/score", "/explain", "/model"})
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {}},
    "required": ["error"],
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def documented_spec(generated: dict[str, Any]) -> dict[str, Any]:
    """`generated` (BentoML's spec) with the guards' answers and the key scheme added."""
    spec = copy.deepcopy(generated)
    # BentoML's own title block (its version, badges, chat links) tells a CRM integrator nothing.
    spec["info"] = {
        "title": "Lead scoring API",
        "version": _project_version(),
        "description": (
            "Calibrated conversion probability, grade, MQL/SQL stage and reasons for each lead "
            "(POST /score, /explain), from the registered @champion model (GET /model). "
            "Errors are JSON: {error, detail}; 400s name each field by position, e.g. [leads, 3, employees]."
        ),
    }
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the keys in LEADSCORE_API_KEYS (only when that variable is set).",
    }
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            responses = {str(code): answer for code, answer in operation.get("responses", {}).items()}
            operation["responses"] = responses
            if path not in OPEN_PATHS:
                # A key is needed only when keys are configured: both are valid ways to call.
                operation["security"] = [{"bearer": []}, {}]
                responses.setdefault("401", _error("Keys are configured and none (or a wrong one) was given"))
            if method == "post":
                # BentoML documents `detail` as a string; validation errors carry a list of
                # {loc, msg, type}, one per problem, naming the field and the lead's position.
                responses["400"] = _error("Malformed JSON, or a field of the wrong type, named by position")
                responses.setdefault("413", _error("Request body over service.max_body_bytes"))
                if path in MODEL_ROUTES:
                    responses.setdefault("415", _error("A body declared as anything but application/json"))
            if path in MODEL_ROUTES:
                responses.setdefault("503", _error("No model is loaded yet; the text says why"))
            if path == "/readyz":
                responses.setdefault("503", {"description": "No model is loaded yet"})
    return spec


def _project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("leadscore")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


class SpecRoute:
    """Answers GET /docs.json with the documented spec instead of BentoML's own."""

    def __init__(self, app, spec: dict[str, Any]) -> None:
        self.app = app
        self.body = json.dumps(spec).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/docs.json" and scope["method"] == "GET":
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": self.body})
            return
        await self.app(scope, receive, send)
