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
    """Scene loaded at start (.ply, .compressed.ply, .splat, .spz, a .gschunks chunk file with --gpu-budget-mib, or
    a training run's folder); the bundled scene when omitted (and no --bench-scene). Clients switch scenes under
    the served directory with POST /scenes/load."""
    bench_scene: str | None = None
    """Instead of SCENE: a BENCHMARK.md scene id (guitar, guitar-g8, guitar-g8-sh3) built at start from --data-dir;
    clients fly the same orbit/head paths around it as gscache bench."""
    data_dir: Path | None = None
    """With --bench-scene: the folder holding guitar.ply / playbot_lod3.ply (default ../shared/data/...)."""
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
    gpu_budget_mib: float | None = None
    """GPU memory budget for chunk files (.gschunks from `gscache convert --chunks`), streamed in depth slabs."""
    lod_threshold_px: float | None = None
    """Chunk files: screen-space error in pixels allowed for coarser levels of detail (none: level 0 only)."""
    cache: bool = False
    """Render through the frame cache (one per stream; backends with stages: torch, native). Off by default (every
    frame from scratch, exactly as renderer.render): on the GPU the cache is not yet faster than uncached native."""
    gpus: str | None = None
    """Spread frames over several GPUs with the multi-GPU scheduler: a count (2) or a list (0,1); each worker
    loads the scene itself. Default: one render thread on --device."""
    max_streams: int = 4
    max_inflight_requests: int = 32
    max_queued_renders: int = 8
    """Renders waiting for the render thread (503 beyond); a stream or an HTTP render holds at most one."""
    stream_pipeline_depth: int = 2
    """Frames of one stream in flight: 2 renders the next frame while the last is encoded and sent; 1 does not."""
    shutdown_grace_s: float = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def config(self) -> ServerConfig:
        from data import default_scene_path
        from data.scene_cameras import resolve_scene_file

        token = self.token if self.token is not None else os.environ.get(TOKEN_ENV) or None
        if self.scenes_dir is not None:
            scenes_dir = self.scenes_dir
        elif self.scene is not None:
            scenes_dir = self.scene if self.scene.is_dir() else self.scene.parent
        else:
            scenes_dir = self.data_dir if self.bench_scene is not None and self.data_dir is not None else Path.cwd()
        scene = resolve_scene_file(self.scene) if self.scene is not None else None
        if scene is None and self.bench_scene is None:
            scene = default_scene_path()
        limits = ServerLimits(max_streams=self.max_streams, max_inflight_requests=self.max_inflight_requests,
                              max_queued_renders=self.max_queued_renders)
        return ServerConfig(scenes_dir=scenes_dir, scene=scene, bench_scene=self.bench_scene,
                            data_dir=self.data_dir, host=self.host, port=self.port, token=token,
                            insecure_no_token=self.insecure_no_token, backend=self.backend, device=self.device,
                            stream_pipeline_depth=self.stream_pipeline_depth, gpu_budget_mib=self.gpu_budget_mib,
                            lod_threshold_px=self.lod_threshold_px, cache=self.cache, gpus=self.gpus,
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
                      f"{server.state.scenes.directory.root}; token {'required' if config.token else 'not set'}; "
                      f"frames: {server.state.source_name}")
        if config.insecure_no_token:
            console.print("[bold red]WARNING: --insecure-no-token: no authentication on a non-loopback address[/]")
        server.run()


