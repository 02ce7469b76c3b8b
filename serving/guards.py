"""ASGI guards in front of every route: API keys and the size of request bodies."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote

from features.clean import control_escaped

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_KEYS_ENV = "LEADSCORE_API_KEYS"
# Probes and metrics stay open so an orchestrator can check the process without a key.
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
# The pages' login form checks the key itself; the cookie it sets carries a token of the key
# (`page_token`), never the key.
LOGIN_PATHS = frozenset({"/ui/login"})
KEY_COOKIE = "leadscore_key"


# What BentoML's request metrics and access log name a request by: its route, never its raw
# path (made-up paths, lead ids, line breaks).
ROUTES = OPEN_PATHS | LOGIN_PATHS | frozenset(
    {"/", "/score", "/explain", "/model", "/reload", "/docs", "/docs.json", "/schema.json",
     "/ui", "/ui/", "/ui/logout", "/ui/digest", "/ui/model", "/ui/leads"}
)  # fmt: skip
REAL_PATH = "leadscore.real_path"


def route_of(path: str) -> str:
    """The route a path is served by, as metrics and the access log name it."""
    if path in ROUTES:
        return path
    if path.startswith("/ui/leads/"):
        return "/ui/leads/{lead_id}"
    if path.startswith("/static_content/"):
        return "/static_content/{file}"
    return "/{other}"


def name_requests_by_route() -> None:
    """BentoML's request metrics and access log name each request by its raw path: every
    made-up path (answered 401 or 404) added series to the open `/metrics` for good (5,000 of
    them: 419 MB, 22 s to read), a lead's id in a page's path showed there, and a path with a
    line break forged access-log lines. Both middlewares sit outside a service's own, so their
    calls are wrapped (each, since metrics can be turned off): they see the route (`route_of`),
    and `RealPath`, the service's first middleware, gives the app the path back."""
    from bentoml._internal.server.http.access import AccessLogMiddleware
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    for middleware in (RunnerTrafficMetricsMiddleware, AccessLogMiddleware):
        if not getattr(middleware, "_named_by_route", False):
            middleware.__call__ = _by_route(middleware.__call__)
            middleware._named_by_route = True


