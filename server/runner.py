"""Running the server with uvicorn: graceful shutdown, in the foreground (``gscache serve``) or in a thread.

Shutdown (SIGINT/SIGTERM, or ``should_exit``): stop accepting connections -> every stream sends the frame it is
rendering and closes with 1001 -> in-flight HTTP requests finish (up to ``shutdown_grace_s``) -> the render and
encode threads finish their queued jobs and stop.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from types import TracebackType

import uvicorn

from .app import create_app
from .config import ServerConfig, check_bind_policy
from .frames import FrameSource
from .state import ServerState, build_state

log = logging.getLogger("gscache.server")


class GscacheServer(uvicorn.Server):
    """uvicorn's server, closing streams with 1001 (after their frame in flight) before it shuts down."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections while the streams finish
        await self.state.streams.close_all(self.state.config.shutdown_grace_s)
        await super().shutdown(sockets)

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        return int(self.servers[0].sockets[0].getsockname()[1])


def make_server(config: ServerConfig, source: FrameSource | None = None, log_level: str = "info") -> GscacheServer:
    """Check the bind policy, build the state (loading the start scene) and the uvicorn server; listens on run.

    Raises:
        ValueError: a non-loopback host without a token or ``insecure_no_token``; bad settings; unreadable scene.
    """
    if check_bind_policy(config.host, config.token, config.insecure_no_token):
        log.warning("!" * 100)
        log.warning("SERVING ON %s WITHOUT A TOKEN (--insecure-no-token): anyone who reaches this address can use "
                    "this server and its GPU", config.host)
        log.warning("!" * 100)
    state = build_state(config, source)
    limits = config.limits
    uv_config = uvicorn.Config(
        create_app(state), host=config.host, port=config.port, log_level=log_level, access_log=False,
        ws_max_size=limits.max_message_bytes, ws_ping_interval=20.0, ws_ping_timeout=20.0,
        # frames are JPEG/PNG (already compressed) or raw: permessage-deflate would spend tens of ms of the event
        # loop per 2064x2208 stereo frame for nothing, so it is never negotiated
        ws_per_message_deflate=False,
        limit_concurrency=limits.max_inflight_requests + limits.max_streams + 16,
        timeout_graceful_shutdown=math.ceil(config.shutdown_grace_s), server_header=False, lifespan="on",
    )
    return GscacheServer(uv_config, state)


class BackgroundServer:
    """A server on a thread of its own: ``with BackgroundServer(config) as server: httpx.get(server.url + ...)``.

    Used by the tests and by anything that needs a local server beside other work. Exiting the block shuts it
    down gracefully and waits for the thread.
    """

    def __init__(self, config: ServerConfig, source: FrameSource | None = None, log_level: str = "warning",
                 start_timeout_s: float = 30.0) -> None:
        self.server = make_server(config, source, log_level)
        self._thread = threading.Thread(target=self.server.run, name="gscache-server", daemon=True)
        self._start_timeout_s = start_timeout_s
        self._port: int | None = None

    @property
    def state(self) -> ServerState:
        return self.server.state

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the server has not started")
        return f"http://{self.server.config.host}:{self._port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see its log)")
            time.sleep(0.01)
        self._port = self.server.bound_port
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shut down gracefully and wait for the server thread."""
        self.server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
