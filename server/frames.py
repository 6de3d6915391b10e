"""From a request to encoded bytes: the frame-source seam, the render thread and the encode pool.

All GPU work (renders, scene loads, benchmarks) runs on ONE render thread, one job at a time, so the event loop
never blocks and the GPU is never shared between jobs; encoding runs on a small pool beside it, so that the next
frame renders while the last one is encoded. On CUDA the render thread works on a stream of its own and waits only
for that stream, never for the whole device: an encode on the GPU (nvJPEG, on torchvision's stream) overlaps the
next render instead of waiting for it, and the other way round.

The frame cache plugs in as a :class:`FrameSource`: ``render(scene, request)`` returns the float image; the scene's
``version`` tells it when the scene changed.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from renderer import Camera, StereoRig, render

from .encode import EncodedFrame, FrameEncoder, to_uint8
from .errors import GpuOutOfMemory, InvalidRequest, ServerBusy
from .scenes import LoadedScene

T = TypeVar("T")


@dataclass(frozen=True)
class FrameRequest:
    """What to render: a camera or a stereo rig, the background colour, and the stream session asking for it
    (None for ``/render``; a caching source keeps one cache per session)."""

    cameras: Camera | StereoRig
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    session: str | None = None

    @property
    def eyes(self) -> int:
        return 2 if isinstance(self.cameras, StereoRig) else 1

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` per eye."""
        head = self.cameras.head if isinstance(self.cameras, StereoRig) else self.cameras
        return head.width, head.height


class FrameSource(Protocol):
    """Turns a scene and cameras into pixels (the frame cache implements this too)."""

    def render(self, scene: LoadedScene, request: FrameRequest) -> torch.Tensor:  # [C, H, W, 3]
        """The colour image ``[C, H, W, 3]`` (float, [0, 1]) of every eye; C is 1 (mono) or 2 (left, right)."""
        ...


@dataclass(frozen=True)
class DirectFrameSource:
    """Renders every frame from scratch with ``renderer.render``, or a chunk-file scene with its
    :class:`renderer.streaming.StreamingRenderer` (``scene.streaming``)."""

    backend: str = "auto"

    def render(self, scene: LoadedScene, request: FrameRequest) -> torch.Tensor:  # [C, H, W, 3]
        if scene.streaming is not None:
            try:
                out = scene.streaming.render(request.cameras, background=request.background)
            except ValueError as err:  # e.g. a frame too large for the GPU budget
                raise InvalidRequest(f"chunk-file scene: {err}") from None
        else:
            out = render(scene.splats, request.cameras, backend=self.backend, background=request.background)
        if out.image is None:
            raise RuntimeError(f"backend {self.backend!r} returned no colour image in rgb mode")
        return out.image


@dataclass(frozen=True)
class Frame:
    """One encoded frame and what it cost.

    Attributes:
        frame_id: the server's frame counter (all routes and streams).
        encoded: the bytes and their format.
        width, height: per eye; eyes: 1 or 2 (side by side, left first).
        render_ms: render + conversion to 8 bits on the render thread (synchronised on CUDA).
        encode_ms: device-to-host copy and encoding.
    """

    frame_id: int
    encoded: EncodedFrame
    width: int
    height: int
    eyes: int
    render_ms: float

    @property
    def encode_ms(self) -> float:
        return self.encoded.encode_ms


