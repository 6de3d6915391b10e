"""Frame sources: what turns (scene, camera, settings) into an eye buffer, behind one small interface.

- ``gl``: :class:`GLSplatSource`, the shader rasterizer (any GL 3.3 machine, no CUDA needed);
- ``torch``, ``native``, ``auto``: :class:`RendererSource`, ``renderer.render`` on CPU or CUDA, the image uploaded
  to the eye buffer's texture (a host round trip through a reused pinned buffer on CUDA; CUDA-GL interop, which
  would skip it, is not done yet);
- ``remote``: :class:`viewer.remote.RemoteSource`, frames streamed from a ``gscache serve`` render server.

A source may also have ``begin_frame(request, cameras)``, which the pipeline calls with the whole request before
the per-eye ``render`` calls (left, then right).

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

from renderer import Camera, Splats, render

from .gl_splats import GLSplatRenderer

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


class RendererSource:
    """``renderer.render`` with a named backend (``torch``, ``native``, ``auto``), uploaded to the eye texture.

    Args:
        backend: the ``render()`` backend name.
        device: ``"cpu"`` or ``"cuda"``; the scene is moved there once.
    """

    def __init__(self, backend: str, device: str) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"backend {backend!r}: needs CUDA, and PyTorch sees no CUDA device")
        self.name = backend
        self.device = torch.device(device)
        self.splats: Splats | None = None
        self._pinned: torch.Tensor | None = None

    def set_scene(self, splats: Splats) -> None:
        self.splats = splats.detach().to(self.device)

    def render(self, camera: Camera, settings: RenderSettings, fbo: moderngl.Framebuffer) -> SourceFrame:
        start = time.perf_counter()
        tex = fbo.color_attachments[0]
        if self.splats is None or len(self.splats) == 0:
            fbo.clear(*settings.background, 0.0)
            return SourceFrame((time.perf_counter() - start) * 1e3)
        mode = "rgb+depth" if settings.mode == "depth" else settings.mode
        degree = None if settings.sh_degree is None else min(settings.sh_degree, self.splats.sh_degree)
        bg = settings.background if settings.mode == "rgb" else (0.0, 0.0, 0.0)
        with torch.inference_mode():
            out = render(self.splats, camera, backend=self.name, sh_degree=degree, background=bg, render_mode=mode)
            alpha = out.alpha[0]
            if settings.mode == "depth":
                rgb = (out.depth[0] * alpha).expand(-1, -1, 3)
            elif settings.mode == "alpha":
                rgb = alpha.expand(-1, -1, 3)
            else:
                rgb = out.image[0]
            rgba = torch.cat([rgb, alpha], dim=-1).float().contiguous()  # [H, W, 4]
            depth_range = _depth_range(out.depth[0], alpha) if settings.mode == "depth" else (0.0, 1.0)
            host = self._to_host(rgba)
        tex.write(host.numpy().tobytes())
        return SourceFrame((time.perf_counter() - start) * 1e3, depth_range, int(out.stats.visible[0]))

    def _to_host(self, rgba: torch.Tensor) -> torch.Tensor:
        if rgba.device.type != "cuda":
            return rgba
        if self._pinned is None or self._pinned.shape != rgba.shape:
            self._pinned = torch.empty(rgba.shape, dtype=torch.float32, pin_memory=True)
        self._pinned.copy_(rgba, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return self._pinned

    def release(self) -> None:
        self.splats = None
        self._pinned = None


def _depth_range(depth: torch.Tensor, alpha: torch.Tensor) -> tuple[float, float]:
    hit = depth[alpha > 0.5]
    if hit.numel() == 0:
        return 0.0, 1.0
    if hit.numel() > 100_000:
        hit = hit[:: hit.numel() // 100_000]
    lo, hi = torch.quantile(hit.float(), torch.tensor([0.01, 0.99], device=hit.device)).tolist()
    return float(lo), float(hi)


def make_source(name: str, ctx: moderngl.Context, async_sort: bool = False, remote=None) -> FrameSource:
    """The frame source called ``name`` (one of :data:`SOURCE_NAMES`, or ``remote`` with a ``RemoteSpec``).

    ``auto`` is ``native`` on CUDA when PyTorch sees a GPU, else the GL splat renderer (which is far faster than
    ``torch`` on a CPU). Raises ``ValueError`` for an unknown name or a CUDA backend without CUDA, and
    ``RuntimeError`` for ``remote`` without its packages.
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
        return RendererSource("native", "cuda")
    return RendererSource("torch", "cuda" if torch.cuda.is_available() else "cpu")


def numpy_rgba(fbo: moderngl.Framebuffer) -> np.ndarray:
    """Read a float eye buffer back as ``[H, W, 4]`` float32, row 0 at the top."""
    w, h = fbo.size
    return np.frombuffer(fbo.read(components=4, dtype="f4"), dtype=np.float32).reshape(h, w, 4)
