"""Frame sources beyond :class:`~server.frames.DirectFrameSource`: the frame cache and the multi-GPU scheduler.

- :class:`CachedFrameSource` renders through a :class:`renderer.FrameCache`, one per (scene version, stream
  session), so that clients at different poses do not thrash one cache; ``/render`` requests (no session) share
  one cache per scene. At most ``max_caches`` are kept (least recently used dropped first); a new scene version
  drops the caches of the old ones, a closed stream its own (:meth:`CachedFrameSource.forget_session`).
- :class:`ScheduledFrameSource` renders through :class:`renderer.scheduler.Scheduler` over several devices, each
  worker a :class:`renderer.scheduler.RenderWorker` that loads the scene itself and holds its frame cache; it is
  rebuilt (the old one closed) when the scene version changes.

Both render chunk-file scenes (``scene.streaming``) as :class:`DirectFrameSource` does.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from renderer import FrameCache
from renderer.backends import StagedBackend, default_registry
from renderer.frame_cache import CacheConfig
from renderer.scheduler import FrameRenderError, RenderWorker, Scheduler, SchedulerError

from .config import ServerConfig
from .errors import InvalidRequest, ServiceUnavailable
from .frames import DirectFrameSource, FrameRequest, FrameSource
from .metrics import Counter
from .scenes import LoadedScene

CacheKey = tuple[int, str | None]  # (scene version, stream session or None)


class CachedFrameSource:
    """Frames through a :class:`FrameCache` per (scene version, session); call :meth:`render` on the render thread.

    Args:
        backend: a backend with stages (``torch``, ``native``; ``auto`` resolves to one).
        cache: the frame cache's settings.
        max_caches: caches kept at once (at least the streams the server allows, plus one for ``/render``).
    """

    def __init__(self, backend: str = "auto", cache: CacheConfig | None = None, max_caches: int = 8) -> None:
        if max_caches < 1:
            raise ValueError(f"max_caches: expected >= 1, got {max_caches}")
        self.backend, self.cache_config, self.max_caches = backend, cache or CacheConfig(), max_caches
        self.direct = DirectFrameSource(backend)
        self.counter = Counter("gscache_frame_cache_total", "Frame cache reuse per frame, by stage (visible set, "
                               "shading) and outcome (hit, refresh)", ("stage", "outcome"))
        self._caches: OrderedDict[CacheKey, FrameCache] = OrderedDict()
        self._version = 0
        self._lock = threading.Lock()

    def render(self, scene: LoadedScene, request: FrameRequest) -> torch.Tensor:  # [C, H, W, 3]
        if scene.streaming is not None:
            return self.direct.render(scene, request)
        cache = self.cache_for(scene, request.session)
        out = cache.render(request.cameras, background=request.background)
        stats = cache.last_stats
        if stats is not None:
            self.counter.inc(stage="visible", outcome="hit" if stats.visible_hit else "refresh")
            self.counter.inc(stage="shading", outcome="hit" if stats.shading_hit else "refresh")
        return out.image

    def cache_for(self, scene: LoadedScene, session: str | None) -> FrameCache:
        """The cache of ``(scene.version, session)``, made on first use (dropping old versions' caches)."""
        key = (scene.version, session)
        with self._lock:
            if scene.version > self._version:
                self._version = scene.version
                for old in [k for k in self._caches if k[0] < scene.version]:
                    del self._caches[old]
            cache = self._caches.get(key)
            if cache is not None:
                self._caches.move_to_end(key)
                return cache
        cache = FrameCache(scene.splats, self.backend, self.cache_config)  # outside the lock: builds an index
        with self._lock:
            if scene.version >= self._version:  # not made stale by a newer scene meanwhile
                self._caches[key] = cache
                while len(self._caches) > self.max_caches:
                    self._caches.popitem(last=False)
        return cache

    def forget_session(self, session: str) -> None:
        """Drop the caches of a closed stream session."""
        with self._lock:
            for key in [k for k in self._caches if k[1] == session]:
                del self._caches[key]

    @property
    def cache_keys(self) -> list[CacheKey]:
        """The ``(scene version, session)`` keys of the caches held, least recently used first."""
        with self._lock:
            return list(self._caches)


def parse_devices(spec: str, device: torch.device) -> list[str]:
    """Worker devices from ``--gpus``: a count (``2``: ``cuda:0``, ``cuda:1``, or that many ``cpu`` workers when
    the server renders on the CPU) or a comma-separated list of CUDA indices or device names (``0,1``,
    ``cuda:2,cuda:3``, ``cpu,cpu``)."""
    text = spec.strip()
    if not text:
        raise ValueError("gpus: expected a count or a list of devices such as '0,1', got ''")
    if "," not in text and text.isdigit():
        count = int(text)
        if count < 1:
            raise ValueError(f"gpus: expected a count >= 1, got {count}")
        return [f"cuda:{i}" for i in range(count)] if device.type == "cuda" else ["cpu"] * count
    devices = []
    for part in (p.strip() for p in text.split(",")):
        name = f"cuda:{part}" if part.isdigit() else part
        try:
            torch.device(name)
        except RuntimeError:
            raise ValueError(f"gpus: {part!r} is not a CUDA index or a device name") from None
        devices.append(name)
    return devices


def _load_bench_splats(scene_id: str, data_dir: Path | None):  # -> Splats (runs in a worker)
    from .bench_scenes import resolve_scene

    return resolve_scene(scene_id, data_dir, "cpu").splats


def scene_loader(scene: LoadedScene, data_dir: Path | None = None, bench_scene: str | None = None):
    """A picklable zero-argument loader of ``scene`` for a worker: the scene file read with ``data.load_scene``
    (non-finite Gaussians dropped, as a server load may have done), or a benchmark scene (tiled, ``-sh3``)
    rebuilt with ``server.bench_scenes``."""
    from data import load_scene

    if scene.grid > 1 or (bench_scene is not None and scene.name == bench_scene):
        return functools.partial(_load_bench_splats, scene.name, data_dir)
    return functools.partial(load_scene, str(scene.path), nonfinite="drop")


class ScheduledFrameSource:
    """Frames through a :class:`Scheduler` over ``devices`` (one :class:`RenderWorker` each).

    Args:
        devices: one worker per entry (``cuda:0``, ``cuda:1``; ``cpu`` in tests).
        backend, cache: the workers' renderer backend and frame cache settings.
        transport: ``process`` (spawn; the default when any device is CUDA), ``thread`` (the default otherwise).
        data_dir, bench_scene: how workers rebuild a benchmark scene (``ServerConfig.data_dir`` / ``bench_scene``).
        start_timeout_s: longest wait for the workers to load a scene; frame_timeout_s: for one frame.
    """

    def __init__(self, devices: Sequence[str], backend: str = "auto", cache: CacheConfig | None = None,
                 transport: str | None = None, data_dir: Path | None = None, bench_scene: str | None = None,
                 start_timeout_s: float = 300.0, frame_timeout_s: float = 60.0) -> None:
        self.devices = list(devices)
        if not self.devices:
            raise ValueError("devices: expected at least one device")
        self.backend, self.cache_config = backend, cache or CacheConfig()
        self.transport = transport or ("process" if any(d.startswith("cuda") for d in self.devices) else "thread")
        self.data_dir, self.bench_scene = data_dir, bench_scene
        self.start_timeout_s, self.frame_timeout_s = start_timeout_s, frame_timeout_s
        self.direct = DirectFrameSource(backend)
        self.scheduler: Scheduler | None = None
        self.version: int | None = None
        self._lock = threading.Lock()

    def render(self, scene: LoadedScene, request: FrameRequest) -> torch.Tensor:  # [C, H, W, 3]
        if scene.streaming is not None:
            return self.direct.render(scene, request)
        scheduler = self.scheduler_for(scene)
        try:
            frame = scheduler.render(request.cameras, background=request.background, timeout=self.frame_timeout_s)
        except FrameRenderError as err:
            raise InvalidRequest(f"render failed on a worker: {err}") from None
        except (SchedulerError, TimeoutError) as err:
            raise ServiceUnavailable(f"the render workers could not serve this frame: {err}") from None
        return torch.from_numpy(frame.image).to(scene.splats.device)  # where the encoder expects the render

    def scheduler_for(self, scene: LoadedScene) -> Scheduler:
        """The scheduler of ``scene.version``, (re)built with its workers ready (blocking)."""
        with self._lock:
            if self.scheduler is not None and self.version == scene.version:
                return self.scheduler
            self._close_locked()
            loader = scene_loader(scene, self.data_dir, self.bench_scene)
            workers = [RenderWorker(loader, device=device, backend=self.backend, cache=self.cache_config,
                                    name=f"{device}#{i}") for i, device in enumerate(self.devices)]
            scheduler = Scheduler(workers, mode="frame-parallel", transport=self.transport)
            try:
                scheduler.wait_ready(self.start_timeout_s)
            except (SchedulerError, TimeoutError) as err:
                scheduler.close(drain=False)
                raise ServiceUnavailable(f"the render workers could not load scene {scene.name!r}: {err}",
                                         retry_after_s=5) from None
            self.scheduler, self.version = scheduler, scene.version
            return scheduler

    def _close_locked(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler, self.version = None, None

    def close(self) -> None:
        """Stop the workers (the server calls it at shutdown)."""
        with self._lock:
            self._close_locked()


def default_source(config: ServerConfig, device: torch.device) -> tuple[FrameSource, str]:
    """The frame source ``config`` asks for, and a line saying which (for the startup message and ``/health``).

    ``gpus``: the scheduler (its workers cache frames unless ``cache`` is False); else ``cache``: the frame cache
    where the backend has stages; else (or with a stage-less backend such as gsplat) every frame from scratch.
    """
    cache = CacheConfig(enabled=config.cache)
    if config.gpus is not None:
        devices = parse_devices(config.gpus, device)
        source = ScheduledFrameSource(devices, config.backend, cache, data_dir=config.data_dir,
                                      bench_scene=config.bench_scene)
        what = "cached" if config.cache else "uncached"
        return source, f"scheduler over {', '.join(devices)} ({source.transport} workers, {what})"
    if config.cache:
        chosen = default_registry().resolve(config.backend, device)
        if isinstance(chosen, StagedBackend):
            return (CachedFrameSource(config.backend, max_caches=config.limits.max_streams + 1),
                    "frame cache (one per stream)")
        return DirectFrameSource(config.backend), f"direct (backend {chosen.name} has no stages for the frame cache)"
    return DirectFrameSource(config.backend), "direct (no cache)"
