"""A Gaussian-splat rasterizer in OpenGL shaders (moderngl), for machines without CUDA.

The scene lives in three float textures (means and opacities, 3D covariances, SH coefficients); each frame draws one
instanced quad per Gaussian in front of the camera, back to front. The order comes from a depth sort on the CPU
(numpy) or on CUDA (torch) when available, synchronously or on a worker thread (``async_sort=True``): then a frame is
drawn with the newest finished order while the next sort runs, and :attr:`GLSplatRenderer.sort_pending` says that a
redraw will follow. See ``viewer/_glsl.py`` for the per-splat maths, which follows ``renderer/_torch_impl.py``.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import moderngl
import numpy as np
import torch

from renderer import Camera, Splats

from ._glsl import SPLAT_FRAGMENT, SPLAT_VERTEX

MODES = {"rgb": 0, "depth": 1, "alpha": 2}
ASYNC_SORT_MIN = 200_000  # smaller scenes sort in about a millisecond: always synchronously
_MAX_TEXTURE_WIDTH = 8192


@dataclass(frozen=True)
class DepthOrder:
    """Back-to-front order of the Gaussians in front of a camera.

    Attributes:
        indices: Gaussian ids, farthest first ``[V]`` (uint32).
        depth_range: 1% and 99% quantiles of the visible depths (for the depth display ramp).
        view: the world-to-camera matrix the order was computed for ``[4, 4]``.
    """

    indices: np.ndarray  # [V] uint32
    depth_range: tuple[float, float]
    view: np.ndarray  # [4, 4]


def depth_order(means: np.ndarray | torch.Tensor, view: np.ndarray, near: float, far: float) -> DepthOrder:
    """Sort the Gaussians with ``near < z < far`` back to front; ``means`` is ``[N, 3]`` (numpy, or a CUDA tensor)."""
    if isinstance(means, torch.Tensor):
        rot = torch.as_tensor(view[2, :3], dtype=means.dtype, device=means.device)
        z = means @ rot + float(view[2, 3])
        visible = torch.nonzero((z > near) & (z < far))[:, 0]
        zv = z[visible]
        order = torch.argsort(zv, descending=True)
        indices = visible[order].to(torch.int32).cpu().numpy().view(np.uint32)
        z_sorted = zv[order].cpu().numpy()
    else:
        z = means @ view[2, :3].astype(np.float32) + np.float32(view[2, 3])
        visible = np.flatnonzero((z > near) & (z < far))
        zv = z[visible]
        order = np.argsort(-zv, kind="stable")
        indices = visible[order].astype(np.uint32)
        z_sorted = zv[order]
    if len(z_sorted) == 0:
        return DepthOrder(indices, (0.0, 1.0), view)
    lo = float(z_sorted[min(len(z_sorted) - 1, int(0.99 * len(z_sorted)))])
    hi = float(z_sorted[int(0.01 * len(z_sorted))])
    return DepthOrder(indices, (lo, hi), view)


def _pack_texture(ctx: moderngl.Context, rows: np.ndarray, max_side: int) -> moderngl.Texture:
    """A float RGBA texture holding ``rows`` ``[N, 4 * T]`` as ``T`` consecutive texels per row (row-major)."""
    flat = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, 4)
    texels = max(1, flat.shape[0])
    width = min(_MAX_TEXTURE_WIDTH, max_side, texels)
    height = math.ceil(texels / width)
    if height > max_side:
        raise ValueError(f"scene too large for the GL splat renderer: {texels:,} texels need a {width}x{height} "
                         f"texture, the GL limit is {max_side}x{max_side}")
    padded = np.zeros((width * height, 4), dtype=np.float32)
    padded[: flat.shape[0]] = flat
    tex = ctx.texture((width, height), 4, padded.tobytes(), dtype="f4")
    tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
    return tex


class GLSplatRenderer:
    """Draw :class:`renderer.Splats` into a framebuffer with OpenGL.

    Args:
        ctx: a moderngl context (a window's, or a standalone EGL/GLX one).
        async_sort: sort on a worker thread and draw with the newest finished order meanwhile.
    """

    def __init__(self, ctx: moderngl.Context, async_sort: bool = False) -> None:
        self.ctx = ctx
        self.async_sort = async_sort
        self.program = ctx.program(vertex_shader=SPLAT_VERTEX, fragment_shader=SPLAT_FRAGMENT)
        corners = np.array([-1, -1, 1, -1, -1, 1, 1, 1], dtype=np.float32)
        self._corners = ctx.buffer(corners.tobytes())
        self._textures: list[moderngl.Texture] = []
        self._index_buffer: moderngl.Buffer | None = None
        self._vao: moderngl.VertexArray | None = None
        self._means: np.ndarray | torch.Tensor | None = None
        self._num = 0
        self._sh_stride = 1
        self.scene_sh_degree = 0
        self._order: DepthOrder | None = None
        self._drawn_count = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gl-splat-sort") if async_sort else None
        self._pending: Future | None = None
        self._pending_view: np.ndarray | None = None
        self._uploaded_order: DepthOrder | None = None

    # ----- scene ------------------------------------------------------------------------------
    def set_scene(self, splats: Splats) -> None:
        """Upload a scene (any device; copied to the CPU once) and drop the previous one."""
        self._release_scene()
        s = splats.detach().to("cpu", torch.float32)
        n = len(s)
        max_side = int(self.ctx.info.get("GL_MAX_TEXTURE_SIZE", 8192))
        means = s.means.numpy()
        mean_op = np.concatenate([means, s.opacities().numpy()[:, None]], axis=1)
        cov = s.covariances().reshape(n, 9).numpy()
        cov_rows = np.zeros((n, 8), dtype=np.float32)
        cov_rows[:, :6] = cov[:, [0, 1, 2, 4, 5, 8]]
        k = s.sh.shape[1]
        self._sh_stride = math.ceil(3 * k / 4)
        sh_rows = np.zeros((n, 4 * self._sh_stride), dtype=np.float32)
        sh_rows[:, : 3 * k] = s.sh.reshape(n, 3 * k).numpy()
        self._textures = [_pack_texture(self.ctx, rows, max_side) for rows in (mean_op, cov_rows, sh_rows)]
        self._means = torch.from_numpy(means).cuda() if torch.cuda.is_available() else np.ascontiguousarray(means)
        self._num = n
        self.scene_sh_degree = s.sh_degree
        self._index_buffer = self.ctx.buffer(reserve=max(4, 4 * n))
        self._vao = self.ctx.vertex_array(self.program, [(self._corners, "2f", "a_corner"),
                                                         (self._index_buffer, "1u/i", "a_index")])
        self._order = None
        self._uploaded_order = None

    @property
    def num_gaussians(self) -> int:
        return self._num

    @property
    def sort_pending(self) -> bool:
        """A newer depth order is being computed (the next draw may differ)."""
        return self._pending is not None

    # ----- sorting ----------------------------------------------------------------------------
    def _update_order(self, camera: Camera) -> DepthOrder:
        view = camera.world_to_camera.detach().cpu().numpy().astype(np.float64)
        if self._executor is None or self._order is None or self._num < ASYNC_SORT_MIN:
            if self._order is None or not np.array_equal(self._order.view, view):
                self._order = depth_order(self._means, view, camera.near, camera.far)
            return self._order
        if self._pending is not None and self._pending.done():
            self._order = self._pending.result()
            self._pending = None
        if self._pending is None and not np.array_equal(self._order.view, view):
            self._pending = self._executor.submit(depth_order, self._means, view, camera.near, camera.far)
        return self._order

    # ----- drawing ----------------------------------------------------------------------------
    def draw(self, camera: Camera, fbo: moderngl.Framebuffer, mode: str = "rgb", sh_degree: int | None = None,
             background: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> DepthOrder | None:
        """Clear ``fbo`` to the background and draw the scene as seen by ``camera`` (its size must match ``fbo``).

        ``fbo`` should be a float (``f4`` or ``f2``) RGBA target: colour is accumulated there. It then holds
        (colour over the background, alpha) in ``"rgb"`` mode and (depth * alpha, alpha) in ``"depth"`` mode.

        Returns:
            the depth order used (None for an empty scene).
        """
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if fbo.size != (camera.width, camera.height):
            raise ValueError(f"fbo: size {fbo.size} differs from the camera's {camera.width}x{camera.height}")
        degree = self.scene_sh_degree if sh_degree is None else min(max(int(sh_degree), 0), self.scene_sh_degree)
        fbo.use()
        fbo.viewport = (0, 0, camera.width, camera.height)
        bg = background if mode == "rgb" else (0.0, 0.0, 0.0)
        fbo.clear(bg[0], bg[1], bg[2], 0.0)
        if self._vao is None or self._num == 0:
            return None
        order = self._update_order(camera)
        if order is not self._uploaded_order:
            if len(order.indices):
                self._index_buffer.write(order.indices.tobytes())
            self._uploaded_order = order
        self._set_uniforms(camera, degree, mode)
        for unit, tex in enumerate(self._textures):
            tex.use(unit)
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        self.ctx.enable(moderngl.BLEND)
        self.ctx.blend_func = moderngl.ONE, moderngl.ONE_MINUS_SRC_ALPHA
        self.ctx.blend_equation = moderngl.FUNC_ADD
        if len(order.indices):
            self._vao.render(moderngl.TRIANGLE_STRIP, vertices=4, instances=len(order.indices))
        self.ctx.disable(moderngl.BLEND)
        self._drawn_count = len(order.indices)
        return order

    @property
    def drawn_count(self) -> int:
        """Gaussians drawn (in front of the camera) in the last frame."""
        return self._drawn_count

    def _set_uniforms(self, camera: Camera, sh_degree: int, mode: str) -> None:
        prog = self.program
        w2c = camera.world_to_camera.detach().cpu().numpy().astype(np.float32)
        prog["u_view"].write(np.ascontiguousarray(w2c.T).tobytes())  # column-major
        prog["u_focal"].value = (camera.fx, camera.fy)
        prog["u_principal"].value = (camera.cx, camera.cy)
        prog["u_size"].value = (float(camera.width), float(camera.height))
        prog["u_campos"].value = tuple(float(v) for v in camera.position)
        prog["u_clip"].value = (camera.near, min(camera.far, 3.0e38))
        prog["u_mode"].value = MODES[mode]
        for name, unit in (("u_mean", 0), ("u_cov", 1), ("u_sh", 2)):
            prog[name].value = unit
        if "u_sh_stride" in prog:
            prog["u_sh_stride"].value = self._sh_stride
            prog["u_sh_degree"].value = sh_degree

    # ----- lifetime ---------------------------------------------------------------------------
    def _release_scene(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        for res in (*self._textures, self._vao, self._index_buffer):
            if res is not None:
                res.release()
        self._textures, self._vao, self._index_buffer = [], None, None
        self._num = 0

    def release(self) -> None:
        """Free every GL resource and stop the sort worker."""
        self._release_scene()
        self._corners.release()
        self.program.release()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