@dataclass
class BenchClient:
    """End-to-end frame rate and motion-to-photon latency of a running server: clients send poses over /stream and
    time their frames (server/client.py). With --out-dir: every case (--closed-loop-poses, then each --clients)
    into one BENCHMARK.md result JSON and a plot; exit status 1 when any client counted an error."""

    server: str
    """URL of the server, e.g. http://127.0.0.1:8765."""
    token: str | None = None
    """The server's token; default: $GSCACHE_SERVER_TOKEN."""
    poses: int = 120
    """Measured poses per client."""
    warmup: int = 8
    """Poses per client sent in closed loop first, not measured."""
    rate_hz: float = 0.0
    """0: closed loop (next pose when the frame arrived); > 0: send at this rate (stale poses get dropped)."""
    path: Literal["orbit", "head"] = "head"
    width: int = 2064
    height: int = 2208
    mono: bool = False
    fov: float = 90.0
    format: Literal["jpeg", "png", "raw"] = "jpeg"
    quality: int = 90
    clients: tuple[int, ...] = (1,)
    """Concurrent clients of each case, e.g. --clients 1 8: a case with 1 client, then one with 8."""
    closed_loop_poses: int = 0
    """With --out-dir: first a 1-client closed-loop case of this many poses (latency without queueing); 0: none."""
    timeout_s: float = 30.0
    """Longest wait for any one message."""
    out: Path | None = None
    """Also write the result JSON here (one client, one case)."""
    out_dir: Path | None = None
    """Write <date>-<gpu>-<what>.json (BENCHMARK.md shape, a row per case) and a .png here."""
    what: str = "server-stream"
    """File name part after <date>-<gpu>-."""
    revision: str | None = None
    """The git revision recorded in the result (default: detected; 'unknown' without git)."""
    command: tyro.conf.Suppress[str | None] = None
    """The command line recorded in the result (default: this process's)."""

    def config(self, clients: int = 1, poses: int | None = None, rate_hz: float | None = None):
        """The ``server.client.ClientBenchConfig`` of one case (imported lazily: it needs the server extra)."""
        from .client import ClientBenchConfig

        token = self.token if self.token is not None else os.environ.get(TOKEN_ENV) or None
        return ClientBenchConfig(server_url=self.server, token=token, poses=self.poses if poses is None else poses,
                                 warmup=self.warmup, rate_hz=self.rate_hz if rate_hz is None else rate_hz,
                                 path=self.path, width=self.width, height=self.height, stereo=not self.mono,
                                 fov_x_deg=self.fov, format=self.format, quality=self.quality, clients=clients,
                                 timeout_s=self.timeout_s, out=self.out)

    def run(self, console) -> int:  # console: rich.console.Console
        _require_server_extra()
        if self.out_dir is None and self.clients == (1,) and self.closed_loop_poses == 0:
            from .client import bench_client_main

            result = bench_client_main(self.config(), console)
            return 1 if result.errors else 0
        return self._run_cases(console)

    def _run_cases(self, console) -> int:
        import shlex
        import sys

        from .bench_results import git_revision
        from .client import measure_clients, run_async
        from .client_results import write_stream_result

        cases = [self.config(1, self.closed_loop_poses, 0.0)] if self.closed_loop_poses > 0 else []
        cases += [self.config(n) for n in self.clients]
        runs = []
        for case in cases:
            run = run_async(measure_clients(case))
            row = run.row()
            console.print(f"{case.clients} client(s), {case.mode}{f' at {case.rate_hz:g} Hz' if case.rate_hz else ''}: "
                          f"{row['frames']} frames, {row['fps']:.1f} frames/s together (slowest client "
                          f"{row['fps_per_client_min']:.1f}); motion-to-photon p50 {row['mtp_ms_p50']} ms, p99 "
                          f"{row['mtp_ms_p99']} ms; server render {row['server_render_ms_median']} ms, encode "
                          f"{row['server_encode_ms_median']} ms; {row['errors']} errors {row['errors_by_kind'] or ''}")
            runs.append(run)
        if self.out_dir is not None:
            command = self.command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
            json_path, plot_path = write_stream_result(runs, self.out_dir, self.what, command,
                                                       self.revision or git_revision())
            console.print(f"wrote {json_path}" + (f" and {plot_path.name}" if plot_path else " (no plot: matplotlib "
                                                                                               "is missing)"))
        return 1 if any(run.errors for run in runs) else 0


def _require_server_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as err:
        raise ValueError(f"{SERVER_EXTRA_HINT} ({err})") from None

