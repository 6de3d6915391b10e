"""One frame of the viewer: view -> eye cameras -> frame source -> eye buffers -> compose -> RGBA8 output.

The same pipeline serves the window (its output texture is drawn behind the UI), screenshots, video export and the
offscreen tests and benchmarks, so what is tested is what is shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import moderngl
import numpy as np
import torch

from renderer import Camera, Splats, StereoRig, intrinsics_from_fov

from ._glsl import BLIT_FRAGMENT, COMPOSE_FRAGMENT, FULLSCREEN_VERTEX
from .sources import FrameSource, RenderSettings, SourceFrame, make_source

if TYPE_CHECKING:
    from .remote import RemoteSpec

STEREO_LAYOUTS = {"mono": 0, "side-by-side": 1, "anaglyph": 2}
_MODE_IDS = {"rgb": 0, "depth": 1, "alpha": 2}


@dataclass(frozen=True)
class ViewSpec:
    """A view independent of the image size.

    Attributes:
        world_to_camera: head pose, OpenCV axes ``[4, 4]`` (float64).
        fov_x_deg: horizontal field of view of one eye.
        near, far: clip distances.
    """

    world_to_camera: torch.Tensor  # [4, 4]
    fov_x_deg: float = 60.0
    near: float = 0.01
    far: float = 1e10

    def camera(self, width: int, height: int) -> Camera:
        return Camera(self.world_to_camera, intrinsics_from_fov(width, height, self.fov_x_deg), width, height,
                      self.near, self.far)


@dataclass(frozen=True)
class FrameRequest:
    """Everything that decides one output image.

    Attributes:
        view: the head view.
        width, height: output size in pixels (both eyes together for side by side).
        settings: render mode, SH degree, background.
        stereo: ``"mono"``, ``"side-by-side"`` or ``"anaglyph"``.
        ipd: inter-pupillary distance in scene units (stereo only).
        scale: resolution scale of the eye buffers (the output is upsampled).
    """

    view: ViewSpec
    width: int
    height: int
    settings: RenderSettings = field(default_factory=RenderSettings)
    stereo: str = "mono"
    ipd: float = 0.064
    scale: float = 1.0

    def head_camera(self) -> Camera:
        """The head camera at the eye buffers' size (scaled): what a render server is sent with ``stereo``/``ipd``."""
        if self.stereo not in STEREO_LAYOUTS:
            raise ValueError(f"stereo: expected one of {', '.join(STEREO_LAYOUTS)}, got {self.stereo!r}")
        eye_w = max(1, self.width // 2) if self.stereo == "side-by-side" else self.width
        head = self.view.camera(eye_w, self.height)
        return head.scaled(self.scale) if self.scale != 1.0 else head

    def eye_cameras(self) -> list[Camera]:
        """The cameras of the eye buffers (one for mono, left and right for stereo), already scaled."""
        head = self.head_camera()
        return [head] if self.stereo == "mono" else list(StereoRig(head, self.ipd).eyes())


@dataclass(frozen=True)
class FrameResult:
    """What one frame cost: per-eye source reports and the total wall time (ms)."""

    eyes: list[SourceFrame]
    ms: float

    @property
    def pending(self) -> bool:
        return any(e.pending for e in self.eyes)

    @property
    def visible(self) -> int:
        return self.eyes[0].visible if self.eyes else 0


class _Target:
    """A texture with its framebuffer, re-created when the size or format changes."""

    def __init__(self) -> None:
        self.texture: moderngl.Texture | None = None
        self.fbo: moderngl.Framebuffer | None = None

    def ensure(self, ctx: moderngl.Context, size: tuple[int, int], dtype: str) -> moderngl.Framebuffer:
        if self.texture is None or self.texture.size != size or self.texture.dtype != dtype:
            self.release()
            self.texture = ctx.texture(size, 4, dtype=dtype)
            self.texture.filter = (moderngl.LINEAR, moderngl.LINEAR)
            self.texture.repeat_x = self.texture.repeat_y = False
            self.fbo = ctx.framebuffer(color_attachments=[self.texture])
        return self.fbo

    def release(self) -> None:
        for res in (self.fbo, self.texture):
            if res is not None:
                res.release()
        self.texture, self.fbo = None, None


class FramePipeline:
    """Renders :class:`FrameRequest` s into an RGBA8 output texture with one frame source at a time.

    Args:
        ctx: the moderngl context (window or standalone).
        backend: the first frame source (see ``viewer.sources.make_source``).
        async_sort: let the GL source sort on a worker thread (interactive use).
        remote: the render server of the ``remote`` source.
    """

    def __init__(self, ctx: moderngl.Context, backend: str = "gl", async_sort: bool = False,
                 remote: RemoteSpec | None = None) -> None:
        self.ctx = ctx
        self.async_sort = async_sort
        self.remote = remote
        self._compose = ctx.program(vertex_shader=FULLSCREEN_VERTEX, fragment_shader=COMPOSE_FRAGMENT)
        self._blit = ctx.program(vertex_shader=FULLSCREEN_VERTEX, fragment_shader=BLIT_FRAGMENT)
        self._compose_vao = ctx.vertex_array(self._compose, [])
        self._blit_vao = ctx.vertex_array(self._blit, [])
        self._eyes = [_Target(), _Target()]
        self._output = _Target()
        self.splats: Splats | None = None
        self.source: FrameSource = make_source(backend, ctx, async_sort, remote)
        self.backend = backend

    def set_backend(self, backend: str) -> None:
        """Switch the frame source (the scene is handed over); raises ``ValueError`` if it is unavailable."""
        source = make_source(backend, self.ctx, self.async_sort, self.remote)
        if self.splats is not None:
            source.set_scene(self.splats)
        self.source.release()
        self.source, self.backend = source, backend

    def set_scene(self, splats: Splats) -> None:
        self.splats = splats
        self.source.set_scene(splats)

    @property
    def output_texture(self) -> moderngl.Texture | None:
        return self._output.texture

    def render(self, request: FrameRequest) -> FrameResult:
        """Render ``request`` into the output texture (``request.width`` x ``request.height``, RGBA8)."""
        start = time.perf_counter()
        cams = request.eye_cameras()
        begin = getattr(self.source, "begin_frame", None)
        if begin is not None:  # sources that need the whole request first (remote: one stereo request per frame)
            begin(request, cams)
        reports = []
        for cam, target in zip(cams, self._eyes):
            fbo = target.ensure(self.ctx, (cam.width, cam.height), "f4")
            reports.append(self.source.render(cam, request.settings, fbo))
        out = self._output.ensure(self.ctx, (request.width, request.height), "f1")
        self._compose_into(out, request, reports)
        self.ctx.finish()
        return FrameResult(reports, (time.perf_counter() - start) * 1e3)

    def _compose_into(self, out: moderngl.Framebuffer, request: FrameRequest, reports: list[SourceFrame]) -> None:
        out.use()
        out.viewport = (0, 0, request.width, request.height)
        self.ctx.disable(moderngl.BLEND | moderngl.DEPTH_TEST)
        left = self._eyes[0].texture
        right = self._eyes[1].texture if request.stereo != "mono" else left
        left.use(0)
        right.use(1)
        prog = self._compose
        prog["u_left"].value, prog["u_right"].value = 0, 1
        prog["u_layout"].value = STEREO_LAYOUTS[request.stereo]
        prog["u_mode"].value = _MODE_IDS[request.settings.mode]
        prog["u_flip"].value = 0
        ranges = [r.depth_range for r in reports] + [reports[0].depth_range]
        prog["u_depth_range_left"].value = (*ranges[0], 0.0, 0.0)
        prog["u_depth_range_right"].value = (*ranges[1], 0.0, 0.0)
        self._compose_vao.render(moderngl.TRIANGLES, vertices=3)

    def read_output(self) -> np.ndarray:
        """The last output as ``[H, W, 3]`` uint8, row 0 at the top."""
        if self._output.fbo is None:
            raise ValueError("read_output: nothing has been rendered yet")
        w, h = self._output.fbo.size
        return np.frombuffer(self._output.fbo.read(components=3), dtype=np.uint8).reshape(h, w, 3).copy()

    def read_eye(self, index: int = 0) -> np.ndarray:
        """Eye buffer ``index`` as ``[h, w, 4]`` float32 (see ``viewer/sources.py`` for its contents)."""
        fbo = self._eyes[index].fbo
        if fbo is None:
            raise ValueError(f"read_eye: eye {index} has not been rendered")
        w, h = fbo.size
        return np.frombuffer(fbo.read(components=4, dtype="f4"), dtype=np.float32).reshape(h, w, 4).copy()

    def draw_to(self, fbo: moderngl.Framebuffer, viewport: tuple[int, int, int, int]) -> None:
        """Draw the output texture into ``viewport`` of ``fbo`` (the window), flipped so row 0 is at the top."""
        if self._output.texture is None:
            return
        fbo.use()
        fbo.viewport = viewport
        self.ctx.disable(moderngl.BLEND | moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        self._output.texture.use(0)
        self._blit["u_image"].value = 0
        self._blit["u_flip"].value = 1
        self._blit_vao.render(moderngl.TRIANGLES, vertices=3)

    def release(self) -> None:
        """Free every GL resource (call with the context current)."""
        self.source.release()
        for target in (*self._eyes, self._output):
            target.release()
        for res in (self._compose_vao, self._blit_vao, self._compose, self._blit):
            res.release()
