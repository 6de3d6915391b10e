"""``gscache serve`` and the client side of ``gscache bench --server`` (tyro dataclasses, thin over the library).

Nothing here imports FastAPI, uvicorn or websockets at import time: ``gscache`` works without the ``server`` extra
and says what to install when a server command runs without it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from .config import ServerConfig, ServerLimits

TOKEN_ENV = "GSCACHE_SERVER_TOKEN"
SERVER_EXTRA_HINT = "the render server needs the 'server' extra: pip install -e \".[server]\""

__all__ = ["TOKEN_ENV", "BenchClient", "Serve"]


@dataclass
class Serve:
    """Start the headless render server (HTTP + WebSocket); loopback only unless a token is set."""

    scene: tyro.conf.Positional[Path | None] = None
    """Scene loaded at start (.ply, .compressed.ply, .splat, .spz); none when omitted (POST /scenes/load)."""
    host: str = "127.0.0.1"
    """Address to listen on; anything but loopback needs --token (or --insecure-no-token)."""
    port: int = 8765
    scenes_dir: Path | None = None
    """Served directory: clients may load scenes under it only. The scene's folder, else the current one."""
    token: str | None = None
    """Shared secret (>= 16 characters) every request must carry; default: $GSCACHE_SERVER_TOKEN."""
    insecure_no_token: bool = False
    """Serve beyond loopback without a token (anyone who reaches the address can use the GPU)."""
    backend: str = "auto"
    """auto, torch, native, gsplat, ..."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N."""
    max_streams: int = 4
    max_inflight_requests: int = 32
    max_queued_renders: int = 8
    """Renders waiting for the render thread (503 beyond); a stream or an HTTP render holds at most one."""
    shutdown_grace_s: float = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def config(self) -> ServerConfig:
        token = self.token if self.token is not None else os.environ.get(TOKEN_ENV) or None
        scenes_dir = self.scenes_dir or (self.scene.parent if self.scene is not None else Path.cwd())
        limits = ServerLimits(max_streams=self.max_streams, max_inflight_requests=self.max_inflight_requests,
                              max_queued_renders=self.max_queued_renders)
        return ServerConfig(scenes_dir=scenes_dir, scene=self.scene, host=self.host, port=self.port, token=token,
                            insecure_no_token=self.insecure_no_token, backend=self.backend, device=self.device,
                            shutdown_grace_s=self.shutdown_grace_s, limits=limits)

    def run(self, console) -> None:  # console: rich.console.Console
        config = self.config()
        _require_server_extra()
        logging.basicConfig(level=self.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from .runner import make_server

        server = make_server(config, log_level=self.log_level)
        scene = server.state.scenes.current
        console.print(f"gscache serve: http://{config.host}:{config.port} ({server.state.device}, backend "
                      f"{server.state.backend}); scene {scene.name if scene else '(none)'}; serving "
                      f"{server.state.scenes.directory.root}; token {'required' if config.token else 'not set'}")
        if config.insecure_no_token:
            console.print("[bold red]WARNING: --insecure-no-token: no authentication on a non-loopback address[/]")
        server.run()


@dataclass
class BenchClient:
    """Motion-to-photon latency of a running server: send poses over /stream, time their frames."""

    server: str
    """URL of the server, e.g. http://127.0.0.1:8765."""
    token: str | None = None
    """The server's token; default: $GSCACHE_SERVER_TOKEN."""
    poses: int = 120
    warmup: int = 8
    rate_hz: float = 0.0
    """0: closed loop (next pose when the frame arrived); > 0: send at this rate (stale poses get dropped)."""
    path: Literal["orbit", "head"] = "head"
    width: int = 2064
    height: int = 2208
    mono: bool = False
    fov: float = 90.0
    format: Literal["jpeg", "png", "raw"] = "jpeg"
    out: Path | None = None
    """Also write the result JSON here."""

    def config(self):  # -> server.client.ClientBenchConfig (imported lazily: it needs pydantic)
        from .client import ClientBenchConfig

        token = self.token if self.token is not None else os.environ.get(TOKEN_ENV) or None
        return ClientBenchConfig(server_url=self.server, token=token, poses=self.poses, warmup=self.warmup,
                                 rate_hz=self.rate_hz, path=self.path, width=self.width, height=self.height,
                                 stereo=not self.mono, fov_x_deg=self.fov, format=self.format, out=self.out)

    def run(self, console) -> None:  # console: rich.console.Console
        _require_server_extra()
        from .client import bench_client_main

        bench_client_main(self.config(), console)


def _require_server_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as err:
        raise ValueError(f"{SERVER_EXTRA_HINT} ({err})") from None

