"""The benchmark camera paths of ``BENCHMARK.md`` (``orbit`` and ``head``) as generators of stereo rigs.

Both take the scene's centre and the extent of one scene copy (``grid`` copies per side for tiled scenes), and the
world direction that is "up" in the scene. Scenes in the 3DGS/COLMAP convention are y-down, so the default up is
``(0, -1, 0)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Camera, StereoRig, intrinsics_from_fov, look_at
from .splats import Splats

DEFAULT_UP = (0.0, -1.0, 0.0)


@dataclass(frozen=True)
class PathSpec:
    """What every benchmark path shares.

    Attributes:
        center: scene centre ``[3]``.
        extent: largest extent of one scene copy (scene units; about a metre for the benchmark scenes).
        grid: copies per side for tiled scenes (1 for a single copy).
        width, height: per-eye image size.
        fov_x_deg: horizontal field of view.
        up: world up direction.
        ipd_scale: inter-pupillary distance as a fraction of ``extent`` (0.064: about 64 mm on a 1 m scene).
        principal_offset: principal point offset from the image centre in pixels, ``(dx, dy)`` for the left eye;
            the right eye gets ``(-dx, dy)`` (mirror-symmetric off-centre frusta, as OpenXR gives).
    """

    center: Sequence[float]
    extent: float
    grid: int = 1
    width: int = 2064
    height: int = 2208
    fov_x_deg: float = 90.0
    up: Sequence[float] = DEFAULT_UP
    ipd_scale: float = 0.064
    principal_offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.extent) and self.extent > 0):
            raise ValueError(f"extent: expected a positive finite value, got {self.extent}")
        if self.grid < 1:
            raise ValueError(f"grid: expected >= 1, got {self.grid}")

    @property
    def radius(self) -> float:
        """Orbit radius ``(1.2 + 0.6 G) * extent``."""
        return (1.2 + 0.6 * self.grid) * self.extent

    def rig(self, world_to_camera: Tensor) -> StereoRig:
        dx, dy = self.principal_offset
        k = intrinsics_from_fov(self.width, self.height, self.fov_x_deg)
        head = Camera(world_to_camera, k, self.width, self.height)
        if dx == 0.0 and dy == 0.0:
            return StereoRig(head, self.ipd_scale * self.extent)
        k_left = intrinsics_from_fov(self.width, self.height, self.fov_x_deg, self.width / 2 + dx, self.height / 2 + dy)
        k_right = intrinsics_from_fov(self.width, self.height, self.fov_x_deg, self.width / 2 - dx,
                                      self.height / 2 + dy)
        return StereoRig(head, self.ipd_scale * self.extent, k_left, k_right)

    def basis(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(center, up, a, b)``: unit ``up`` and two unit vectors ``a, b`` spanning the ground plane."""
        c = torch.as_tensor(self.center, dtype=torch.float64).reshape(3)
        up = torch.as_tensor(self.up, dtype=torch.float64).reshape(3)
        up = up / up.norm()
        helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        if abs(float(helper @ up)) > 0.9:
            helper = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        a = helper - (helper @ up) * up
        a = a / a.norm()
        b = torch.linalg.cross(up, a)
        return c, up, a, b


def orbit_path(spec: PathSpec, frames: int = 48, step_deg: float = 7.5) -> Iterator[StereoRig]:
    """``orbit``: ``frames`` poses on a circle of radius ``spec.radius`` around the centre, raised by 0.3 x radius,
    looking at the centre; each step turns ``step_deg`` degrees (a worst case for reuse across frames)."""
    c, up, a, b = spec.basis()
    r = spec.radius
    for i in range(frames):
        theta = math.radians(step_deg * i)
        eye = c + r * (math.cos(theta) * a + math.sin(theta) * b) + 0.3 * r * up
        yield spec.rig(look_at(eye, c, up))


def head_path(spec: PathSpec, frames: int = 240, rate_hz: float = 120.0, speed_extents_per_s: float = 1.0,
              yaw_deg: float = 35.0, yaw_hz: float = 0.25, pitch_deg: float = 10.0,
              pitch_hz: float = 0.17) -> Iterator[StereoRig]:
    """``head``: a person walking into the scene while looking around.

    Starts outside the scene at distance ``radius + 1.5 * extent`` from the centre, raised by 0.3 x radius, facing
    the centre; walks along that initial direction at ``speed_extents_per_s`` (1 m/s scene-scaled) while the head
    yaws by ``yaw_deg * sin(2 pi yaw_hz t)`` about ``up`` and pitches by ``pitch_deg * sin(2 pi pitch_hz t)``.
    At 120 Hz that is about 0.5 degrees and 8 mm (scene-scaled) per frame.
    """
    c, up, a, _ = spec.basis()
    dist = spec.radius + 1.5 * spec.extent
    start = c + dist * a + 0.3 * spec.radius * up
    base = look_at(start, c, up)
    forward = (c - start) / (c - start).norm()
    for i in range(frames):
        t = i / rate_hz
        eye = start + forward * speed_extents_per_s * spec.extent * t
        yaw = math.radians(yaw_deg) * math.sin(2 * math.pi * yaw_hz * t)
        pitch = math.radians(pitch_deg) * math.sin(2 * math.pi * pitch_hz * t)
        # Head rotation in camera axes: yaw about the camera's up (-y), then pitch about the camera's x.
        rot_cam = _axis_angle(torch.tensor([1.0, 0.0, 0.0]), pitch) @ _axis_angle(torch.tensor([0.0, -1.0, 0.0]), yaw)
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :3] = rot_cam.T @ base[:3, :3]
        w2c[:3, 3] = -w2c[:3, :3] @ eye
        yield spec.rig(w2c)


def _axis_angle(axis: Tensor, angle: float) -> Tensor:
    """Rotation matrix ``[3, 3]`` (float64) turning by ``angle`` radians about unit ``axis``."""
    axis = axis.to(torch.float64) / axis.norm()
    x, y, z = axis.tolist()
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def scene_frame(splats: Splats, quantile: float = 0.005) -> tuple[list[float], float]:
    """Centre and extent of a scene from the central quantiles of its means (ignores stray floaters)."""
    if len(splats) == 0:
        return [0.0, 0.0, 0.0], 1.0
    means = splats.means.detach().float()
    if len(splats) > 200_000:
        means = means[torch.randperm(len(splats), generator=torch.Generator().manual_seed(0))[:200_000]]
    lo = torch.quantile(means, quantile, dim=0)
    hi = torch.quantile(means, 1 - quantile, dim=0)
    extent = float((hi - lo).max())
    return ((lo + hi) / 2).tolist(), extent if extent > 0 else 1.0
