"""Elastic, efficiency-aware multi-GPU scheduling (see ``README.md`` beside this file).

    from renderer.scheduler import RenderWorker, Scheduler

    workers = [RenderWorker(scene_loader, device=f"cuda:{i}") for i in range(torch.cuda.device_count())]
    with Scheduler(workers, mode="auto", target_fps=90) as scheduler:
        frame = scheduler.submit(rig).result()   # Frame: image [2, H, W, 3], workers, timings

The policy (:mod:`.policy`) is pure and independent of the transport; transports run workers as threads, spawned
processes (frames through shared memory) or Ray actors (``gscache[cluster]``, imported only when asked for).
"""

from .engines import RenderWorker, SceneSource, SimulatedWorker, WorkerSpec
from .policy import (
    Assignment,
    CostKey,
    CostModel,
    ElasticController,
    ElasticDecision,
    ElasticSample,
    ModeDecision,
    WorkerLoad,
    choose_mode,
    pick_earliest_finish,
)
from .scheduler import Scheduler, SchedulerStats
from .transport import ThreadTransport, Transport, WorkerEvents, WorkerHandle
from .types import (
    CostConfig,
    ElasticConfig,
    Frame,
    FrameRenderError,
    FrameTimings,
    NoWorkersError,
    SchedulerClosedError,
    SchedulerConfig,
    SchedulerError,
    SchedulerEvent,
    WorkerInfo,
    WorkerLostError,
    WorkerStartError,
)


def __getattr__(name: str):
    """``ProcessTransport`` and ``RayTransport`` load on first use (Ray is optional)."""
    if name == "ProcessTransport":
        from .process import ProcessTransport

        return ProcessTransport
    if name == "RayTransport":
        from .ray_transport import RayTransport

        return RayTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Assignment", "CostConfig", "CostKey", "CostModel", "ElasticConfig", "ElasticController", "ElasticDecision",
    "ElasticSample", "Frame", "FrameRenderError", "FrameTimings", "ModeDecision", "NoWorkersError",
    "ProcessTransport", "RayTransport", "RenderWorker", "SceneSource", "Scheduler", "SchedulerClosedError",
    "SchedulerConfig", "SchedulerError", "SchedulerEvent", "SchedulerStats", "SimulatedWorker", "ThreadTransport",
    "Transport", "WorkerEvents", "WorkerHandle", "WorkerInfo", "WorkerLoad", "WorkerLostError", "WorkerStartError",
    "WorkerSpec",
    "choose_mode", "pick_earliest_finish",
]
