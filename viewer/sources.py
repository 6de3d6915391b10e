"""Frame sources: what turns (scene, camera, settings) into an eye buffer, behind one small interface.

- ``gl``: :class:`GLSplatSource`, the shader rasterizer (any GL 3.3 machine, no CUDA needed);
- ``torch``, ``native``, ``auto``: :class:`RendererSource`, a ``renderer`` backend on CPU or CUDA, both eyes in
  one call (a chunk file, :class:`renderer.streaming.StreamedScene`, through a ``StreamingRenderer`` under its GPU
  budget); for ``native`` the frame becomes the display image on the GPU and goes into the output texture through
  CUDA-GL interop (or a reused pinned host buffer where the GL context is not on the CUDA GPU); ``torch`` (the
  reference) fills float eye buffers;
- ``remote``: :class:`viewer.remote.RemoteSource`, frames streamed from a ``gscache serve`` render server.

A source may also have ``begin_frame(request, cameras)``, which the pipeline calls with the whole request before
the per-eye ``render`` calls (left, then right); ``render_eyes(cameras, settings, fbos)``, which it calls instead of
the per-eye calls; or ``display = True`` and ``render_display(request, geometry, target)``, which writes the whole
frame, already shaded and laid out, into an RGBA8 target (no eye buffers, no compose pass).

An eye buffer is a float RGBA texture holding (colour over the background, alpha) in ``rgb`` mode, (depth * alpha,
alpha) in ``depth`` mode and (-, alpha) in ``alpha`` mode; the compose pass (``viewer/pipeline.py``) shades it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import moderngl
import numpy as np
import torch

from renderer import Camera, Splats
from renderer.backends import default_registry
from renderer.cameras import CameraBatch
from renderer.native import load_native
from renderer.streaming import StreamedScene
from renderer.types import RenderOptions

from .gl_shared import SharedDisplay, shared_display_unavailable
from .gl_splats import GLSplatRenderer
from .interop import LAYOUT_IDS, MODE_IDS, GLImage, depth_ramp, display_rgba8, interop_unavailable

SOURCE_NAMES = ("gl", "torch", "native", "auto")
REMOTE = "remote"


@dataclass(frozen=True)
class RenderSettings:
    """What a frame source needs besides the camera.

    Attributes:
        mode: ``"rgb"``, ``"depth"`` or ``"alpha"``.
        sh_degree: SH degree to evaluate (clamped to the scene's); None: the scene's.
        background: RGB in 0..1 (colour mode only).
    """

    mode: str = "rgb"
    sh_degree: int | None = None
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class SourceFrame:
    """What a source reports about one eye.

    Attributes:
        ms: wall time of the render call (GPU work finished), milliseconds.
        depth_range: near and far depth of the grey ramp in depth mode.
        visible: Gaussians drawn or visible.
        pending: the source will produce a different image for the same camera soon (async sort).
    """

    ms: float
    depth_range: tuple[float, float] = (0.0, 1.0)
    visible: int = 0
    pending: bool = False


class FrameSource(Protocol):
    """Turns a camera into an eye buffer. ``camera`` has the eye buffer's size."""

    name: str

    def set_scene(self, splats: Splats) -> None: ...

    def render(self, camera: Camera, settings: RenderSettings, fbo: moderngl.Framebuffer) -> SourceFrame: ...

    def release(self) -> None: ...


class GLSplatSource:
    """The GL splat renderer as a frame source."""

    name = "gl"

    def __init__(self, ctx: moderngl.Context, async_sort: bool = False) -> None:
        self.ctx = ctx
        self.renderer = GLSplatRenderer(ctx, async_sort=async_sort)

    def set_scene(self, splats: Splats) -> None:
        if isinstance(splats, StreamedScene):
            raise ValueError("a chunk file renders through the torch or native backend, not gl")
        self.renderer.set_scene(splats)

    def render(self, camera: Camera, settings: RenderSettings, fbo: moderngl.Framebuffer) -> SourceFrame:
        start = time.perf_counter()
        order = self.renderer.draw(camera, fbo, settings.mode, settings.sh_degree, settings.background)
        self.ctx.finish()
        ms = (time.perf_counter() - start) * 1e3
        depth_range = order.depth_range if order is not None else (0.0, 1.0)
        return SourceFrame(ms, depth_range, self.renderer.drawn_count, self.renderer.sort_pending)

    def release(self) -> None:
        self.renderer.release()


@dataclass(frozen=True)
class EyeGeometry:
    """The eye cameras of one frame as arrays (what :meth:`FrameRequest.eye_cameras` describes, without building
    :class:`Camera` objects every frame).

    Attributes:
        viewmats: world-to-camera ``[C, 4, 4]`` (float64, OpenCV axes), left eye first.
        Ks: intrinsics ``[C, 3, 3]`` (float64).
        width, height: eye size in pixels; near, far: clip distances.
    """

    viewmats: np.ndarray
    Ks: np.ndarray
    width: int
    height: int
    near: float
    far: float

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    @staticmethod
    def from_cameras(cameras: list[Camera]) -> EyeGeometry:
        first = cameras[0]
        return EyeGeometry(np.stack([c.world_to_camera.detach().cpu().numpy().astype(np.float64) for c in cameras]),
                           np.stack([c.K.detach().cpu().numpy().astype(np.float64) for c in cameras]),
                           first.width, first.height, first.near, first.far)


UPLOADS = ("auto", "host", "eyes")


def _write_attached(target, fits, make, args) -> str | None:
    """Write ``args`` through ``target.attachment`` (a GPU-side writer bound to the target: ``GLImage`` or
    ``SharedDisplay``), replaced first by ``make()`` unless ``fits(attachment)``. Returns None, or the error of a
    refused call (the attachment then released and dropped)."""
    try:
        current = target.attachment
        if current is None or not fits(current):
            if current is not None:
                current.release()
                target.attachment = None
            target.attachment = make()
        target.attachment.write(*args)
    except RuntimeError as err:
        if target.attachment is not None:
            target.attachment.release()
            target.attachment = None
        return str(err)
    return None


class RendererSource:
    """``renderer`` backends (``torch``, ``native``) as a frame source: all eyes of a frame in one render call.

    Two ways to the screen (``upload``):
    - the display path (``auto`` for ``native`` on CUDA, or ``host``): the eye images become the display image
      (the compose pass's shading, stereo layout and 8 bits) on the render device (``viewer/interop.py``). When the
      GL context runs on the CUDA GPU it goes into CUDA memory that GL reads in place (``viewer/gl_shared.py``,
      ``upload_path == "shared"``: the pipeline draws from it), or where that is not supported into the output
      texture through CUDA-GL interop (``"interop"``); else through a reused pinned host buffer (``"host"``);
    - the eye path (``auto`` otherwise: the ``torch`` reference, on CPU or CUDA; or ``eyes``): float RGBA eye
      buffers (colour over the background, alpha; or depth * alpha, alpha), composed by the pipeline's GL pass
      (``"eyes"``), which tests read back with ``FramePipeline.read_eye``.

    Args:
        backend: a ``renderer`` backend name.
        device: ``"cpu"`` or ``"cuda"``; the scene is moved there once.
        upload: ``auto``, ``host`` or ``eyes`` (above).
    """

    def __init__(self, backend: str, device: str, upload: str = "auto") -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"backend {backend!r}: needs CUDA, and PyTorch sees no CUDA device")
        if upload not in UPLOADS:
            raise ValueError(f"upload: expected one of {', '.join(UPLOADS)}, got {upload!r}")
        self.name = backend
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.upload = upload
        cuda_native = self.device.type == "cuda" and backend == "native"
        self.display = upload == "host" or (upload == "auto" and cuda_native)
        """The pipeline hands this source whole frames (``render_display``) instead of eye buffers."""
        self.upload_path: str | None = None
        """How the last frame reached GL: ``shared``, ``interop``, ``host`` or ``eyes`` (None before the first)."""
        self.upload_note = ""
        """Why the shared memory or CUDA-GL interop is not used (empty when it is, or before it was tried)."""
        self.splats: Splats | StreamedScene | None = None
        self._streaming = None  # the StreamingRenderer of a StreamedScene
        self._interop: bool | None = None if upload == "auto" and cuda_native else False
        self._shared: bool | None = self._interop  # GL reads CUDA memory in place (decided on the first frame)
        self._backend = None
        self._cams: tuple | None = None  # (pinned host, device, copy event) of the packed cameras
        self._background: tuple[tuple, torch.Tensor] | None = None
        self._pinned: torch.Tensor | None = None

    def set_scene(self, splats: Splats | StreamedScene) -> None:
        """Move ``splats`` to the device, or, for a chunk file, make its streaming renderer (``ValueError`` when
        the budget is too small)."""
        if isinstance(splats, StreamedScene):
            self._streaming = splats.renderer(self.name, self.device)
            self.splats = splats
            return
        self._streaming = None
        self.splats = splats.detach().to(self.device)

    @property
    def _dtype(self) -> torch.dtype:
        return self.splats.dtype if isinstance(self.splats, Splats) else torch.float32

    # ----- rendering: one call for all eyes ----------------------------------------------------------------------
    def _render(self, geometry: EyeGeometry, settings: RenderSettings):
        if self._backend is None:
            self._backend = default_registry().resolve(self.name, self.device)
        splats = self.splats
        mode = "rgb+depth" if settings.mode == "depth" else settings.mode
        degree = None if settings.sh_degree is None else min(max(settings.sh_degree, 0), splats.sh_degree)
        background = self._background_tensor(settings, len(geometry))
        if self._streaming is not None:
            cams = [Camera(torch.from_numpy(geometry.viewmats[i]).float(), torch.from_numpy(geometry.Ks[i]).float(),
                           geometry.width, geometry.height, geometry.near, geometry.far) for i in range(len(geometry))]
            return self._streaming.render(cams, background=background, render_mode=mode, sh_degree=degree)
        options = RenderOptions(sh_degree=degree, background=background, render_mode=mode)
        with torch.inference_mode():
            return self._backend.render(splats, self._camera_batch(geometry), options, background)

    def _camera_batch(self, g: EyeGeometry) -> CameraBatch:
        """The eyes on the device with one copy (from a reused pinned buffer on CUDA)."""
        c = len(g)
        packed = np.concatenate([g.viewmats.reshape(-1), g.Ks.reshape(-1)])  # [C*16 + C*9] float64
        if self.device.type == "cuda":
            if self._cams is None or self._cams[0].numel() != packed.size:
                host = torch.empty(packed.size, dtype=torch.float32, pin_memory=True)
                self._cams = (host, torch.empty(packed.size, dtype=torch.float32, device=self.device),
                              torch.cuda.Event())
            host, dev, copied = self._cams
            copied.synchronize()  # the last copy out of the pinned buffer is done (it always is by now)
            host.numpy()[:] = packed
            dev.copy_(host, non_blocking=True)
            copied.record(torch.cuda.current_stream(self.device))
        else:
            dev = torch.from_numpy(packed).to(self._dtype)
        return CameraBatch(dev[: c * 16].view(c, 4, 4), dev[c * 16:].view(c, 3, 3), g.width, g.height, g.near,
                           g.far)

    def _background_tensor(self, settings: RenderSettings, eyes: int) -> torch.Tensor:
        bg = tuple(settings.background) if settings.mode == "rgb" else (0.0, 0.0, 0.0)
        key = (bg, eyes)
        if self._background is None or self._background[0] != key:
            tensor = torch.tensor(bg, dtype=self._dtype, device=self.device).expand(eyes, 3).contiguous()
            self._background = (key, tensor)
        return self._background[1]

    # ----- the display path: whole frames into the output texture ------------------------------------------------
    def render_display(self, request, geometry: EyeGeometry, target) -> list[SourceFrame]:
        """Render ``request`` (eyes ``geometry``) and write its display image into ``target.texture`` (RGBA8, the
        display size of the request's layout at the eyes' size). ``target.attachment`` keeps the texture's CUDA
        registration (released with the texture by the pipeline)."""
        start = time.perf_counter()
        settings, layout, eyes = request.settings, request.stereo, len(geometry)
        if self.splats is None or len(self.splats) == 0:
            bg = settings.background if settings.mode == "rgb" else (0.0, 0.0, 0.0)
            target.fbo.clear(*bg, 1.0)
            self.upload_path = "host"
            return [SourceFrame((time.perf_counter() - start) * 1e3) for _ in range(eyes)]
        out = self._render(geometry, settings)
        mode = settings.mode
        image = out.image if mode == "rgb" else None
        alpha = out.alpha if mode != "rgb" else None
        depth = out.depth if mode == "depth" else None
        ranges, lo, span = [(0.0, 1.0)] * eyes, [0.0, 0.0], [1.0, 1.0]
        if mode == "depth":
            ranges = [_depth_range(out.depth[i], out.alpha[i]) for i in range(eyes)]
            lo, span = depth_ramp(ranges)
        args = (image, alpha, depth, mode, layout, lo, span)
        if not (self._write_shared(target, *args) or self._write_interop(target, *args)):
            self._write_host(target.texture, image, alpha, depth, mode, layout, lo, span)
        ms = (time.perf_counter() - start) * 1e3
        visible = list(out.stats.visible) + [0] * eyes
        return [SourceFrame(ms, ranges[i], int(visible[i])) for i in range(eyes)]

    def _write_shared(self, target, *args) -> bool:
        """Write into CUDA memory shared with GL if that works here (decided once per source); False: try interop.
        ``target.attachment`` becomes the :class:`SharedDisplay` (output-sized); the pipeline draws from it."""
        if self._shared is None:
            reason = shared_display_unavailable(target.texture.ctx, self.device)
            self._shared, self.upload_note = reason is None, reason or ""
        if not self._shared:
            return False
        size = target.texture.size
        err = _write_attached(target, lambda a: isinstance(a, SharedDisplay) and a.capacity == size,
                              lambda: SharedDisplay(target.texture.ctx, *size, self.device), args)
        if err is not None:  # export, import or a GL call refused: interop (or the host) from now on
            self._shared, self.upload_note = False, f"CUDA memory shared with GL failed: {err}"
            return False
        self.upload_path = "shared"
        return True

    def _write_interop(self, target, *args) -> bool:
        """Write through CUDA-GL interop if it works here (decided once per source); False: use the host."""
        if self._interop is None:
            reason = interop_unavailable(self.device)
            self._interop = reason is None
            self.upload_note = reason or self.upload_note  # (keeps why the shared memory is not used)
        if not self._interop:
            return False
        err = _write_attached(target, lambda a: getattr(a, "texture", None) is target.texture,
                              lambda: GLImage(target.texture, self.device), args)
        if err is not None:  # registration or mapping refused: the host path from now on
            self._interop, self.upload_note = False, f"CUDA-GL interop failed: {err}"
            return False
        self.upload_path = "interop"
        return True

    def _write_host(self, texture: moderngl.Texture, image, alpha, depth, mode, layout, lo, span) -> None:
        if self.device.type == "cuda" and self.name == "native":
            ops = load_native(self.device)  # the same kernel as the interop path, into a tensor
            with torch.inference_mode():
                packed = ops.display_pack(image, alpha, depth, MODE_IDS[mode], LAYOUT_IDS[layout], lo, span)
        else:
            with torch.inference_mode():
                packed = display_rgba8(image, alpha, depth, mode, layout, lo, span)
        texture.write(self._to_host(packed).numpy())
        self.upload_path = "host"

    def synchronize(self) -> None:
        """Wait for the GPU work of the last frame (the interop write is ordered on the stream, not on GL)."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    # ----- the eye path: float eye buffers, composed in GL -------------------------------------------------------
    def render_eyes(self, cameras: list[Camera], settings: RenderSettings,
                    fbos: list[moderngl.Framebuffer]) -> list[SourceFrame]:
        """Render all eyes in one call and upload each into its eye buffer (float RGBA)."""
        start = time.perf_counter()
        if self.splats is None or len(self.splats) == 0:
            for fbo in fbos:
                fbo.clear(*settings.background, 0.0)
            return [SourceFrame((time.perf_counter() - start) * 1e3) for _ in fbos]
        out = self._render(EyeGeometry.from_cameras(cameras), settings)
        reports = []
        for i, fbo in enumerate(fbos):
            alpha = out.alpha[i]
            if settings.mode == "depth":
                rgb = (out.depth[i] * alpha).expand(-1, -1, 3)
            elif settings.mode == "alpha":
                rgb = alpha.expand(-1, -1, 3)
            else:
                rgb = out.image[i]
            rgba = torch.cat([rgb, alpha], dim=-1).float().contiguous()  # [H, W, 4]
            depth_range = _depth_range(out.depth[i], alpha) if settings.mode == "depth" else (0.0, 1.0)
            fbo.color_attachments[0].write(self._to_host(rgba).numpy())
            reports.append((depth_range, int(out.stats.visible[i]) if i < len(out.stats.visible) else 0))
        self.upload_path = "eyes"
        ms = (time.perf_counter() - start) * 1e3
        return [SourceFrame(ms, r, v) for r, v in reports]

    def render(self, camera: Camera, settings: RenderSettings, fbo: moderngl.Framebuffer) -> SourceFrame:
        """One eye into its eye buffer (the :class:`FrameSource` protocol)."""
        return self.render_eyes([camera], settings, [fbo])[0]

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "cuda":
            return tensor
        if self._pinned is None or self._pinned.shape != tensor.shape or self._pinned.dtype != tensor.dtype:
            self._pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self._pinned.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(tensor.device).synchronize()
        return self._pinned

    def release(self) -> None:
        self.splats = self._streaming = None
        self._pinned = None
        self._cams = None
        self._background = None


def _depth_range(depth: torch.Tensor, alpha: torch.Tensor) -> tuple[float, float]:
    hit = depth[alpha > 0.5]
    if hit.numel() == 0:
        return 0.0, 1.0
    if hit.numel() > 100_000:
        hit = hit[:: hit.numel() // 100_000]
    lo, hi = torch.quantile(hit.float(), torch.tensor([0.01, 0.99], device=hit.device)).tolist()
    return float(lo), float(hi)


def make_source(name: str, ctx: moderngl.Context, async_sort: bool = False, remote=None,
                upload: str = "auto") -> FrameSource:
    """The frame source called ``name`` (one of :data:`SOURCE_NAMES`, or ``remote`` with a ``RemoteSpec``).

    ``auto`` is ``native`` on CUDA when PyTorch sees a GPU, else the GL splat renderer (which is far faster than
    ``torch`` on a CPU). ``upload`` is :class:`RendererSource`'s (``auto``, ``host``, ``eyes``). Raises
    ``ValueError`` for an unknown name or a CUDA backend without CUDA, and ``RuntimeError`` for ``remote`` without
    its packages.
    """
    if name == REMOTE:
        if remote is None:
            raise ValueError("remote: no server given (gscache view --remote ws://host:port, or Connect in the "
                             "Remote server panel)")
        from .remote import RemoteSource

        return RemoteSource(remote)
    if name not in SOURCE_NAMES:
        raise ValueError(f"backend: expected one of {', '.join(SOURCE_NAMES)}, got {name!r}")
    if name == "auto":
        name = "native" if torch.cuda.is_available() else "gl"
    if name == "gl":
        return GLSplatSource(ctx, async_sort=async_sort)
    if name == "native":
        return RendererSource("native", "cuda", upload=upload)
    return RendererSource("torch", "cuda" if torch.cuda.is_available() else "cpu", upload=upload)


def numpy_rgba(fbo: moderngl.Framebuffer) -> np.ndarray:
    """Read a float eye buffer back as ``[H, W, 4]`` float32, row 0 at the top."""
    w, h = fbo.size
    return np.frombuffer(fbo.read(components=4, dtype="f4"), dtype=np.float32).reshape(h, w, 4)
