"""The ASGI layer in front of every route: token check, bounds, request metrics and the request log.

It is plain ASGI (not Starlette's ``BaseHTTPMiddleware``) so that it sees WebSocket connections too.
Order for each request: token (401 / close 1008) -> Host/Origin of a token-less loopback server (403 / close
1008) -> in-flight bound (503) -> body bound (413) -> the app.
The request log names method, path (never the query string: it may hold a token), status and time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from .errors import ApiError, InternalError, PayloadTooLarge, ServerBusy, Unauthorized
from .stream import CLOSE_POLICY

if TYPE_CHECKING:
    from .state import ServerState

log = logging.getLogger("gscache.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ROUTES = ("/health", "/scenes", "/scenes/load", "/render", "/stream", "/bench", "/metrics")


def route_label(path: str) -> str:
    """The metrics label of a path: a known route, or ``other`` (so unknown paths cannot blow up label counts)."""
    return path if path in ROUTES else "other"


async def send_error(send: Send, error: ApiError) -> None:
    """Answer an HTTP request with ``error`` as JSON."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Token, bounds and metrics for every HTTP request and WebSocket connection."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start, route, status = time.perf_counter(), route_label(scope["path"]), [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            self.state.tokens.check(scope["headers"], scope.get("query_string", b""), websocket=False)
            self.state.local_only.check(scope["headers"])
            if self.state.inflight >= self.state.config.limits.max_inflight_requests:
                raise ServerBusy(f"too many requests in flight ({self.state.inflight}); retry shortly")
            replay = await self._read_body(scope, receive)
        except ApiError as err:
            if isinstance(err, Unauthorized):
                err.headers["WWW-Authenticate"] = "Bearer"
            self.state.metrics.errors.inc(kind=err.kind)
            await send_error(send_status, err)
            return self._record(scope, route, status[0], start)
        self.state.inflight += 1
        started = [False]

        async def send_tracked(message: Message) -> None:
            started[0] = started[0] or message["type"] == "http.response.start"
            await send_status(message)

        try:
            await self.app(scope, replay, send_tracked)
        except Exception:
            # The last resort: log the traceback here, answer a JSON 500 without internals, keep the connection.
            log.exception("%s %s failed", scope["method"], _printable(scope["path"]))
            self.state.metrics.errors.inc(kind=InternalError.kind)
            if started[0]:
                raise  # half a response went out: the server must drop the connection
            await send_error(send_status, InternalError("the server failed to answer; see its log"))
        finally:
            self.state.inflight -= 1
            self._record(scope, route, status[0], start)

    async def _read_body(self, scope: Scope, receive: Receive) -> Receive:
        """Read the whole body (bounded) and return a ``receive`` that replays it, then defers to the server."""
        limit = self.state.config.limits.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise PayloadTooLarge(f"request body of {int(value)} bytes; the limit is {limit} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body over the limit of {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), [False]

        async def replay() -> Message:
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        start, route, status = time.perf_counter(), route_label(scope["path"]), ["403"]

        async def send_status(message: Message) -> None:
            if message["type"] == "websocket.accept":
                status[0] = "101"
            await send(message)

        try:
            self.state.tokens.check(scope["headers"], scope.get("query_string", b""), websocket=True)
            self.state.local_only.check(scope["headers"])
        except ApiError as err:
            self.state.metrics.errors.inc(kind=err.kind)
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            reason = f"{err.kind}: {err.detail}".encode()[:120].decode("utf-8", "ignore")  # close reasons <= 123 B
            await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": reason})
            return self._record(scope, route, err.status, start)
        try:
            await self.app(scope, receive, send_status)
        finally:
            self._record(scope, route, status[0], start)

    def _record(self, scope: Scope, route: str, status: int | str, start: float) -> None:
        elapsed = time.perf_counter() - start
        method = scope.get("method", "WS")
        self.state.metrics.requests.inc(route=route, method=method, status=str(status))
        if scope["type"] == "http":
            self.state.metrics.request_seconds.observe(elapsed, route=route)
        log.info("%s %s %s %.1f ms", method, _printable(scope["path"]), status, elapsed * 1e3)


def _printable(path: str) -> str:
    """``path`` with control and non-ASCII characters escaped (no forged log lines)."""
    return path.encode("unicode_escape").decode("ascii")