def _by_route(call: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    async def by_route(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        # WebSockets too: the service has none, but uvicorn accepts the upgrade and both
        # middlewares label it by its path.
        if scope["type"] in ("http", "websocket") and route_of(path) != path:
            scope = {**scope, "path": route_of(path), REAL_PATH: scope.get(REAL_PATH, path)}
        await call(self, scope, receive, send)

    return by_route


class RealPath:
    """Gives the path `name_requests_by_route` hid from BentoML's metrics back to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        real = scope.get(REAL_PATH)
        if real is not None:
            scope = {key: value for key, value in scope.items() if key != REAL_PATH}
            scope["path"] = real
        await self.app(scope, receive, send)


REQUEST_ID_HEADER = b"x-bentoml-request-id"


class HttpOnly:
    """A middleware that acts on HTTP requests (`http`) and passes anything else (WebSocket,
    lifespan) through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestIdHeader(HttpOnly):
    """Gives every answer the request id BentoML gives its handlers' answers (the `span` of the
    access log line): the guards' 401, 413, 415 and 503 and the 404 and 405 lacked it, and those
    are the answers an integrator asks support about."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        def request_id() -> list[tuple[bytes, bytes]]:
            found = _request_id()
            return [(REQUEST_ID_HEADER, found)] if found else []

        await self.app(scope, receive, _adding_headers(send, request_id))


def _adding_headers(send: Send, extra: Callable[[], list[tuple[bytes, bytes]]]) -> Send:
    """`send` with the headers `extra()` names added to the answer, unless the answer has them."""

    async def adding(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or [])
            present = {name.lower() for name, _ in headers}
            missing = [item for item in extra() if item[0] not in present]
            if missing:
                message = {**message, "headers": headers + missing}
        await send(message)

    return adding


# The pages run no script and load nothing: inline styles and SVG, data: icons, forms posting
# back here. A policy that allows only that makes any markup slipped past escaping inert.
# A static report's files carry the first part in a meta tag (which cannot forbid framing).
PAGE_SOURCES = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"
PAGES_POLICY = f"{PAGE_SOURCES}; form-action 'self'; frame-ancestors 'none'"
_FRAMING_HEADERS = ((b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"))


class SecurityHeaders(HttpOnly):
    """No answer may be framed by another site (the pages' buttons clicked through a decoy) or
    read as another type than it says; the pages also get `PAGES_POLICY`, and no referrer leaves
    with a lead's id in its address. BentoML's own API page (Swagger UI, its scripts) only the first."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        extra = list(_FRAMING_HEADERS)
        if scope["path"] == "/ui" or scope["path"].startswith("/ui/"):
            extra += [(b"content-security-policy", PAGES_POLICY.encode()), (b"referrer-policy", b"same-origin")]
        else:
            extra.append((b"content-security-policy", b"frame-ancestors 'none'"))
        await self.app(scope, receive, _adding_headers(send, lambda: extra))


def _request_id() -> bytes | None:
    """The id BentoML's tracing gave this request, formatted as BentoML writes it."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.context import trace_context

    if trace_context.request_id is None:
        return None
    return format(trace_context.request_id, BentoMLContainer.logging_formatting.get()["span_id"]).encode()


def api_keys_from_env() -> tuple[bytes, ...]:
    """Keys from $LEADSCORE_API_KEYS (comma-separated); none means no authentication."""
    raw = os.environ.get(API_KEYS_ENV, "")
    return tuple(k.strip().encode() for k in raw.split(",") if k.strip())


def api_keys_problem() -> str | None:
    """$LEADSCORE_API_KEYS set to something that holds no key (`,`, spaces): meant to require
    keys, it would let every request in."""
    raw = os.environ.get(API_KEYS_ENV, "")
    if raw and not api_keys_from_env():
        return f"{API_KEYS_ENV} is set but holds no key ({raw!r}): give the keys, comma-separated, or unset it"
    return None


async def reply(
    send: Send,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    problems: list[tuple[tuple, str]] | None = None,
) -> None:
    """A JSON answer {"error"}; with `problems`, a 400 in the shape of the service's validation
    errors: {"error", "detail": [{loc, msg, type}]}."""
    answer: dict = {"error": message}
    if problems:
        answer["detail"] = [{"loc": list(loc), "msg": msg, "type": "not_read"} for loc, msg in problems]
    body = json.dumps(answer).encode()
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


# A page token opens the pages for a working day, then the browser asks for the key again: a
# token copied off a browser stops working on its own, not only when its key is removed.
PAGE_TOKEN_SECONDS = 12 * 3600
CLOCK_SLACK_SECONDS = 60  # a token issued this far "in the future" still counts (clocks of workers)


def page_token(key: bytes, issued: int | None = None) -> bytes:
    """What the pages' cookie holds for an API key: the moment it was issued and a keyed hash of
    the key and that moment. A cookie read off a browser then opens the pages, not the API, does
    not give the key away, and ends after `PAGE_TOKEN_SECONDS`, or sooner once its key is removed
    from $LEADSCORE_API_KEYS and the service restarted (keys are read at start)."""
    issued = int(time.time()) if issued is None else issued
    mac = hmac.new(key, b"leadscore pages cookie %d" % issued, hashlib.sha256).hexdigest()
    return b"%d.%s" % (issued, mac.encode())


def _token_issued(token: bytes, now: float | None = None) -> int | None:
    """When a page token says it was issued, if that is within its lifetime; else None."""
    issued_text, dot, _ = token.partition(b".")
    if not dot or not issued_text.isdigit() or len(issued_text) > 12:
        return None
    issued = int(issued_text)
    now = time.time() if now is None else now
    return issued if now - PAGE_TOKEN_SECONDS <= issued <= now + CLOCK_SLACK_SECONDS else None


def page_token_matches(token: bytes, keys: tuple[bytes, ...], now: float | None = None) -> bool:
    """Whether a page token was issued for one of these keys and is still within its lifetime."""
    issued = _token_issued(token, now)
    return issued is not None and key_matches(token, tuple(page_token(key, issued) for key in keys))


def page_token_guessed(token: bytes, keys: tuple[bytes, ...]) -> bool:
    """A page token within its lifetime that no key made: anyone can make one from a guessed
    key (it is a keyed hash of the key), so it is a key tried. An expired one is a browser's."""
    return _token_issued(token) is not None and not page_token_matches(token, keys)


def cookie_key(headers: dict[bytes, bytes]) -> bytes:
    """The page token a browser sends in the pages' cookie (empty when there is none)."""
    jar = SimpleCookie()
    try:
        jar.load(headers.get(b"cookie", b"").decode("latin-1"))
    except CookieError:
        return b""
    morsel = jar.get(KEY_COOKIE)
    return morsel.value.encode("latin-1", "replace") if morsel else b""


async def _to_login(scope: Scope, send: Send) -> None:
    query = scope.get("query_string") or b""
    target = quote(scope["path"] + ("?" + query.decode("latin-1") if query else ""))
    headers = [(b"location", f"/ui/login?next={target}".encode()), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


# A key shorter than this can be guessed by a script against the service; `secrets.token_urlsafe(24)`
# gives 32 characters.
MIN_KEY_LENGTH = 16
FAILED_KEY_WINDOW_SECONDS = 60.0


def short_api_keys() -> list[int]:
    """The 1-based places in $LEADSCORE_API_KEYS of keys shorter than `MIN_KEY_LENGTH` (never the
    keys themselves: they would end up in logs)."""
    return [place for place, key in enumerate(api_keys_from_env(), start=1) if len(key) < MIN_KEY_LENGTH]


def short_keys_said(places: list[int]) -> str:
    which = ", ".join(map(str, places))
    return (
        f"key {which} of {API_KEYS_ENV} {'is' if len(places) == 1 else 'are'} shorter than {MIN_KEY_LENGTH} "
        "characters: a short key can be guessed; make one with "
        "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
    )


class FailedKeyThrottle:
    """Failed key checks per client address: past `limit` within `window` seconds, the address is
    answered 429 without its key being checked until the oldest failure leaves the window, so a
    script cannot try keys (or sign-ins) at the rate the service answers. Counted per worker.
    Opt-in (`service.failed_key_limit`): clients that share an address (behind a proxy on another
    machine, a NAT) share the count, so one of them trying keys holds the others off too."""

    MAX_ADDRESSES = 10_000  # beyond, the address that failed longest ago is forgotten

    def __init__(self, limit: int, window: float = FAILED_KEY_WINDOW_SECONDS, clock=time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.failures: dict[str, list[float]] = {}

    def _recent(self, address: str) -> list[float]:
        since = self.clock() - self.window
        times = [t for t in self.failures.get(address, ()) if t > since]
        if times:
            self.failures[address] = times
        else:
            self.failures.pop(address, None)
        return times

    def wait_seconds(self, address: str) -> float:
        """How long the address must wait before its key is checked again (0: now)."""
        if not self.limit or address not in self.failures:
            return 0.0
        times = self._recent(address)
        return max(0.0, times[-self.limit] + self.window - self.clock()) if len(times) >= self.limit else 0.0

    def failed(self, address: str) -> float:
        """Count a failure now; returns its moment (for `forgive`)."""
        moment = self.clock()
        if not self.limit:
            return moment
        times = self._recent(address)
        times.append(moment)
        self.failures.pop(address, None)  # re-inserted last: the dict's order is that of last failures
        self.failures[address] = times[-self.limit :]
        if len(self.failures) > self.MAX_ADDRESSES:
            del self.failures[next(iter(self.failures))]
        return moment

    def forgive(self, address: str, moment: float) -> None:
        """Take back the failure counted at `moment` (a sign-in counted before its key was checked),
        not another one counted since."""
        times = self.failures.get(address)
        if times and moment in times:
            times.remove(moment)
            if not times:
                del self.failures[address]


def client_address(scope: Scope) -> str:
    """Whom failed keys are counted against: the client's address, an IPv6 one by its /64 (a
    single host is given a whole /64 and could otherwise try from a new address each time)."""
    client = scope.get("client") or ("", 0)
    text = str(client[0] or "")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client of a service listening on "::"
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class ApiKeyGuard:
    """401 unless the request carries `Authorization: Bearer <key>` with a configured key.

    The pages (`/ui/...`) also take the token of a key (`page_token`) from the cookie their
    login form sets, since a browser sends no header by itself; a page request without a valid
    key or token is sent to the login form. With `failed_key_limit`, an address whose keys or
    sign-ins failed that many times in a minute is answered 429 until the minute has passed.
    """

    def __init__(self, app: ASGIApp, failed_key_limit: int = 0) -> None:
        self.app = app
        self.keys = api_keys_from_env()
        self.misconfigured = api_keys_problem()  # fails closed: `leadscore serve` refuses to start
        self.throttle = FailedKeyThrottle(failed_key_limit)
        log = logging.getLogger(__name__)
        if self.misconfigured:
            log.error("every request is refused: %s", self.misconfigured)
        elif short := short_api_keys():
            log.warning(short_keys_said(short))

    async def _throttled(self, address: str, send: Send) -> bool:
        wait = self.throttle.wait_seconds(address)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            await reply(
                send,
                429,
                f"too many failed API keys or sign-ins from this address: try again in {seconds} s",
                [(b"retry-after", str(seconds).encode())],
            )
        return wait > 0

    async def _signing_in(self, scope: Scope, receive: Receive, send: Send, address: str) -> None:
        """The login form checks the key itself: a sign-in counts as failed until it answers
        otherwise than 401 (counted on the way in: 1,000 sent at once would all be checked
        before the first failure came back)."""
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if await self._throttled(address, send):
            return
        counted = self.throttle.failed(address)

        async def watched(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 401:
                self.throttle.forgive(address, counted)
            await send(message)

        await self.app(scope, receive, watched)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        # Not ready either: an orchestrator must not send traffic to a service that refuses it all.
        refused = path not in OPEN_PATHS or path == "/readyz"
        if self.misconfigured and scope["type"] == "http" and refused:
            await reply(send, 503, self.misconfigured)
            return
        if scope["type"] != "http" or not self.keys or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        address = client_address(scope) if self.throttle.limit else ""  # counted only when asked
        if path in LOGIN_PATHS:
            await self._signing_in(scope, receive, send, address)
            return
        if await self._throttled(address, send):
            return
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization", b"")
        token = header[7:].strip() if header[:7].lower() == b"bearer " else b""
        page = path == "/ui" or path.startswith("/ui/")
        if token:
            allowed = key_matches(token, self.keys)
        else:  # a browser on the pages sends the token its sign-in set, never the key
            allowed = page and page_token_matches(cookie_key(headers), self.keys)
        if not allowed:
            if token or (page and page_token_guessed(cookie_key(headers), self.keys)):  # not an expired one
                self.throttle.failed(address)
            if page and scope.get("method") == "GET":
                await _to_login(scope, send)
                return
            await reply(send, 401, "missing or invalid API key", [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


def host_name(header: bytes) -> str:
    """The host a Host header names, without its port, in lower case ("[::1]:3000" is "::1")."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return (text.rsplit(":", 1)[0] if text.count(":") == 1 else text).rstrip(".")  # "localhost." is localhost


def is_loopback(host: str) -> bool:
    """localhost (and names under .localhost, which browsers never look up) or a loopback address."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # An IPv4 connection to a service listening on "::" arrives from ::ffff:127.0.0.1.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class HostGuard:
    """Without API keys, a request that reached the service on a loopback address must be
    addressed to a loopback host (or one of `allowed_hosts`): else a web page of any site the
    user opens could rebind its own name to 127.0.0.1 and read the pages and the API as its
    own (DNS rebinding). Requests that arrived on another interface (a CRM on the network),
    and every request when keys are required, pass: keys are what protects those."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.open = not api_keys_from_env() and not api_keys_problem()
        self.allowed = frozenset(host_name(host.encode()) for host in allowed_hosts)  # as requests read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.open and scope["type"] == "http" and scope.get("path", "") not in OPEN_PATHS:
            server = scope.get("server") or ("", 0)
            header = dict(scope.get("headers") or []).get(b"host")
            if header is not None and is_loopback(str(server[0])):
                name = host_name(header)
                if not is_loopback(name) and name not in self.allowed:
                    shown = control_escaped(name[:100])
                    await reply(
                        send,
                        403,
                        f"host {shown!r} is not this service: without API keys it answers requests on this "
                        "machine only when addressed to localhost or 127.0.0.1 (a page of another site could "
                        "otherwise read it); set LEADSCORE_API_KEYS, or list the name in service.allowed_hosts",
                    )
                    return
        await self.app(scope, receive, send)


class BodySizeGuard:
    """413 for bodies over the limit, before anything is parsed: decided from Content-Length,
    or, for a chunked body without one, by reading it up to the limit first."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await reply(send, 413, f"request body over {self.max_bytes} bytes")
                return
            await self.app(scope, receive, send)
            return
        # Cutting the stream off midway instead would end in the framework's 500.
        messages: list[MutableMapping[str, Any]] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await reply(send, 413, f"request body over {self.max_bytes} bytes")
                return
            if not message.get("more_body"):
                break
        buffered = iter(messages)

        async def replay() -> MutableMapping[str, Any]:
            return next(buffered, None) or await receive()

        await self.app(scope, replay, send)


def _utf8(body: bytes) -> bool:
    if body.isascii():
        return b"\x00" not in body  # NULs between ASCII letters: UTF-16 without its byte order mark
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class JsonBodyGuard:
    """415 for a body on the JSON APIs that is declared as anything but JSON (BentoML would
    try to parse e.g. `multipart/form-data` without a boundary and answer 500) or not in
    UTF-8; 400 for a query
    string or a name repeated in one object of the body; the body passed on without a UTF-8
    byte order mark."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-type", b"application/json")
            media = declared.split(b";", 1)[0].strip().lower()
            if media not in (b"application/json", b""):
                await reply(send, 415, f"send the body as application/json, not {media.decode('latin-1')[:80]}")
                return
            charset = re.search(rb";\s*charset\s*=\s*\"?([^\s;\"]*)", declared, re.IGNORECASE)
            declared_charset = charset[1].lower() if charset else b""
            encoding = headers.get(b"content-encoding", b"identity").strip().lower()
            if encoding not in (b"identity", b""):  # it read as "Invalid JSON at column 1"
                shown = encoding.decode("latin-1")[:40]
                await reply(send, 415, f"send the body uncompressed: Content-Encoding {shown} is not read")
                return
            if scope.get("query_string"):
                # `?as_of=2020-01-01` would score as of now without a word, as an unknown body field would.
                names = sorted({part.split(b"=", 1)[0].decode("latin-1")[:40]
                                for part in scope["query_string"].split(b"&") if part})  # fmt: skip
                problems = [(("query", name), "query parameters are not read: send it in the JSON body")
                            for name in (names or ["?"])[:20]]  # fmt: skip
                await _problems(send, problems)
                return
            body, ended = await _whole_body(receive)
            body = body.removeprefix(codecs.BOM_UTF8)
            if ended is None and (declared_charset.startswith((b"utf-16", b"utf-32")) or not _utf8(body)):
                # JSON is UTF-8 (RFC 8259), whatever the label says; Latin-1 bytes were a 400
                # "invalid unicode code point", UTF-16 "key must be a string at line 1 column 2".
                said = f" (declared charset {declared_charset.decode('latin-1')[:40]})" if declared_charset else ""
                await reply(send, 415, f"send the body in UTF-8, as JSON is written{said}")
                return
            repeated = []
            if ended is None and len(body) > _INLINE_CHECK_BYTES:
                # Parsed off the event loop, which the probes and every other request share.
                repeated = await asyncio.to_thread(repeated_names, body)
            elif ended is None:
                repeated = repeated_names(body)
            if repeated:
                await _problems(send, repeated)
                return
            receive = _replaying(body, ended, receive)
        await self.app(scope, receive, send)


async def _problems(send: Send, problems: list[tuple[tuple, str]]) -> None:
    """A 400 naming the request's problems, the first in its message, as the service's own."""
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    where = ".".join(str(part) for part in problems[0][0])
    await reply(send, 400, f"{count} in the request, at {where}: {problems[0][1]}", problems=problems)


async def _whole_body(receive: Receive) -> tuple[bytes, MutableMapping[str, Any] | None]:
    """The request's body, all its chunks joined (`BodySizeGuard` bounds it), and the message
    that cut it short (a disconnect) or None."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), None


def _replaying(body: bytes, ended: MutableMapping[str, Any] | None, receive: Receive) -> Receive:
    """`receive` that gives `body` in one message, then the message that cut it short, then
    what the client sends after."""
    pending = [*([ended] if ended else []), {"type": "http.request", "body": body, "more_body": ended is not None}]

    async def replay() -> MutableMapping[str, Any]:
        return pending.pop() if pending else await receive()

    return replay


class _Repeated(dict):
    """An object of the body in which a name came more than once (`names`: how many times each)."""

    names: dict[str, int]


_INLINE_CHECK_BYTES = 4_000_000  # a 1,000-lead body is about 1.7 MB: checked inline
REPEATED_NAME = "sent {n} times in one object: send each field once (which copy counts is up to the parser)"


def repeated_names(body: bytes, limit: int = 20) -> list[tuple[tuple, str]]:
    """Where the JSON body repeats a name within one object (`{"do_not_contact": true, ...,
    "do_not_contact": false}` read as the last, an opted-out lead as one to call), as
    (location, reason), the first `limit`; empty also when the body is not JSON (its parser
    says why, as for any other body)."""
    try:  # First a pass that keeps nothing: most bodies repeat no name, and it costs half of the one below.
        json.loads(body, object_pairs_hook=_repeats_a_name)
    except _RepeatedName:
        pass
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested past the parser's depth
        return []
    else:
        return []
    found = 0

    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict:
        nonlocal found
        result = dict(pairs)
        if len(result) == len(pairs) or found >= limit:  # past the limit: nothing more is reported
            return result
        found += 1
        repeated = _Repeated(result)
        counts = Counter(name for name, _ in pairs)
        repeated.names = {name: n for name, n in counts.items() if n > 1}
        return repeated

    try:
        parsed = json.loads(body, object_pairs_hook=pairs_to_dict)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested past the parser's depth
        return []
    if not found:
        return []
    problems: list[tuple[tuple, str]] = []
    # Containers only, each with a link to its parent: a path is built for a problem alone (one
    # per value made a body of a million nested numbers take gigabytes).
    stack: list[tuple[tuple | None, Any]] = [(None, parsed)]
    while stack and len(problems) < limit:
        place, node = stack.pop()
        if isinstance(node, _Repeated):
            where = _path(place)
            problems += [((*where, name), REPEATED_NAME.format(n=n)) for name, n in node.names.items()]
        children = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend(reversed([((place, key), child) for key, child in children if isinstance(child, (dict, list))]))
    return problems[:limit]


class _RepeatedName(Exception):
    """An object of the body repeats a name: where is found by a second pass."""


def _repeats_a_name(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1 and len({name for name, _ in pairs}) != len(pairs):
        raise _RepeatedName


def _path(place: tuple | None) -> tuple:
    """The keys from the body's top to a container, from its (parent's place, key) links."""
    keys = []
    while place is not None:
        place, key = place
        keys.append(key)
    return tuple(reversed(keys))


_TAG_MANAGER = re.compile(r"<!-- Google Tag Manager.*?<!-- End Google Tag Manager[^>]*-->", re.DOTALL)
_FALLBACK_PAGE = (
    b'<!DOCTYPE html><html lang="en"><head><meta charset="UTF-8"><title>Lead scoring API</title></head><body>'
    b'<p>The API: <a href="/docs.json">OpenAPI spec</a>. The pages: <a href="/ui/">/ui/</a>.</p></body></html>'
)


def api_page_html() -> bytes:
    """BentoML's API page (Swagger UI at `/`) without the Google Tag Manager its file loads:
    the service runs on the user's own machines and calls out to no one. A plain page with
    links when the file is not where BentoML 1.4 keeps it or still names a tracker."""
    import _bentoml_impl.server

    try:
        text = (Path(_bentoml_impl.server.__file__).parent / "main-openapi.html").read_text(encoding="utf-8")
    except OSError:
        return _FALLBACK_PAGE
    cleaned = _TAG_MANAGER.sub("", text)
    return _FALLBACK_PAGE if "googletagmanager" in cleaned else cleaned.encode()


class ApiPage:
    """GET / answers `api_page_html()` instead of BentoML's page (its static files are unchanged)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.body = api_page_html()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self.body})


class RedactValidationErrors(logging.Filter):
    """BentoML logs a rejected body's pydantic error with its traceback, whose text quotes the
    input (a lead's e-mail, name, phone): log where and why instead, never the values, as a
    warning (a client's mistake is not a server error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        if type(error).__name__ == "ValidationError" and hasattr(error, "errors"):
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['type']}" for e in error.errors(include_input=False)[:10]
            )
        elif getattr(getattr(error, "error_code", None), "value", 500) < 500:
            problems = str(error)[:500]  # the service's own 4xx texts name a field and a position
        else:
            return True
        # BentoML says "Exception on /score [POST]": a client's mistake is no exception of the service.
        said = re.fullmatch(r"Exception on (\S+) \[(\w+)\]", record.getMessage())
        request = f"{said[2]} {said[1]}" if said else record.getMessage()
        # Escaped: a key (a field's name) is the client's text.
        record.msg = f"{request} refused (the client's request): {control_escaped(problems)}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def redact_request_errors() -> None:
    """Attach `RedactValidationErrors` to the logger BentoML reports request errors on."""
    logging.getLogger("bentoml._internal.server.http_app").addFilter(RedactValidationErrors())


# A thousand leads with a bad column each made an answer of megabytes, 200 activities each with a
# date in the wrong form one of 58 MB (more than a Salesforce callout reads).
MAX_PROBLEMS_LISTED = 200


def _listed(problems: list[dict]) -> list[dict]:
    """The first `MAX_PROBLEMS_LISTED` problems, and one that counts the rest."""
    if len(problems) <= MAX_PROBLEMS_LISTED:
        return problems
    rest = len(problems) - MAX_PROBLEMS_LISTED
    loc = problems[MAX_PROBLEMS_LISTED].get("loc") or []
    more = {"loc": list(loc[:1]), "msg": f"and {rest:,} more problems, not listed: fix these first",
            "type": "not_listed"}  # fmt: skip
    return [*problems[:MAX_PROBLEMS_LISTED], more]


def _validation_summary(count: int, first: dict) -> str:
    """'2 problems in the request; the first, at leads.0.employees: Input should be ...', so a
    CRM that logs only `error` still learns what to fix."""
    text = f"{count} problem{'s' if count != 1 else ''} in the request"
    where = ".".join(str(part) for part in first.get("loc", ()))
    if where:
        text += f"{'; the first' if count > 1 else ''}, at {where}"
    return f"{text}: {first.get('msg', '')}"


def error_body(status: int, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> bytes | None:
    """The JSON `{error, detail}` the spec promises for an error answer of the framework's,
    or None to leave `body` as it is.

    - The router's 404 and 405 are plain text ("Not Found").
    - BentoML's 400 says "2 validation error for request" and links each problem to pydantic's
      site: the count is said plainly, with the first problem, and the links are dropped.
    - FastAPI's own errors (`/ui/login` without its form) carry only `detail`, with the input.
    """
    media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if method == "HEAD":
        return None  # no body to rewrite
    routing = {404: "Not Found", 405: "Method Not Allowed"}
    if media == b"text/plain" and status in routing:
        return _routing_error(status, method, path, headers)
    if media != b"application/json":
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or "detail" not in answer:
        return None
    detail = answer["detail"]
    if "error" not in answer and detail == routing.get(status):  # the same, from a mounted FastAPI app
        return _routing_error(status, method, path, headers)
    if isinstance(detail, list) and detail and all(isinstance(p, dict) and "loc" in p for p in detail):
        # Not the input either: FastAPI echoes it, and a lead's values are personal data.
        listed = [plain_problem({k: v for k, v in p.items() if k not in ("url", "input")}) for p in _listed(detail)]
        return json.dumps({"error": _validation_summary(len(detail), listed[0]), "detail": listed}).encode()
    if "error" not in answer:
        error = detail if isinstance(detail, str) else "invalid request"
        return json.dumps({"error": error, "detail": detail}).encode()
    return None


def plain_problem(problem: dict) -> dict:
    """A problem in words a CRM integrator reads: the only pattern of the API is the lead id's,
    whose regular expression said nothing to them."""
    if problem.get("type") == "string_pattern_mismatch":
        problem = {**problem, "msg": "should hold a visible character, and no control character (tab, line break)"}
        problem.pop("ctx", None)
    elif problem.get("type") in MOMENT_PROBLEMS:
        # The parser's reason misleads ("invalid character in year" of "09/01/2026", "extra
        # characters at the end" of hour 25): what the API reads is said instead.
        said = str(problem.get("msg", ""))
        # A value out of range is said as the parser says it (2026-02-30: "day value is outside expected range").
        reason = said.rsplit(", ", 1)[-1] if "outside expected range" in said else "not a date or time this API reads"
        problem = {**problem, "msg": f"{reason}; {MOMENT_FORMATS}"}
        problem.pop("ctx", None)
    return problem


MOMENT_PROBLEMS = frozenset({"datetime_parsing", "datetime_from_date_parsing", "datetime_type"})
MOMENT_FORMATS = (
    "send ISO 8601 (2026-10-22T12:00:00Z, or 2026-10-22 read as UTC; hours 00-23, an offset as Z or +09:00) or "
    "Unix time in seconds (milliseconds above 2e10)"
)


def _no_route(method: str, path: str) -> str:
    return f"no route {method} {path}: the API is described at /docs.json"


def _routing_error(status: int, method: str, path: str, headers: dict[bytes, bytes]) -> bytes:
    if status == 404:
        message = _no_route(method, path)
    else:
        allowed = headers.get(b"allow", b"").decode("latin-1") or "another method"
        message = f"{method} is not allowed on {path}: use {allowed}"
    return json.dumps({"error": message}).encode()


class NoSlashRedirects(HttpOnly):
    """A 404 for an API path with a slash at its end (`/score/`): the router redirected it (307,
    no body) to an `http://` address built from the Host header, which behind a TLS proxy sent a
    CRM's retried POST, leads and all, over plain HTTP. The pages (`/ui/...`) keep their redirects."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path.endswith("/") and path != "/" and path != "/ui/" and not path.startswith("/ui/"):
            await reply(send, 404, _no_route(scope.get("method", ""), path))
            return
        await self.app(scope, receive, send)


class HeadAsGet(HttpOnly):
    """HEAD on the listed GET routes answers as GET would, without the body (an uptime monitor's
    HEAD /model got a 405 and read the service as down; the probes already answered it)."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        super().__init__(app)
        self.paths = paths

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "HEAD" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return

        async def headers_only(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class ErrorBodies(HttpOnly):
    """Rewrites the framework's error answers (400, 404, 405, 422) with `error_body`; every
    other answer streams through untouched."""

    STATUSES = frozenset({400, 404, 405, 422})

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[MutableMapping[str, Any]] = []
        chunks: list[bytes] = []

        async def rewrite(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] in self.STATUSES:
                held.append(message)
                return
            if not held or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            start = held.pop()
            headers = list(start.get("headers") or [])
            body = b"".join(chunks)
            new = error_body(start["status"], scope.get("method", ""), scope.get("path", ""), dict(headers), body)
            if new is not None:
                kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
                headers = [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(new)).encode())]
                body = new
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)
