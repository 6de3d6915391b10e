"""Named results, typed configuration and errors of the multi-GPU scheduler.

Everything that crosses a process boundary (a job, a job's result) is a plain dataclass of numbers, strings and
numpy arrays: cameras travel as floats, never as pickled tensors, and frames travel through shared memory (local
processes) or Ray's object store (Ray actors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..cameras import Camera, StereoRig, as_camera_list
from ..types import RENDER_MODES, RenderMode

Mode = Literal["frame-parallel", "eye-split"]
ModeSetting = Literal["auto", "frame-parallel", "eye-split"]
MODES: tuple[str, ...] = ("frame-parallel", "eye-split")
MODE_SETTINGS: tuple[str, ...] = ("auto", *MODES)
FrameFormat = Literal["float32", "uint8"]
WorkerState = Literal["standby", "starting", "ready", "draining", "restarting", "failed", "stopped"]

# Planes a worker returns per render mode, with their channel counts.
PLANES: dict[str, tuple[tuple[str, int], ...]] = {
    "rgb": (("image", 3),),
    "rgb+depth": (("image", 3), ("depth", 1)),
    "depth": (("depth", 1),),
    "alpha": (("alpha", 1),),
}


# ----- errors ---------------------------------------------------------------------------------------------------------
class SchedulerError(RuntimeError):
    """Base class of the scheduler's errors (a request's future fails with one of these)."""


class SchedulerClosedError(SchedulerError):
    """The scheduler was closed before the request was served (or a request came after ``close()``)."""


class NoWorkersError(SchedulerError):
    """No worker can serve the request: none is running, starting or restartable."""


class WorkerLostError(SchedulerError):
    """The request's job was on a worker that died too many times in a row (``SchedulerConfig.max_attempts``)."""


class FrameRenderError(SchedulerError):
    """The worker raised while rendering the request (a bad view, out of memory, ...); the message says what."""


class WorkerStartError(SchedulerError):
    """A worker failed to start (its scene did not load, its device does not exist, ...)."""


# ----- views on the wire ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraSpec:
    """A :class:`~renderer.Camera` as plain numbers (row-major ``world_to_camera`` and ``K``)."""

    world_to_camera: tuple[float, ...]  # 16
    K: tuple[float, ...]  # 9
    width: int
    height: int
    near: float
    far: float

    @staticmethod
    def of(cam: Camera) -> CameraSpec:
        w2c = tuple(float(v) for v in cam.world_to_camera.detach().to(torch.float64).reshape(-1).tolist())
        k = tuple(float(v) for v in cam.K.detach().to(torch.float64).reshape(-1).tolist())
        return CameraSpec(w2c, k, cam.width, cam.height, float(cam.near), float(cam.far))

    def decode(self) -> Camera:
        w2c = torch.tensor(self.world_to_camera, dtype=torch.float64).reshape(4, 4)
        k = torch.tensor(self.K, dtype=torch.float64).reshape(3, 3)
        return Camera(w2c, k, self.width, self.height, self.near, self.far)


@dataclass(frozen=True)
class ViewSpec:
    """A view as plain numbers: a stereo rig (``cameras`` holds its head) or a list of cameras of one size.

    Attributes:
        cameras: the rig's head camera (``ipd`` not None) or the C cameras.
        ipd: the rig's inter-pupillary distance; None for a list of cameras.
        K_left, K_right: the rig's per-eye intrinsics (row-major 9 floats) where given.
    """

    cameras: tuple[CameraSpec, ...]
    ipd: float | None = None
    K_left: tuple[float, ...] | None = None
    K_right: tuple[float, ...] | None = None

    @staticmethod
    def of(view: Camera | StereoRig | Sequence[Camera]) -> ViewSpec:
        """Encode a view; raise ``ValueError`` for anything ``render`` would refuse."""
        if isinstance(view, StereoRig):
            def k(m):
                return None if m is None else tuple(float(v) for v in torch.as_tensor(m).reshape(-1).tolist())
            return ViewSpec((CameraSpec.of(view.head),), float(view.ipd), k(view.K_left), k(view.K_right))
        if isinstance(view, (str, bytes)) or not isinstance(view, (Camera, Sequence)):
            raise ValueError(f"view: expected a Camera, a StereoRig or a sequence of Cameras, got "
                             f"{type(view).__name__}")
        cams = as_camera_list(view)
        first = cams[0]
        for i, cam in enumerate(cams[1:], start=1):
            if (cam.width, cam.height, cam.near, cam.far) != (first.width, first.height, first.near, first.far):
                raise ValueError(f"view: cameras[{i}] differs from cameras[0] in size or clip planes")
        return ViewSpec(tuple(CameraSpec.of(c) for c in cams))

    @property
    def num_cameras(self) -> int:
        return 2 if self.ipd is not None else len(self.cameras)

    @property
    def width(self) -> int:
        return self.cameras[0].width

    @property
    def height(self) -> int:
        return self.cameras[0].height

    def decode(self) -> Camera | StereoRig | list[Camera]:
        if self.ipd is None:
            return [c.decode() for c in self.cameras]

        def k(m):
            return None if m is None else torch.tensor(m, dtype=torch.float64).reshape(3, 3)
        return StereoRig(self.cameras[0].decode(), self.ipd, k(self.K_left), k(self.K_right))

    def part(self, index: int) -> ViewSpec:
        """Camera ``index`` alone (for eye-split: 0 is the left eye of a rig, 1 the right)."""
        if self.ipd is None:
            return ViewSpec((self.cameras[index],))
        side = ("left", "right")[index]
        return ViewSpec((CameraSpec.of(self.decode().eye(side)),))  # type: ignore[union-attr]


