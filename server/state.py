"""Everything a running server holds (one object on ``app.state.gscache``; no module globals)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from renderer.backends import default_registry

from .bench import resolve_device
from .bench_results import device_name
from .config import ServerConfig, is_loopback
from .encode import FrameEncoder
from .errors import Conflict
from .frames import FramePipeline, FrameSource, RenderWorker
from .metrics import Gauge, Metrics
from .scenes import LoadedScene, SceneStore
from .security import LocalOnlyCheck, SceneDirectory, TokenCheck
from .sources import default_source
from .stream import StreamRegistry


@dataclass
class ServerState:
    """The server's parts.

    Attributes:
        config: the settings it was started with.
        device: where scenes live and frames render; device_name: its model (GPU or CPU), for result files.
        backend: the backend name ``auto`` resolved to on ``device`` (what renders).
        scenes: the served directory and the current scene.
        worker: the render thread; pipeline: render + encode.
        metrics: counters for ``GET /metrics``; tokens: the token check; streams: open streams.
        local_only: the Host/Origin check of a token-less loopback server.
        inflight: HTTP requests being answered; bench_running: whether a ``POST /bench`` runs now.
        source_name: what renders frames (direct, frame cache, scheduler), in words.
    """

    config: ServerConfig
    device: torch.device
    backend: str
    scenes: SceneStore
    worker: RenderWorker
    pipeline: FramePipeline
    metrics: Metrics
    tokens: TokenCheck
    local_only: LocalOnlyCheck
    streams: StreamRegistry
    device_name: str = ""
    started: float = field(default_factory=time.time)
    inflight: int = 0
    bench_running: bool = False
    source_name: str = "custom"

    def require_scene(self) -> LoadedScene:
        scene = self.scenes.current
        if scene is None:
            raise Conflict("no scene is loaded; POST /scenes/load with a path from GET /scenes first")
        return scene

    def close(self) -> None:
        """Finish queued renders and encodes, then stop their threads."""
        self.worker.close()
        self.pipeline.close()
        close_source = getattr(self.pipeline.source, "close", None)
        if close_source is not None:  # the scheduler's workers
            close_source()


def build_state(config: ServerConfig, source: FrameSource | None = None) -> ServerState:
    """Check the device and backend, load the start scene (if any) and assemble the parts.

    Args:
        config: the settings.
        source: what renders frames; when None, the one ``config`` asks for (``server.sources.default_source``:
            the frame cache, the multi-GPU scheduler or ``DirectFrameSource``).

    Raises:
        ValueError / BackendUnavailableError: an unknown or unavailable backend or device, an unreadable scene.
        FileNotFoundError: the base file of ``config.bench_scene`` is missing.
    """
    device = resolve_device(config.device)
    backend = default_registry().resolve(config.backend, device).name
    scenes = SceneStore(SceneDirectory(config.scenes_dir), device, config.backend, config.gpu_budget_mib,
                        config.lod_threshold_px)
    if config.scene is not None:
        scenes.load(config.scene, scenes.name_for(config.scene))
    elif config.bench_scene is not None:
        scenes.load_bench(config.bench_scene, config.data_dir)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # loaded on this thread's stream; the render thread renders on its own
    worker = RenderWorker(config.limits.max_queued_renders, device)
    source_name = "custom"
    if source is None:
        source, source_name = default_source(config, device)
    pipeline = FramePipeline(worker, source, FrameEncoder(config.gpu_jpeg))
    streams = StreamRegistry(config.limits.max_streams)
    state = ServerState(config=config, device=device, device_name=device_name(device), backend=backend,
                        scenes=scenes, worker=worker,
                        pipeline=pipeline, metrics=Metrics(), tokens=TokenCheck(config.token),
                        local_only=LocalOnlyCheck(not config.token and is_loopback(config.host)), streams=streams)
    state.metrics.gauges += _gauges(state)
    state.source_name = source_name
    if hasattr(source, "counter"):  # the frame cache's hits and refreshes
        state.metrics.extra.append(source.counter)
    return state


def _gauges(state: ServerState) -> list[Gauge]:
    def one(value: float) -> dict[tuple[str, ...], float]:
        return {(): float(value)}

    def scene() -> dict[tuple[str, ...], float]:
        return {} if state.scenes.current is None else one(len(state.scenes.current.splats))

    gauges = [
        Gauge("gscache_active_streams", "Open /stream connections", read=lambda: one(len(state.streams.sessions))),
        Gauge("gscache_inflight_requests", "HTTP requests being answered", read=lambda: one(state.inflight)),
        Gauge("gscache_render_queue", "Jobs on or waiting for the render thread",
              read=lambda: one(state.worker.queued)),
        Gauge("gscache_scene_gaussians", "Gaussians in the loaded scene", read=scene),
    ]
    if state.device.type == "cuda":
        device = state.device
        gauges += [
            Gauge("gscache_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated on the render device",
                  read=lambda: one(torch.cuda.memory_allocated(device))),
            Gauge("gscache_gpu_memory_reserved_bytes", "torch.cuda.memory_reserved on the render device",
                  read=lambda: one(torch.cuda.memory_reserved(device))),
            Gauge("gscache_gpu_memory_max_allocated_bytes", "torch.cuda.max_memory_allocated on the render device",
                  read=lambda: one(torch.cuda.max_memory_allocated(device))),
        ]
    return gauges
