"""What runs inside a worker: the engine that turns a :class:`JobSpec` into planes.

A worker is described by a picklable *spec* (:class:`RenderWorker` or :class:`SimulatedWorker`); the transport
ships the spec to the worker (a spawned process, a Ray actor or a thread) and calls ``spec.build()`` there, so the
scene is loaded, and its frame cache lives, where the frames are rendered.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from ..frame_cache import CacheConfig, FrameCache
from ..splats import Splats
from .types import PLANES, JobSpec

# A scene as a worker gets it: the Gaussians themselves (sent once, through shared memory on one host), or a
# picklable zero-argument callable that loads them in the worker (e.g. ``functools.partial(data.load_scene, path)``).
SceneSource = Splats | Callable[[], Splats]


class Engine(Protocol):
    """Renders jobs inside a worker."""

    device: str

    def render(self, job: JobSpec) -> dict[str, np.ndarray | torch.Tensor]:
        """The planes of ``job.plane_layout()`` (arrays or tensors on any device)."""
        ...


class WorkerSpec(Protocol):
    """A picklable description of a worker."""

    name: str | None

    def build(self) -> Engine: ...

    def scene_names(self) -> frozenset[str] | None:
        """The scenes it holds (None: any)."""
        ...

    @property
    def device(self) -> str: ...


# ----- real rendering -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderWorker:
    """A worker that renders with :class:`renderer.FrameCache` on one device.

    Attributes:
        scenes: name -> scene (a :data:`SceneSource`); a single source is named ``"default"``.
        device: ``cuda:i`` (one worker per GPU), ``cuda`` (the one Ray gives the actor) or ``cpu``.
        backend: as :func:`renderer.render`; cache: the frame cache's settings (``CacheConfig(enabled=False)``
            renders exactly as :func:`renderer.render`).
        name: the worker's name (``<device>`` or ``w<i>`` when None).
        warmup: render one small frame of each scene at start, so the first timed frame is not a cold one.
        cpu_threads: ``torch.set_num_threads`` in the worker (None: torch's default); several CPU workers on one
            machine want 1 each.
    """

    scenes: Mapping[str, SceneSource] | SceneSource
    device: str = "cpu"
    backend: str = "auto"
    cache: CacheConfig = field(default_factory=CacheConfig)
    name: str | None = None
    warmup: bool = True
    cpu_threads: int | None = None

    def scene_sources(self) -> dict[str, SceneSource]:
        if isinstance(self.scenes, Mapping):
            return dict(self.scenes)
        return {"default": self.scenes}

    def scene_names(self) -> frozenset[str] | None:
        return frozenset(self.scene_sources())

    def build(self) -> Engine:
        return _RenderEngine(self)

    def for_transport(self) -> RenderWorker:
        """The spec with in-memory scenes moved to the CPU (what a spawned process or an actor can receive)."""
        moved = {k: (v.detach().to("cpu") if isinstance(v, Splats) else v) for k, v in self.scene_sources().items()}
        return dataclasses.replace(self, scenes=moved)


class _RenderEngine:
    def __init__(self, spec: RenderWorker) -> None:
        if spec.cpu_threads is not None:
            torch.set_num_threads(spec.cpu_threads)
        device = torch.device(spec.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {spec.device}: CUDA is not available in this worker")
            torch.cuda.set_device(device)
        self.device = str(device)
        self.caches: dict[str, FrameCache] = {}
        for name, source in spec.scene_sources().items():
            splats = source if isinstance(source, Splats) else source()
            if not isinstance(splats, Splats):
                raise TypeError(f"scene {name!r}: the loader returned {type(splats).__name__}, expected Splats")
            self.caches[name] = FrameCache(splats.to(device), spec.backend, spec.cache)
        if spec.warmup:
            self._warmup()

    def _warmup(self) -> None:
        from ..cameras import Camera, intrinsics_from_fov

        for cache in self.caches.values():
            cam = Camera(torch.eye(4, dtype=torch.float64), intrinsics_from_fov(32, 32, 60.0), 32, 32)
            cache.render(cam)
            cache.invalidate()

    @torch.inference_mode()
    def render(self, job: JobSpec) -> dict[str, np.ndarray | torch.Tensor]:
        cache = self.caches.get(job.scene)
        if cache is None:
            raise ValueError(f"scene {job.scene!r}: this worker holds {', '.join(sorted(self.caches))}")
        out = cache.render(job.view.decode(), background=job.background, render_mode=job.render_mode,
                           sh_degree=job.sh_degree)
        planes: dict[str, np.ndarray | torch.Tensor] = {}
        for name, _ in PLANES[job.render_mode]:
            value = getattr(out, name)
            if name == "image" and job.frame_format == "uint8":
                value = (value.clamp(0, 1) * 255).round().to(torch.uint8)
            planes[name] = value
        if cache.splats.device.type == "cuda":
            torch.cuda.synchronize(cache.splats.device)
        return planes


# ----- simulated workers ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimulatedWorker:
    """A worker that sleeps for a frame's time instead of rendering: fast, deterministic tests of the policy.

    Its frame time is ``fixed_ms + ms_per_mpix * megapixels / speed``. Its image holds the request id in every
    value (so a test can tell frames apart), alpha holds 1 and depth the part index.

    Attributes:
        speed: relative speed (2 renders twice as fast as 1).
        ms_per_mpix: frame time per megapixel (all cameras of the job) at speed 1.
        fixed_ms: time per job regardless of its size.
        fail_requests: request ids whose jobs raise (to test the error path).
        scenes: the scene names it holds (None: any).
        name: the worker's name.
    """

    speed: float = 1.0
    ms_per_mpix: float = 100.0
    fixed_ms: float = 0.0
    fail_requests: tuple[int, ...] = ()
    scenes: tuple[str, ...] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed: expected > 0, got {self.speed}")

    @property
    def device(self) -> str:
        return "sim"

    def scene_names(self) -> frozenset[str] | None:
        return None if self.scenes is None else frozenset(self.scenes)

    def build(self) -> Engine:
        return _SimulatedEngine(self)

    def frame_ms(self, job: JobSpec) -> float:
        mpix = job.view.num_cameras * job.view.width * job.view.height / 1e6
        return self.fixed_ms + self.ms_per_mpix * mpix / self.speed


class _SimulatedEngine:
    device = "sim"

    def __init__(self, spec: SimulatedWorker) -> None:
        self.spec = spec

    def render(self, job: JobSpec) -> dict[str, np.ndarray | torch.Tensor]:
        if job.request_id in self.spec.fail_requests:
            raise RuntimeError(f"simulated failure of request {job.request_id}")
        deadline = time.perf_counter() + self.spec.frame_ms(job) / 1e3
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(left)
        fill = {"image": float(job.request_id % 251) if job.frame_format == "uint8" else float(job.request_id),
                "alpha": 1.0, "depth": float(job.part)}
        return {name: np.full(shape, fill[name], dtype=dtype) for name, shape, dtype in job.plane_layout()}
