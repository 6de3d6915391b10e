"""The frame cache (GS-Cache for explicit 3DGS): reuse work between the two eyes and across frames.

What is done once and reused:
- per scene: 3D covariances and a chunk index with bounding spheres (:mod:`renderer.chunks`);
- per stereo pair: one visible set for a guard frustum around the head that contains both eyes, one colour
  evaluation from the centre eye, one depth order from the centre eye (parallel-axis eyes share camera-space z, so
  that order is exactly each eye's own at a refresh); each eye keeps its own 2D footprint, tiles and blending
  (sharing the 2D covariance between eyes causes visible artifacts). The visible set is kept front to back, so
  the sort stage only groups it by tile (no depth sort per frame), and its colours are kept as a DC term (no SH
  per eye);
- across frames: the visible set is reused while the head stays inside the guard frustum (exact: chunks outside
  it cannot reach any pixel of a view inside it); colours and order are reused while the estimated error of reuse
  stays under a budget and the cache is younger than its depth D, which adapts to the measured motion
  ("dynamic cache depth").

With ``CacheConfig(enabled=False)`` every frame is rendered exactly as :func:`renderer.render` would.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._torch_impl import _eval_sh
from .backends import StagedBackend, default_registry
from .cameras import Camera, CameraBatch, StereoRig, stack_cameras
from .chunks import ChunkIndex, GuardFrustum, build_chunk_index
from .render import _background
from .splats import SH_C0, Splats
from .types import RENDER_MODES, RenderMode, RenderOptions, RenderOutput, RenderStats


@dataclass(frozen=True)
class CacheConfig:
    """How much the frame cache may reuse.

    Attributes:
        enabled: False renders every frame exactly as the uncached path.
        chunk_size: Gaussians per chunk of the spatial index.
        guard_angle_deg: the guard frustum is this much wider than the view on every side; the visible set is
            kept while the head has turned less than this.
        guard_margin: how far (as a fraction of the scene's extent) the head may move before the visible set is
            recomputed.
        error_budget: largest estimated error of reused colours and order, in radians of view-direction change
            (translation over the distance of the nearest visible Gaussians, plus a share of the rotation).
        rotation_weight: the share of the head's rotation (radians) counted in the error estimate.
        max_depth: the largest cache depth D (frames a shading result may serve).
        dynamic_depth: adapt D to the measured motion; otherwise D = ``max_depth``.
    """

    enabled: bool = True
    chunk_size: int = 4096
    guard_angle_deg: float = 8.0
    guard_margin: float = 0.05
    error_budget: float = 0.01
    rotation_weight: float = 0.25
    max_depth: int = 8
    dynamic_depth: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.max_depth < 1:
            raise ValueError(f"chunk_size and max_depth must be >= 1, got {self.chunk_size}, {self.max_depth}")
        if not 0 <= self.guard_angle_deg < 80:
            raise ValueError(f"guard_angle_deg: expected 0..80, got {self.guard_angle_deg}")
        if self.guard_margin < 0 or self.error_budget < 0:
            raise ValueError("guard_margin and error_budget must be >= 0")


@dataclass(frozen=True)
class CacheFrameStats:
    """What the cache did for one frame, and its running totals.

    Attributes:
        visible_hit: the visible set was reused.
        shading_hit: colours and order were reused.
        visible_count: Gaussians in the visible set.
        depth: the cache depth D in force.
        age: frames the shading result has served, this one included.
        estimated_error: estimated error of the reused shading (radians; 0 on a refresh).
        frames, visible_refreshes, shading_refreshes: totals since the cache was made.
        cull_ms, shade_ms, eyes_ms: wall time of culling, shading (colours + order) and the per-eye stages.
    """

    visible_hit: bool
    shading_hit: bool
    visible_count: int
    depth: int
    age: int
    estimated_error: float
    frames: int
    visible_refreshes: int
    shading_refreshes: int
    cull_ms: float
    shade_ms: float
    eyes_ms: float


@dataclass(frozen=True)
class _VisibleSet:
    guard: GuardFrustum
    head_position: Tensor  # [3]
    head_rotation: Tensor  # [3, 3]
    indices: Tensor  # [V] scene indices, ascending


@dataclass(frozen=True)
class _Shading:
    """The visible set front to back from the centre eye, ready for the per-eye stages.

    ``items`` lists the V visible Gaussians in that order; the per-eye preprocess reads them in place (no gather)
    into that order, so the sort stage only groups them by tile (``Projected.presorted``): no depth sort per frame.
    ``source`` is the scene, or, with colours of SH degree > 0, the scene whose SH is the colour seen from the
    centre eye as a DC term (written at the visible Gaussians), so each eye reads 3 coefficients, not up to 48.
    """

    head_position: Tensor  # [3]
    head_rotation: Tensor  # [3, 3]
    items: Tensor  # [V] int32 scene indices, front to back
    source: Splats  # what the per-eye preprocess reads (SH degree 0 evaluates the right colours)
    with_colors: bool
    near_distance: Tensor  # () distance of the nearest visible Gaussians (5th percentile; read on the next frame)
    sh_degree: int


class FrameCache:
    """Renders a sequence of frames of one scene, reusing work across eyes and frames (see the module doc)."""

    def __init__(self, splats: Splats, backend: str = "auto", config: CacheConfig | None = None) -> None:
        self.splats = splats
        self.config = config or CacheConfig()
        chosen = default_registry().resolve(backend, splats.device)
        if not isinstance(chosen, StagedBackend):
            raise ValueError(f"backend: the frame cache needs a backend with stages, {chosen.name!r} has none")
        self.backend = chosen
        with torch.no_grad():
            # [N, 3, 3] once per scene, for backends that read them (native builds them in registers instead)
            self.covariances = splats.covariances().detach() if chosen.uses_covariances else None
            self.index: ChunkIndex = build_chunk_index(splats, self.config.chunk_size)
            lo, hi = splats.bounds()
            self.extent = max(float((hi - lo).max()), 1e-6)
        self._visible: _VisibleSet | None = None
        self._shading: _Shading | None = None
        self._baked_dc: Tensor | None = None  # [N, 1, 3] colours from the centre eye as DC terms (SH degree > 0)
        self._near: float | None = None  # float(self._shading.near_distance), once read
        self._age = 0
        self._motion_per_frame = 0.0
        self._last_head: tuple[Tensor, Tensor] | None = None
        self._totals = {"frames": 0, "visible": 0, "shading": 0}
        self.last_stats: CacheFrameStats | None = None

    def invalidate(self) -> None:
        """Forget every cached result (the next frame recomputes everything)."""
        self._visible, self._shading, self._last_head = None, None, None

    # ----- one frame ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render(self, view: Camera | StereoRig | Sequence[Camera], background: Tensor | Sequence[float] | None = None,
               render_mode: RenderMode = "rgb", sh_degree: int | None = None) -> RenderOutput:
        """Render one frame of ``view`` (a stereo rig, a camera, or cameras sharing one head pose)."""
        if render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode: expected one of {', '.join(RENDER_MODES)}, got {render_mode!r}")
        degree = self.splats.sh_degree if sh_degree is None else sh_degree
        if not 0 <= degree <= self.splats.sh_degree:
            raise ValueError(f"sh_degree: expected 0..{self.splats.sh_degree} (the scene's degree), got {sh_degree}")
        head, ipd = head_of(view)
        host = stack_cameras(view, "cpu", torch.float64)  # the guard tests read these: no copy back per frame
        cams = CameraBatch(host.viewmats.to(self.splats.device, self.splats.dtype),
                           host.Ks.to(self.splats.device, self.splats.dtype), host.width, host.height, host.near,
                           host.far)
        bg = _background(background, len(cams), self.splats.device, self.splats.dtype)
        options = RenderOptions(sh_degree=degree, background=bg, render_mode=render_mode)
        if not self.config.enabled:
            return self.backend.render(self.splats, cams, options, bg)

        clock = time.perf_counter
        start = clock()
        visible_hit = self._ensure_visible(head, ipd, view_tangents(host))
        t_cull = clock()
        shading_hit, estimate = self._ensure_shading(head, degree, options.wants_color, visible_hit)
        t_shade = clock()
        out = self._render_eyes(cams, options, bg)
        self._sync()
        t_end = clock()
        self._totals["frames"] += 1
        self.last_stats = CacheFrameStats(
            visible_hit=visible_hit, shading_hit=shading_hit, visible_count=int(self._visible.indices.numel()),
            depth=self._depth(), age=self._age, estimated_error=estimate, frames=self._totals["frames"],
            visible_refreshes=self._totals["visible"], shading_refreshes=self._totals["shading"],
            cull_ms=(t_cull - start) * 1e3, shade_ms=(t_shade - t_cull) * 1e3, eyes_ms=(t_end - t_shade) * 1e3)
        stats = dataclasses.replace(out.stats, cache=self.last_stats)
        return dataclasses.replace(out, stats=stats)

    def _sync(self) -> None:
        if self.splats.device.type == "cuda":
            torch.cuda.synchronize(self.splats.device)

    # ----- visible set ----------------------------------------------------------------------------------------------
    def _ensure_visible(self, head: Camera, ipd: float, tangents: dict[str, float]) -> bool:
        """Reuse the visible set if every eye lies inside its guard frustum; else recompute it. Returns the hit.
        ``tangents``: :func:`view_tangents` of the eyes."""
        pos, rot = _pose(head, self.splats)
        cached = self._visible
        if cached is not None and self._inside_guard(cached, pos, rot, tangents):
            return True
        margin_world = self.config.guard_margin * self.extent
        guard = GuardFrustum(world_to_camera=head.world_to_camera.to(self.splats.device, self.splats.dtype),
                             **tangents, angle=math.radians(self.config.guard_angle_deg),
                             margin=margin_world + ipd / 2)
        chunk_mask = guard.sphere_mask(self.index.centers, self.index.radii)
        indices = self.index.members_ascending(chunk_mask)
        self._visible = _VisibleSet(guard, pos, rot, indices)
        self._shading = None
        self._totals["visible"] += 1
        return False

    def _inside_guard(self, cached: _VisibleSet, pos: Tensor, rot: Tensor, tangents: dict[str, float]) -> bool:
        moved = float((pos - cached.head_position).norm())
        turned = rotation_angle(rot, cached.head_rotation)
        if moved > self.config.guard_margin * self.extent or turned > cached.guard.angle:
            return False
        g = cached.guard
        return all(tangents[k] <= getattr(g, k) + 1e-9 for k in tangents)

    # ----- colours and order ----------------------------------------------------------------------------------------
    def _ensure_shading(self, head: Camera, degree: int, with_colors: bool, visible_hit: bool) -> tuple[bool, float]:
        """Reuse colours and order while young and within the error budget; else evaluate them from the head."""
        pos, rot = _pose(head, self.splats)
        self._track_motion(pos, rot)
        cached = self._shading
        estimate = 0.0
        if (cached is not None and visible_hit and cached.sh_degree == degree
                and (cached.with_colors or not with_colors)):
            estimate = self._reuse_error(cached, pos, rot, degree)
            if self._age < self._depth() and estimate <= self.config.error_budget:
                self._age += 1
                return True, estimate
        self._shading = self._shade(head, pos, rot, degree, with_colors)
        self._near = None
        self._age = 1
        self._totals["shading"] += 1
        return False, 0.0

    def _shade(self, head: Camera, pos: Tensor, rot: Tensor, degree: int, with_colors: bool) -> _Shading:
        """Order the visible set front to back from ``head`` (the camera-space z the eyes share) and, for SH
        degree > 0, bake the colours seen from the head into a DC term."""
        visible = self._visible
        head_batch = stack_cameras(head, self.splats.device, self.splats.dtype)
        # The backend's own projection gives exactly the z each eye computes (parallel axes share the z row).
        depths = self.backend.preprocess(self.splats, head_batch, 0, False, self.covariances,
                                         visible.indices).depths[0]
        order = torch.sort(depths, stable=True).indices  # stable: equal depths keep the index order, as uncached
        items = visible.indices[order]
        source = self.splats  # SH degree 0 reads only the DC term of each Gaussian
        if with_colors and degree > 0:
            # Colours from the centre eye for every visible Gaussian (also those outside the centre view that an
            # eye sees), stored as the DC term that gives them back: 0.5 + C0 dc = colour (>= 0).
            dirs = torch.nn.functional.normalize(self.splats.means[items] - pos.to(self.splats.means), dim=-1)
            colors = _eval_sh(degree, dirs, self.splats.sh[items])
            if self._baked_dc is None:
                self._baked_dc = self.splats.sh[:, :1].clone()  # [N, 1, 3]
            self._baked_dc[items] = ((colors - 0.5) / SH_C0)[:, None, :]
            s = self.splats
            source = Splats(s.means, s.quats, s.log_scales, s.opacity_logits, self._baked_dc)
        # The 5th percentile of the depths in front, as a tensor: read on the next frame, so no sync here.
        step = max(1, depths.numel() // 65536)
        sample = depths[::step]
        front = torch.where(sample > head.near, sample, torch.full_like(sample, math.nan))
        near = torch.nan_to_num(torch.nanquantile(front.float(), 0.05), nan=self.extent).clamp_min(1e-6)
        return _Shading(pos, rot, items.to(torch.int32), source, with_colors, near, degree)

    def _reuse_error(self, cached: _Shading, pos: Tensor, rot: Tensor, degree: int) -> float:
        """Estimated error of reusing ``cached`` at this pose (radians of view-direction change)."""
        translation = float((pos - cached.head_position).norm()) / self._near_distance()
        rotation = rotation_angle(rot, cached.head_rotation)
        # Colours depend on the view direction only through SH of degree >= 1; order on translation and rotation.
        return translation * (1.0 if degree > 0 else 0.5) + self.config.rotation_weight * rotation

    def _track_motion(self, pos: Tensor, rot: Tensor) -> None:
        """Exponential average of the per-frame error growth, which sets the dynamic cache depth."""
        if self._last_head is not None and self._shading is not None:
            last_pos, last_rot = self._last_head
            step = float((pos - last_pos).norm()) / self._near_distance()
            step += self.config.rotation_weight * rotation_angle(rot, last_rot)
            self._motion_per_frame = 0.7 * self._motion_per_frame + 0.3 * step
        self._last_head = (pos, rot)

    def _near_distance(self) -> float:
        """The current shading's near distance, read from the GPU once (on the frame after its refresh, when it
        is ready: no stall)."""
        if self._near is None:
            self._near = float(self._shading.near_distance)
        return self._near

    def _depth(self) -> int:
        """The cache depth D: how many frames one shading result may serve."""
        if not self.config.dynamic_depth:
            return self.config.max_depth
        if self._motion_per_frame <= 0:
            return self.config.max_depth
        return int(min(self.config.max_depth, max(1, math.floor(self.config.error_budget / self._motion_per_frame))))

    # ----- per eye --------------------------------------------------------------------------------------------------
    def _render_eyes(self, cams: CameraBatch, options: RenderOptions, bg: Tensor) -> RenderOutput:
        """Per eye: footprints of the ordered visible set (colours from its DC term), tiles in that order, blend."""
        shading = self._shading  # its colours are in the DC term: SH degree 0 gives them back
        proj = self.backend.preprocess(shading.source, cams, 0, options.wants_color, self.covariances, shading.items)
        proj = dataclasses.replace(proj, presorted=True)
        bins, visible = self.backend.sort_counted(proj, cams)
        image, alpha, depth = self.backend.blend(proj, bins, cams, options, bg)
        stats = RenderStats(visible=visible.tolist(), tile_keys=bins.num_pairs)
        return RenderOutput(image=image, alpha=alpha, depth=depth, stats=stats, projected=proj)


def head_of(view: Camera | StereoRig | Sequence[Camera]) -> tuple[Camera, float]:
    """The head camera and the inter-pupillary distance (0 for cameras)."""
    if isinstance(view, StereoRig):
        return view.head, view.ipd
    if isinstance(view, Camera):
        return view, 0.0
    cams = list(view)
    if not cams:
        raise ValueError("view: expected at least one camera")
    positions = torch.stack([c.position for c in cams])
    centre = positions.mean(0)
    spread = float((positions - centre).norm(dim=1).max())
    return cams[0].with_pose(_pose_at(cams[0].world_to_camera, centre)), 2 * spread


def _pose_at(w2c: Tensor, position: Tensor) -> Tensor:
    moved = w2c.clone()
    moved[:3, 3] = -w2c[:3, :3] @ position.to(w2c)
    return moved


def _pose(cam: Camera, splats: Splats) -> tuple[Tensor, Tensor]:
    w2c = cam.world_to_camera.to(torch.float64)
    return -(w2c[:3, :3].T @ w2c[:3, 3]), w2c[:3, :3]


def rotation_angle(a: Tensor, b: Tensor) -> float:
    """Angle in radians of the rotation between rotation matrices ``a`` and ``b`` ``[3, 3]``."""
    cos = (float(torch.trace(a @ b.T)) - 1.0) / 2.0
    return math.acos(max(-1.0, min(1.0, cos)))


def view_tangents(cams: CameraBatch) -> dict[str, float]:
    """The union of the cameras' half-extents as tangents (left, right, up, down), plus two pixels of margin for
    the 2D low-pass, whose footprint can reach slightly beyond the projected 3D ellipsoid."""
    ks = cams.Ks.detach().to("cpu", torch.float64)  # one copy, then host arithmetic
    fx, fy, cx, cy = ks[:, 0, 0], ks[:, 1, 1], ks[:, 0, 2], ks[:, 1, 2]
    pad = 2.0
    return {
        "tan_left": float(((cx + pad) / fx).max()),
        "tan_right": float(((cams.width - cx + pad) / fx).max()),
        "tan_up": float(((cy + pad) / fy).max()),
        "tan_down": float(((cams.height - cy + pad) / fy).max()),
    }
