"""The OpenAPI spec as callers meet the service: BentoML's generated document plus what the
guards in front of it answer (401 without a key, 413 over the body limit, 503 without a
model), and the bearer-key scheme. Served at /docs and /docs.json, committed as
docs/openapi.json, and what the property-based API tests check every answer against."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from serving.guards import OPEN_PATHS, Receive, Scope, Send
from serving.schemas import ModelInfo

MODEL_ROUTES = frozenset({"/score", "/explain", "/model"})
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {}},
    "required": ["error"],
}


# A 400 names each problem: where (`loc`: ["leads", 3, "employees"]), what, and its kind.
VALIDATION_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
                "required": ["loc", "msg", "type"],
            },
        },
    },
    "required": ["error", "detail"],
}
RELOAD = {
    "type": "object",
    "properties": {
        "live_version": {"type": ["string", "null"], "description": "The version serving after the check"},
        "changed": {"type": "boolean"},
        "previous_live_version": {"type": ["string", "null"]},
        "error": {"type": "string", "description": "Why the check failed (then the status is 503)"},
    },
    "required": ["live_version", "changed"],
}
# The routes whose body is a request the service reads (its own request models, in components).
REQUEST_MODELS = {"/score": "ScoreRequest", "/explain": "ExplainRequest"}
# Names a generated client makes its functions of (BentoML's read `lead_scoring__score`,
# `model_info_model_get`, ...), and the group each operation is listed under.
OPERATIONS = {
    ("/score", "post"): ("score", "Scoring"),
    ("/explain", "post"): ("explain", "Scoring"),
    ("/model", "get"): ("getModel", "Model"),
    ("/reload", "post"): ("reload", "Model"),
    ("/docs", "get"): ("getSpec", "Spec"),
    ("/healthz", "get"): ("healthz", "Infrastructure"),
    ("/livez", "get"): ("livez", "Infrastructure"),
    ("/readyz", "get"): ("readyz", "Infrastructure"),
    ("/metrics", "get"): ("metrics", "Infrastructure"),
}
TAGS = [
    {"name": "Scoring", "description": "Scores, grades, stages and reasons of leads, and one lead's full explanation"},
    {"name": "Model", "description": "The live model, and checking @champion now"},
    {"name": "Spec", "description": "This document"},
    {"name": "Infrastructure", "description": "Probes (plain text, no key needed) and Prometheus metrics"},
]
PLAIN_TEXT = {"text/plain": {"schema": {"type": "string"}}}
REQUEST_ID = {
    "description": "This request's id: the `span=` of the service's access-log line (give it to support)",
    "schema": {"type": "string"},
}
RETRY_AFTER = {
    "description": "Seconds until the workers look for a champion again (service.reload_seconds); absent when "
    "they do not look on their own",
    "schema": {"type": "integer"},
}

HELD_OFF = {"description": "Seconds until this address's keys are checked again", "schema": {"type": "integer"}}


def _error(description: str, schema: dict[str, Any] = ERROR) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def documented_spec(generated: dict[str, Any]) -> dict[str, Any]:
    """`generated` (BentoML's spec) with the guards' answers and the key scheme added."""
    spec = copy.deepcopy(generated)
    # pydantic writes JSON Schema 2020-12 (`"type": "null"`, `examples` lists): OpenAPI 3.1's
    # dialect, whatever version BentoML labels the document with. Labelled 3.0, validators refuse it.
    spec["openapi"] = "3.1.0"
    components = spec.get("components", {}).get("schemas", {})
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
    spec.pop("servers", None)  # BentoML's "." is no URL; without it, the host the spec came from
    spec["tags"] = TAGS
    for schema in components.values():
        for field in schema.get("properties", {}).values():
            # "default": null reads to client generators as "always present" (TypeScript then
            # required every optional attribute); a field left out is what null means here.
            if "default" in field and field["default"] is None:
                del field["default"]
    if "Lead" in components:
        _lead_by_model_kind(components)
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the keys in LEADSCORE_API_KEYS (only when that variable is set).",
    }
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            responses = {str(code): answer for code, answer in operation.get("responses", {}).items()}
            operation["responses"] = responses
            if (path, method) in OPERATIONS:
                operation["operationId"], tag = OPERATIONS[path, method]
                operation["tags"] = [tag]
            if path in OPEN_PATHS:  # the probes and /metrics answer text, not JSON
                responses["200"] = {**responses.get("200", {"description": "OK"}), "content": PLAIN_TEXT}
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            responses.pop("404", None)  # BentoML lists it for every API; a route that exists never answers it
            if path not in OPEN_PATHS:
                # A key is needed only when keys are configured: both are valid ways to call.
                operation["security"] = [{"bearer": []}, {}]
                responses.setdefault("401", _error("Keys are configured and none (or a wrong one) was given"))
                responses.setdefault("403", _error(
                    "No keys are configured and a request that reached the service on this machine named another "
                    "host than localhost, 127.0.0.1 or service.allowed_hosts"
                ))  # fmt: skip
                held = _error("service.failed_key_limit is set and this address gave that many wrong keys or "
                              "sign-ins within a minute: wait Retry-After")  # fmt: skip
                responses.setdefault("429", {**held, "headers": {"Retry-After": HELD_OFF}})
            if method == "post":
                responses.setdefault("413", _error("Request body over service.max_body_bytes"))
            if method == "post" and path in MODEL_ROUTES:
                # BentoML documents `detail` as a string; validation errors carry a list of
                # {loc, msg, type}, one per problem, naming the field and the lead's position.
                responses["400"] = _error("Malformed JSON, a field of the wrong type (named by position) or a query "
                                          "parameter (not read: everything is in the body)",
                                          VALIDATION_ERROR)  # fmt: skip
                unread = "A body declared as anything but application/json, not in UTF-8 (whatever its charset "
                responses.setdefault("415", _error(unread + "label says), or compressed"))
                if REQUEST_MODELS.get(path) in components:
                    # BentoML inlines the request model without its null branches (`as_of: null`
                    # is accepted); the component pydantic wrote is the model as it reads.
                    body = operation["requestBody"]["content"]["application/json"]
                    body["schema"] = {"$ref": f"#/components/schemas/{REQUEST_MODELS[path]}"}
            if path == "/model" and method == "get":
                # The route answers a plain dict (an old bundle's metadata must not fail it); this is its shape.
                components["ModelInfo"] = ModelInfo.model_json_schema()
                responses["200"] = _error("The live model", {"$ref": "#/components/schemas/ModelInfo"})
            if path == "/explain" and method == "post":
                # Named as a component, so a generated client calls the type Explanation (BentoML
                # inlines it under its own name, ExplanationIODescriptor).
                answer = responses["200"]["content"]["application/json"]
                components["Explanation"] = {**answer["schema"], "title": "Explanation"}
                answer["schema"] = {"$ref": "#/components/schemas/Explanation"}
            if path == "/reload":
                responses["200"] = _error("The check ran: `changed` says whether another version is now live", RELOAD)
                responses["503"] = _error(
                    "The check failed (registry unreachable, no @champion, a version that cannot be loaded); "
                    "the live version, if any, keeps serving",
                    RELOAD,
                )
            if path in MODEL_ROUTES:
                responses.setdefault("503", _error("No model is loaded yet; the text says why"))
            if path in MODEL_ROUTES or path == "/reload":
                responses.setdefault("504", {"description": "The request ran past BentoML's timeout (120 s)"})
            if path == "/readyz":
                responses["503"] = {"description": "No model is loaded yet", "content": PLAIN_TEXT}
            if path in MODEL_ROUTES and "503" in responses:
                responses["503"]["headers"] = {"Retry-After": RETRY_AFTER}
            for answer in responses.values():
                answer.setdefault("headers", {})["x-bentoml-request-id"] = REQUEST_ID
    if "/docs" in spec.get("paths", {}):
        # The same document at the name the 404 answers and most tools look for.
        same = copy.deepcopy(spec["paths"]["/docs"]["get"])
        spec["paths"]["/docs.json"] = {"get": {**same, "operationId": "getSpecJson"}}
    _drop_unused_components(spec)
    return spec


def _lead_by_model_kind(components: dict[str, Any]) -> None:
    """`Lead` as the two kinds of model read it, in place: a CRM model needs `created_at` and
    refuses `fields`; a flat-CSV model reads `fields` only. The request model takes both (the
    live model's kind decides), so a client generated from it would let `created_at` out."""
    lead = components["Lead"]
    crm = copy.deepcopy(lead)
    crm["title"] = "CrmLead"
    crm["description"] = "A lead of a CRM model (GET /model says `kind: crm`): attributes and activities"
    crm["required"] = [*lead.get("required", []), "created_at"]
    (moment,) = [branch for branch in lead["properties"]["created_at"]["anyOf"] if branch != {"type": "null"}]
    crm["properties"]["created_at"] = {**moment, "description": "When the lead was created"}
    crm["properties"]["fields"] = {
        "anyOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}],
        "description": "Flat-CSV models only: a CRM model refuses it",
    }
    flat = copy.deepcopy(lead)
    flat["title"] = "FlatLead"
    flat["description"] = "A lead of a flat-CSV model (GET /model says `kind: flat`): the export's columns in `fields`"
    # A flat model reads a lead only from `fields`: at least one of its columns is needed.
    flat["required"] = [*lead.get("required", []), "fields"]
    (columns,) = [branch for branch in lead["properties"]["fields"]["anyOf"] if branch != {"type": "null"}]
    flat["properties"]["fields"] = {**columns, "minProperties": 1, "description": lead["properties"]["fields"].get(
        "description", "")}  # fmt: skip
    for name in flat["properties"]:
        if name not in ("lead_id", "fields"):
            flat["properties"][name] = {
                "anyOf": [
                    {"type": "null"},
                    *([{**lead["properties"][name]["anyOf"][0], "maxItems": 0}] if name == "activities" else []),
                ],
                "description": "CRM models only: a flat-CSV model refuses it",
            }
    components["CrmLead"], components["FlatLead"] = crm, flat
    components["Lead"] = {
        "title": "Lead",
        "description": "One lead, in the shape the live model reads (GET /model `kind`)",
        "anyOf": [{"$ref": "#/components/schemas/CrmLead"}, {"$ref": "#/components/schemas/FlatLead"}],
    }


def _drop_unused_components(spec: dict[str, Any]) -> None:
    """Leave out the schemas no operation refers to (BentoML's task and error models), which
    would become dead types in a generated client."""
    schemas = spec.get("components", {}).get("schemas", {})
    used: set[str] = set()
    pending = [spec.get("paths", {})]
    while pending:
        text = json.dumps(pending.pop())
        for name in set(re.findall(r'"#/components/schemas/([^"]+)"', text)) - used:
            used.add(name)
            if name in schemas:
                pending.append(schemas[name])
    for name in set(schemas) - used:
        del schemas[name]


def _project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("leadscore")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


class SpecRoute:
    """Answers GET (and HEAD) /docs.json with the documented spec instead of BentoML's own."""

    def __init__(self, app, spec: dict[str, Any]) -> None:
        self.app = app
        self.body = json.dumps(spec).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/docs.json" and scope["method"] in ("GET", "HEAD"):
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": self.body if scope["method"] == "GET" else b""})
            return
        await self.app(scope, receive, send)