# ----- jobs and their results (the transport's unit) ------------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """One unit of work for one worker: a whole frame (frame-parallel) or one eye (eye-split).

    Attributes:
        job_id: unique per scheduler; request_id: the request it belongs to; part: camera index in the request
            (0 for a whole frame); attempt: 1 on the first dispatch, +1 each time it is re-queued after a death.
        scene: the scene's name on the worker; view: the cameras; render_mode, background, sh_degree: as
            :func:`renderer.render`; frame_format: ``float32`` or ``uint8`` (image plane only, rounded).
    """

    job_id: int
    request_id: int
    part: int
    attempt: int
    scene: str
    view: ViewSpec
    render_mode: RenderMode = "rgb"
    background: tuple[float, float, float] | None = None
    sh_degree: int | None = None
    frame_format: FrameFormat = "float32"

    def plane_layout(self) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        """``(name, shape, dtype)`` of each plane this job returns, in order."""
        c, h, w = self.view.num_cameras, self.view.height, self.view.width
        out = []
        for name, channels in PLANES[self.render_mode]:
            dtype = np.dtype(np.uint8) if (name == "image" and self.frame_format == "uint8") else np.dtype(np.float32)
            out.append((name, (c, h, w, channels), dtype))
        return out

    def nbytes(self) -> int:
        return sum(int(np.prod(shape)) * dtype.itemsize for _, shape, dtype in self.plane_layout())


@dataclass(frozen=True)
class JobResult:
    """What a worker sends back for a job: its planes (copied out of shared memory) or an error.

    Attributes:
        planes: name -> array ``[C, H, W, ch]`` (None on error); error: the worker's exception as text.
        render_ms: the worker's own render time (what the cost model learns from); transfer_ms: the copy into
            shared memory plus the copy out of it.
    """

    job_id: int
    attempt: int
    planes: dict[str, np.ndarray] | None
    error: str | None
    render_ms: float
    transfer_ms: float = 0.0


# ----- results for the caller -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameTimings:
    """Where a frame's time went, in milliseconds.

    Attributes:
        queued_ms: from ``submit`` to the first dispatch of its (first) job.
        render_ms: the workers' render time (the longest part in eye-split).
        transfer_ms: the copies through shared memory (the longest part).
        total_ms: from ``submit`` to the frame being ready.
    """

    queued_ms: float
    render_ms: float
    transfer_ms: float
    total_ms: float


@dataclass(frozen=True)
class Frame:
    """A served request.

    Attributes:
        request_id: the id ``submit`` gave it (increasing in submit order).
        image: colour ``[C, H, W, 3]`` (float32, or uint8 with ``frame_format="uint8"``); None in the ``depth``
            and ``alpha`` modes.
        alpha: ``[C, H, W, 1]`` in the ``alpha`` mode, else None.
        depth: ``[C, H, W, 1]`` in the depth modes, else None.
        workers: the worker that rendered each camera (C names).
        mode: how it was rendered; attempts: the most dispatches any of its jobs needed (1 unless a worker died).
        timings: see :class:`FrameTimings`.
    """

    request_id: int
    image: np.ndarray | None  # [C, H, W, 3]
    alpha: np.ndarray | None  # [C, H, W, 1]
    depth: np.ndarray | None  # [C, H, W, 1]
    workers: tuple[str, ...]
    mode: Mode
    attempts: int
    timings: FrameTimings


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as the scheduler sees it (``Scheduler.workers()``).

    Attributes:
        name: unique name; device: where it renders (``cuda:0``, ``cpu``, ``sim``); state: see ``WorkerState``;
        pid: its process id where it has one; in_flight: jobs sent and not yet back; frames: jobs completed;
        restarts: times it was restarted after dying; last_error: why it last died or failed to start.
    """

    name: str
    device: str
    state: WorkerState
    pid: int | None
    in_flight: int
    frames: int
    restarts: int
    last_error: str | None


@dataclass(frozen=True)
class SchedulerEvent:
    """Something the scheduler did to its workers (kept in ``Scheduler.events()``).

    Attributes:
        time: ``time.monotonic()``; action: ``add``, ``release`` (elastic), ``operator-add``, ``operator-remove``,
            ``died``, ``restart``, ``failed``, ``ready``; worker: its name; reason: why, in words; rate_fps: the
            workers' estimated rate at that moment (elastic actions).
    """

    time: float
    action: str
    worker: str
    reason: str
    rate_fps: float | None = None