class RenderWorker:
    """The render thread: runs jobs one at a time, at most ``max_queued`` waiting (:class:`ServerBusy` beyond).

    Jobs run under ``torch.inference_mode()``, and on a CUDA ``device`` on a stream of the thread's own (created on
    first use), so that waiting for a frame (:meth:`synchronize`) never waits for other threads' GPU work. A CUDA
    out-of-memory error frees the cache and becomes :class:`GpuOutOfMemory` (HTTP 503), so that the server keeps
    serving.
    """

    def __init__(self, max_queued: int, device: torch.device | str | None = None) -> None:
        self.max_queued = max_queued
        self.device = torch.device(device) if device is not None else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gscache-render")
        self._queued = 0
        self._lock = threading.Lock()
        self._stream: torch.cuda.Stream | None = None

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the render thread and wait for it (a cancelled waiter leaves the job running)."""
        with self._lock:
            if self._queued >= self.max_queued:
                raise ServerBusy(f"the render queue is full ({self.max_queued} jobs); retry shortly")
            self._queued += 1
        future = self._executor.submit(self._run, functools.partial(fn, *args))
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, _future: object) -> None:
        with self._lock:
            self._queued -= 1

    @property
    def queued(self) -> int:
        return self._queued

    def _run(self, job: Callable[[], T]) -> T:
        if self.device is None or self.device.type != "cuda":
            return _guarded(job)
        if self._stream is None:  # only the render thread gets here
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            return _guarded(job)

    def synchronize(self, device: torch.device) -> None:
        """Wait (on the render thread) until the GPU work this thread queued on ``device`` is done."""
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()

    def close(self) -> None:
        """Finish the running and queued jobs, then stop the thread."""
        self._executor.shutdown(wait=True)


def _guarded(job: Callable[[], T]) -> T:
    try:
        with torch.inference_mode():
            return job()
    except (torch.OutOfMemoryError, MemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise GpuOutOfMemory("out of GPU memory for this request; try a smaller resolution or retry later",
                             retry_after_s=1) from None


@dataclass(frozen=True)
class RenderedFrame:
    """A rendered, not yet encoded frame: 8-bit pixels (complete: their stream was synchronised) and their cost.

    Attributes:
        pixels: ``[H, eyes * W, 3]`` uint8, or ``[3, H, eyes * W]`` when ``planar``; on the render device.
        planar: the layout of ``pixels`` (planar for GPU JPEG, see ``FrameEncoder.wants_planar``).
        width, height: per eye; eyes: 1 or 2 (side by side, left first).
        render_ms: render + conversion to 8 bits on the render thread (synchronised on CUDA).
    """

    pixels: torch.Tensor
    planar: bool
    width: int
    height: int
    eyes: int
    render_ms: float


class FramePipeline:
    """Renders on the :class:`RenderWorker` through a :class:`FrameSource`, then encodes on a small pool.

    :meth:`frame` does both for one request. A stream pipelines them instead (``server.stream``): it renders the
    next frame with :meth:`render_now` on the render thread while the last one is encoded (:meth:`encode`) and sent.
    """

    def __init__(self, worker: RenderWorker, source: FrameSource, encoder: FrameEncoder,
                 encode_threads: int = 2) -> None:
        self.worker, self.source, self.encoder = worker, source, encoder
        self._encode_pool = ThreadPoolExecutor(max_workers=encode_threads, thread_name_prefix="gscache-encode")
        self._frame_ids = itertools.count()

    async def frame(self, scene: LoadedScene, request: FrameRequest, fmt: str, quality: int) -> Frame:
        """Render and encode one frame."""
        rendered = await self.worker.call(self.render_now, scene, request, fmt)
        return await self.encode(rendered, fmt, quality)

    def render_now(self, scene: LoadedScene, request: FrameRequest, fmt: str) -> RenderedFrame:
        """Render ``request`` into 8-bit pixels laid out for ``fmt``'s encoder; call it ON the render thread."""
        start = time.perf_counter()
        image = self.source.render(scene, request)  # [C, H, W, 3]
        planar = self.encoder.wants_planar(fmt, image.device)
        pixels = to_uint8(image, planar=planar)
        self.worker.synchronize(pixels.device)
        width, height = request.size
        return RenderedFrame(pixels, planar, width, height, request.eyes, (time.perf_counter() - start) * 1e3)

    async def encode(self, rendered: RenderedFrame, fmt: str, quality: int) -> Frame:
        """Encode a rendered frame on the encode pool."""
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(self._encode_pool, self.encoder.encode, rendered.pixels, fmt, quality,
                                             rendered.planar)
        return Frame(next(self._frame_ids), encoded, rendered.width, rendered.height, rendered.eyes,
                     rendered.render_ms)

    def close(self) -> None:
        self._encode_pool.shutdown(wait=True)
