"""One frame of the viewer: view -> eye cameras -> frame source -> eye buffers -> compose -> RGBA8 output.

The same pipeline serves the window (its output texture is drawn behind the UI), screenshots, video export and the
offscreen tests and benchmarks, so what is tested is what is shown.

Sources with a display path (the ``native`` CUDA frame source, ``viewer.sources.RendererSource``) skip the eye
buffers and the compose pass: they get the eye geometry as arrays (:meth:`FrameRequest.eye_geometry`, no ``Camera``
objects per frame) and write the finished frame, both eyes from one render call, into the RGBA8 output texture (or,
when the eyes are scaled or the width is odd, into a display-sized texture that is blitted into the output). Where
the frame lands in CUDA memory that GL reads in place (``viewer/gl_shared.py``), the window is drawn straight from
that memory and the output texture is filled only when somebody reads it (:attr:`FramePipeline.output_texture`,
:meth:`FramePipeline.read_output`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import moderngl
import numpy as np
import torch

from renderer import Camera, Splats, StereoRig, intrinsics_from_fov
from renderer.cameras import MAX_IMAGE_SIDE

from ._glsl import BLIT_FRAGMENT, COMPOSE_FRAGMENT, FULLSCREEN_VERTEX
from .interop import LAYOUT_IDS, MODE_IDS, display_size
from .sources import EyeGeometry, FrameSource, RenderSettings, SourceFrame, make_source

if TYPE_CHECKING:
    from .remote import RemoteSpec

STEREO_LAYOUTS = LAYOUT_IDS
_MODE_IDS = MODE_IDS


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

    def eye_geometry(self) -> EyeGeometry:
        """:meth:`eye_cameras` as arrays (same numbers, same checks), without building ``Camera`` objects: the
        per-frame path of the CUDA sources, where building and checking three cameras costs more than the frame."""
        if self.stereo not in STEREO_LAYOUTS:
            raise ValueError(f"stereo: expected one of {', '.join(STEREO_LAYOUTS)}, got {self.stereo!r}")
        width = max(1, self.width // 2) if self.stereo == "side-by-side" else self.width
        height = self.height
        for name, size in (("width", width), ("height", height)):
            if not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIDE:
                raise ValueError(f"{name}: expected an integer in 1..{MAX_IMAGE_SIDE}, got {size!r}")
        view = self.view
        if not 0.0 < view.near < view.far:
            raise ValueError(f"near/far: expected 0 < near < far, got near={view.near}, far={view.far}")
        w2c = _checked_pose(view.world_to_camera)
        k = _intrinsics(width, height, view.fov_x_deg)
        if self.scale != 1.0:  # as Camera.scaled
            w, h = max(1, round(width * self.scale)), max(1, round(height * self.scale))
            k[0] *= w / width
            k[1] *= h / height
            width, height = w, h
        if self.stereo == "mono":
            return EyeGeometry(w2c[None], k[None], width, height, view.near, view.far)
        if not (math.isfinite(self.ipd) and self.ipd >= 0.0):
            raise ValueError(f"ipd: expected a finite value >= 0, got {self.ipd}")
        eyes = np.empty((2, 4, 4))
        eyes[0] = eyes[1] = w2c
        eyes[0, 0, 3] += 1.0 * self.ipd / 2  # as StereoRig.eye: left at -ipd/2 along x, so t_x grows
        eyes[1, 0, 3] += -1.0 * self.ipd / 2
        ks = np.empty((2, 3, 3))
        ks[0] = ks[1] = k
        return EyeGeometry(eyes, ks, width, height, view.near, view.far)


_EYE3 = np.eye(3)


def _checked_pose(world_to_camera: torch.Tensor) -> np.ndarray:
    """The pose as float64 ``[4, 4]``, with ``Camera``'s checks (finite, rigid; the same tolerances); a few
    microseconds, as it runs every frame."""
    m = np.array(world_to_camera.detach().cpu().numpy() if isinstance(world_to_camera, torch.Tensor)
                 else world_to_camera, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"world_to_camera: expected shape [4, 4], got {list(m.shape)}")
    if not np.isfinite(m).all():
        raise ValueError("world_to_camera: contains NaN or Inf")
    a, b, c, d = m[3].tolist()
    if max(abs(a), abs(b), abs(c)) > 1e-3 or abs(d - 1.0) > 1e-3 + 1e-5:  # torch.allclose(atol=1e-3)
        raise ValueError(f"world_to_camera: last row must be [0, 0, 0, 1], got {[a, b, c, d]}")
    r = m[:3, :3]
    err = float(np.abs(r @ r.T - _EYE3).max())
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = r.tolist()
    det = r00 * (r11 * r22 - r12 * r21) - r01 * (r10 * r22 - r12 * r20) + r02 * (r10 * r21 - r11 * r20)
    if err > 1e-3 or abs(det - 1.0) > 1e-3:
        raise ValueError(f"world_to_camera: upper 3x3 is not a rotation (|R R^T - I| = {err:.3g}, det = {det:.4g}); "
                         "scaled, sheared or mirrored poses are not supported")
    return m


def _intrinsics(width: int, height: int, fov_x_deg: float) -> np.ndarray:
    """``intrinsics_from_fov(width, height, fov_x_deg)`` as a numpy array (the same numbers and checks)."""
    if not 0.0 < fov_x_deg < 180.0:
        raise ValueError(f"fov_x_deg: expected a value in (0, 180), got {fov_x_deg}")
    half_tan = math.tan(math.radians(fov_x_deg) / 2)
    f = 0.5 * width / half_tan if half_tan > 0 else math.inf
    if not math.isfinite(f):
        raise ValueError(f"fov_x_deg: {fov_x_deg} is too small to give a finite focal length")
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=np.float64)


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
    """A texture with its framebuffer, re-created when the size or format changes.

    ``attachment``: an object bound to the texture (a CUDA registration, ``viewer.interop.GLImage``), released
    before the texture is, and dropped when the texture is re-created.
    """

    def __init__(self) -> None:
        self.texture: moderngl.Texture | None = None
        self.fbo: moderngl.Framebuffer | None = None
        self.attachment = None

    def ensure(self, ctx: moderngl.Context, size: tuple[int, int], dtype: str) -> moderngl.Framebuffer:
        if self.texture is None or self.texture.size != size or self.texture.dtype != dtype:
            self.release()
            self.texture = ctx.texture(size, 4, dtype=dtype)
            self.texture.filter = (moderngl.LINEAR, moderngl.LINEAR)
            self.texture.repeat_x = self.texture.repeat_y = False
            self.fbo = ctx.framebuffer(color_attachments=[self.texture])
        return self.fbo

    def release(self) -> None:
        attachment, self.attachment = self.attachment, None
        if attachment is not None:
            attachment.release()
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
        upload: how the ``torch``/``native`` sources reach GL (``viewer.sources.RendererSource``): ``auto``
            (``native`` on CUDA: the display path, through CUDA-GL interop where the GL context runs on the CUDA
            GPU, else a pinned host buffer; ``torch``: float eye buffers), ``host`` or ``eyes``.
    """

    def __init__(self, ctx: moderngl.Context, backend: str = "gl", async_sort: bool = False,
                 remote: RemoteSpec | None = None, upload: str = "auto") -> None:
        self.ctx = ctx
        self.async_sort = async_sort
        self.remote = remote
        self.upload = upload
        self._compose = ctx.program(vertex_shader=FULLSCREEN_VERTEX, fragment_shader=COMPOSE_FRAGMENT)
        self._blit = ctx.program(vertex_shader=FULLSCREEN_VERTEX, fragment_shader=BLIT_FRAGMENT)
        self._compose_vao = ctx.vertex_array(self._compose, [])
        self._blit_vao = ctx.vertex_array(self._blit, [])
        self._eyes = [_Target(), _Target()]
        self._display = _Target()  # display-path frames whose size differs from the output's
        self._output = _Target()
        self._display_frame = False  # the last frame took the display path: the eye buffers do not hold it
        self._shared = None  # the SharedDisplay holding the last frame, when it went there (viewer/gl_shared.py)
        self._output_stale = False  # the output texture does not hold the shared frame yet
        self.splats: Splats | None = None
        self.source: FrameSource = make_source(backend, ctx, async_sort, remote, upload)
        self.backend = backend

    def set_backend(self, backend: str) -> None:
        """Switch the frame source (the scene is handed over); raises ``ValueError`` if it is unavailable."""
        source = make_source(backend, self.ctx, self.async_sort, self.remote, self.upload)
        if self.splats is not None:
            source.set_scene(self.splats)
        self.source.release()
        self.source, self.backend = source, backend

    def set_scene(self, splats: Splats) -> None:
        self.splats = splats
        self.source.set_scene(splats)

    @property
    def output_texture(self) -> moderngl.Texture | None:
        """The last frame as an RGBA8 texture (row 0 = the image's top row); None before the first frame."""
        self._fill_output()
        return self._output.texture

    @property
    def output_size(self) -> tuple[int, int] | None:
        """Width and height of the last frame (None before the first), without filling the output texture."""
        return self._output.texture.size if self._output.texture is not None else None

    @property
    def display_pending(self) -> bool:
        """The window shows an older frame than the newest one, still rendering on the GPU: draw it again."""
        return self._shared is not None and self._shared.pending

    def _fill_output(self) -> None:
        if self._shared is not None and self._output_stale and self._output.fbo is not None:
            self._shared.draw(self._output.fbo, (0, 0, *self._output.texture.size), flip=False, linear=False)
            self._output_stale = False

    def render(self, request: FrameRequest, finish: bool = True) -> FrameResult:
        """Render ``request`` into the output texture (``request.width`` x ``request.height``, RGBA8).

        ``finish``: wait until the frame is complete (GL and CUDA), so that ``FrameResult.ms`` is its whole cost.
        Without it the work is only queued: GL commands issued afterwards (``draw_to``) are ordered after it.
        """
        start = time.perf_counter()
        if getattr(self.source, "display", False):
            reports = self._render_display(request)
        else:
            reports = self._render_eyes(request)
        if finish:
            self.ctx.finish()
            sync = getattr(self.source, "synchronize", None)
            if sync is not None:
                sync()
        return FrameResult(reports, (time.perf_counter() - start) * 1e3)

    def _render_eyes(self, request: FrameRequest) -> list[SourceFrame]:
        cams = request.eye_cameras()
        self._shared = None
        begin = getattr(self.source, "begin_frame", None)
        if begin is not None:  # sources that need the whole request first (remote: one stereo request per frame)
            begin(request, cams)
        fbos = [target.ensure(self.ctx, (cam.width, cam.height), "f4") for cam, target in zip(cams, self._eyes)]
        render_eyes = getattr(self.source, "render_eyes", None)
        if render_eyes is not None:  # all eyes in one call
            reports = render_eyes(cams, request.settings, fbos)
        else:
            reports = [self.source.render(cam, request.settings, fbo) for cam, fbo in zip(cams, fbos)]
        self._display_frame = False
        out = self._output.ensure(self.ctx, (request.width, request.height), "f1")
        self._compose_into(out, request, reports)
        return reports

    def _render_display(self, request: FrameRequest) -> list[SourceFrame]:
        geometry = request.eye_geometry()
        size = display_size(request.stereo, geometry.width, geometry.height)
        direct = size == (request.width, request.height)
        target = self._output if direct else self._display
        target.ensure(self.ctx, size, "f1")
        self._display_frame = True
        self._shared = None
        reports = self.source.render_display(request, geometry, target)
        shared = target.attachment if getattr(self.source, "upload_path", None) == "shared" else None
        if direct:
            self._shared, self._output_stale = shared, shared is not None
        else:
            out = self._output.ensure(self.ctx, (request.width, request.height), "f1")
            viewport = (0, 0, request.width, request.height)
            if shared is not None:
                shared.draw(out, viewport, flip=False, linear=True)
            else:
                out.use()
                out.viewport = viewport
                self._draw_texture(target.texture, flip=False)
        return reports

    def _draw_texture(self, texture: moderngl.Texture, flip: bool) -> None:
        self.ctx.disable(moderngl.BLEND | moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        texture.use(0)
        self._blit["u_image"].value = 0
        self._blit["u_flip"].value = 1 if flip else 0
        self._blit_vao.render(moderngl.TRIANGLES, vertices=3)

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
        self._fill_output()
        w, h = self._output.fbo.size
        return np.frombuffer(self._output.fbo.read(components=3), dtype=np.uint8).reshape(h, w, 3).copy()

    def read_eye(self, index: int = 0) -> np.ndarray:
        """Eye buffer ``index`` as ``[h, w, 4]`` float32 (see ``viewer/sources.py`` for its contents)."""
        fbo = self._eyes[index].fbo
        if self._display_frame:
            raise ValueError("read_eye: the last frame went straight to the output (the display path of a CUDA "
                             "frame source): there are no eye buffers")
        if fbo is None:
            raise ValueError(f"read_eye: eye {index} has not been rendered")
        w, h = fbo.size
        return np.frombuffer(fbo.read(components=4, dtype="f4"), dtype=np.float32).reshape(h, w, 4).copy()

    def draw_to(self, fbo: moderngl.Framebuffer, viewport: tuple[int, int, int, int], newest: bool = False) -> None:
        """Draw the last frame into ``viewport`` of ``fbo`` (the window), flipped so row 0 is at the top.

        A frame in shared CUDA memory is drawn from there, without waiting for the newest frame's GPU work unless
        ``newest``: while it still renders the previous one is shown (:attr:`display_pending`)."""
        if self._shared is not None:
            # Bilinear taps cost fill rate (scarce on compute GPUs) and no longer smooth at 2x minification or
            # more: the texel under each pixel then.
            frame_w, frame_h = self._shared.size or (1, 1)
            minified = 2 * viewport[2] <= frame_w and 2 * viewport[3] <= frame_h
            self._shared.draw(fbo, viewport, flip=True, linear=not minified, newest=newest)
            return
        if self._output.texture is None:
            return
        fbo.use()
        fbo.viewport = viewport
        self._draw_texture(self._output.texture, flip=True)

    def release(self) -> None:
        """Free every GL resource (call with the context current)."""
        self._shared = None
        self.source.release()
        for target in (*self._eyes, self._display, self._output):
            target.release()
        for res in (self._compose_vao, self._blit_vao, self._compose, self._blit):
            res.release()