# ----- configuration --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ElasticConfig:
    """The elastic controller: hold ``target_fps`` with as few workers as it can.

    A worker is added when the workers' rate (from their measured frame times) stays under ``target_fps`` for
    ``add_after_s``; one is released when the others alone would still give ``release_margin`` x ``target_fps``
    for ``release_after_s``. After any change the controller waits ``cooldown_s`` (and for new workers to be
    ready), so it never flaps.

    Attributes:
        target_fps: frames per second to hold (whole requests: a stereo pair is one frame).
        min_workers, max_workers: bounds on the active workers (max None: the whole pool).
        release_margin: > 1; the hysteresis band between adding and releasing.
    """

    target_fps: float
    min_workers: int = 1
    max_workers: int | None = None
    add_after_s: float = 1.0
    release_after_s: float = 3.0
    cooldown_s: float = 2.0
    release_margin: float = 1.2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_fps) and self.target_fps > 0):
            raise ValueError(f"target_fps: expected a finite value > 0, got {self.target_fps}")
        if self.min_workers < 1:
            raise ValueError(f"min_workers: expected >= 1, got {self.min_workers}")
        if self.max_workers is not None and self.max_workers < self.min_workers:
            raise ValueError(f"max_workers: expected >= min_workers ({self.min_workers}), got {self.max_workers}")
        if not self.release_margin > 1.0:
            raise ValueError(f"release_margin: expected > 1 (the hysteresis band), got {self.release_margin}")
        if min(self.add_after_s, self.release_after_s, self.cooldown_s) < 0:
            raise ValueError("add_after_s, release_after_s and cooldown_s must be >= 0")


@dataclass(frozen=True)
class CostConfig:
    """The cost model: running estimates of frame time per (worker, scene, resolution, cameras).

    Attributes:
        smoothing: weight of a new measurement in the exponential average (0..1].
        prior_ms: the guess for a worker and workload never measured anywhere (small: new workers get tried).
    """

    smoothing: float = 0.3
    prior_ms: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing: expected a value in (0, 1], got {self.smoothing}")
        if not self.prior_ms > 0:
            raise ValueError(f"prior_ms: expected > 0, got {self.prior_ms}")


@dataclass(frozen=True)
class SchedulerConfig:
    """How the scheduler runs.

    Attributes:
        mode: ``auto`` (chosen per request from measured costs), ``frame-parallel`` or ``eye-split``.
        elastic: the elastic controller, or None to keep every worker of the pool running.
        max_inflight: jobs queued on one worker at once (2 keeps it busy while a result travels back).
        max_restarts: restarts of one worker before it is marked failed; max_attempts: dispatches of one job
            before its request fails with :class:`WorkerLostError` (a job that kills every worker it touches).
        restart_delay_s: wait before restarting a dead worker.
        tick_s: how often the control loop runs the elastic controller and checks timeouts.
        eye_split_gain: eye-split is chosen in ``auto`` only when its predicted latency is below
            (1 - gain) x frame-parallel's; probe_every: in ``auto``, every Nth request of a workload runs the other
            mode, to keep both estimates fresh (0: never).
        frame_format: ``float32`` images, or ``uint8`` (rounded on the worker: a quarter of the bytes to move).
        start_timeout_s: a worker not ready by then is counted as failed to start.
        cost: the cost model's settings.
    """

    mode: ModeSetting = "auto"
    elastic: ElasticConfig | None = None
    max_inflight: int = 2
    max_restarts: int = 3
    max_attempts: int = 3
    restart_delay_s: float = 0.2
    tick_s: float = 0.05
    eye_split_gain: float = 0.1
    probe_every: int = 50
    frame_format: FrameFormat = "float32"
    start_timeout_s: float = 300.0
    cost: CostConfig = field(default_factory=CostConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODE_SETTINGS:
            raise ValueError(f"mode: expected one of {', '.join(MODE_SETTINGS)}, got {self.mode!r}")
        if self.frame_format not in ("float32", "uint8"):
            raise ValueError(f"frame_format: expected 'float32' or 'uint8', got {self.frame_format!r}")
        for name in ("max_inflight", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.max_restarts < 0 or self.probe_every < 0:
            raise ValueError("max_restarts and probe_every must be >= 0")
        if not 0 <= self.eye_split_gain < 1:
            raise ValueError(f"eye_split_gain: expected a value in [0, 1), got {self.eye_split_gain}")
        if not self.tick_s > 0 or self.restart_delay_s < 0 or not self.start_timeout_s > 0:
            raise ValueError("tick_s and start_timeout_s must be > 0, restart_delay_s >= 0")


def check_render_mode(render_mode: str) -> None:
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode: expected one of {', '.join(RENDER_MODES)}, got {render_mode!r}")
