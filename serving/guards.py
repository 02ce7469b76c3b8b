"""ASGI guards in front of every route: API keys and the size of request bodies."""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_KEYS_ENV = "LEADSCORE_API_KEYS"
# Probes and metrics stay open so an orchestrator can check the process without a key.
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})


def api_keys_from_env() -> tuple[bytes, ...]:
    """Keys from $LEADSCORE_API_KEYS (comma-separated); none means no authentication."""
    raw = os.environ.get(API_KEYS_ENV, "")
    return tuple(k.strip().encode() for k in raw.split(",") if k.strip())


async def reply(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


def key_matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    """Compare against every key in constant time, so timing tells nothing about a key."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(token, key)
    return found


class ApiKeyGuard:
    """401 unless the request carries `Authorization: Bearer <key>` with a configured key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.keys = api_keys_from_env()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        token = header[7:].strip() if header[:7].lower() == b"bearer " else b""
        if not key_matches(token, self.keys):
            await reply(send, 401, "missing or invalid API key", [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class BodySizeGuard:
    """413 for bodies over the limit, decided from Content-Length before anything is parsed;
    a body without one is cut off once it passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await reply(send, 413, f"request body over {self.max_bytes} bytes")
            return
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return {"type": "http.disconnect"}
            return message

        await self.app(scope, limited, send)
