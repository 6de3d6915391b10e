"""Orbit and fly cameras over one state: a target point, a distance and a yaw/pitch heading about the scene's up.

Orbit mode turns the eye around the target (left drag), pans (right or middle drag) and dollies (wheel); fly mode
turns the heading about the eye (mouse look) and moves eye and target together (W/A/S/D forward/left/back/right,
Q/E down/up). Both produce an OpenCV world-to-camera pose through ``renderer.look_at``, so the viewer shows exactly
what ``gscache render`` would with the same pose. The default up is ``(0, -1, 0)`` (3DGS scenes are y-down).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from renderer import Camera, look_at

_MAX_PITCH = math.radians(89.0)


def ground_basis(up: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit ``up`` and two unit vectors ``a, b`` spanning the ground plane (same as ``PathSpec.basis``)."""
    u = torch.as_tensor(up, dtype=torch.float64).reshape(3)
    u = u / u.norm()
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(helper @ u)) > 0.9:
        helper = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    a = helper - (helper @ u) * u
    a = a / a.norm()
    return u, a, torch.linalg.cross(u, a)


@dataclass
class CameraController:
    """The interactive camera.

    Attributes:
        target: the point looked at (orbit centre) ``[3]``.
        distance: eye-to-target distance.
        yaw, pitch: heading of the viewing direction in radians (pitch > 0 looks down towards the ground).
        fov_x_deg: horizontal field of view.
        up: world up direction.
        mode: ``"orbit"`` or ``"fly"``.
        speed: fly speed in scene units per second.
    """

    target: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    distance: float = 3.0
    yaw: float = 0.0
    pitch: float = 0.3
    fov_x_deg: float = 60.0
    up: tuple[float, float, float] = (0.0, -1.0, 0.0)
    mode: str = "orbit"
    speed: float = 1.0

    @staticmethod
    def framing(center: Sequence[float], extent: float, fov_x_deg: float = 60.0,
                up: tuple[float, float, float] = (0.0, -1.0, 0.0)) -> CameraController:
        """The default view of a scene: like ``gscache render`` (1.4 x extent away, raised by 0.3 x that)."""
        pitch = math.atan(0.3)
        distance = 1.4 * extent * math.sqrt(1 + 0.3**2)
        return CameraController(list(map(float, center)), distance, math.pi, pitch, fov_x_deg, up, "orbit",
                                speed=max(extent, 1e-6) * 0.5)

    @staticmethod
    def through(camera: Camera, up: Sequence[float], target: torch.Tensor, extent: float,
                mode: str = "orbit") -> CameraController:
        """The view of ``camera`` (e.g. a capture camera): its pose (roll about the view axis aside, which yaw and
        pitch about ``up`` cannot hold) and horizontal field of view, orbiting around the point of its view axis
        nearest to ``target``."""
        w2c = camera.world_to_camera.to(torch.float64)
        eye = -(w2c[:3, :3].T @ w2c[:3, 3])
        forward = w2c[2, :3] / w2c[2, :3].norm()
        distance = max(float((target.to(torch.float64) - eye) @ forward), 0.05 * extent, 1e-4)
        fov = math.degrees(2 * math.atan(camera.width / (2 * camera.fx)))
        ctl = CameraController(fov_x_deg=min(max(fov, 20.0), 120.0), up=tuple(float(v) for v in up), mode=mode,
                               speed=max(extent, 1e-6) * 0.5, distance=distance)
        ctl.set_pose(w2c)
        return ctl

    # ----- geometry ---------------------------------------------------------------------------
    def forward(self) -> torch.Tensor:
        """Unit viewing direction ``[3]``."""
        u, a, b = ground_basis(self.up)
        flat = math.cos(self.yaw) * a + math.sin(self.yaw) * b
        return math.cos(self.pitch) * flat - math.sin(self.pitch) * u

    def eye(self) -> torch.Tensor:
        return torch.tensor(self.target, dtype=torch.float64) - self.distance * self.forward()

    def world_to_camera(self) -> torch.Tensor:
        """OpenCV world-to-camera ``[4, 4]`` (float64)."""
        eye = self.eye()
        return look_at(eye, eye + self.forward(), self.up)

    def right(self) -> torch.Tensor:
        return self.world_to_camera()[0, :3]

    def camera_up(self) -> torch.Tensor:
        """The image's up direction in the world (minus the camera's y axis)."""
        return -self.world_to_camera()[1, :3]

    # ----- orbit ------------------------------------------------------------------------------
    def orbit(self, dx: float, dy: float) -> None:
        """Turn around the target by ``dx`` (yaw) and ``dy`` (pitch) radians."""
        self.yaw += dx
        self.pitch = min(_MAX_PITCH, max(-_MAX_PITCH, self.pitch + dy))

    def pan(self, dx: float, dy: float) -> None:
        """Move target and eye sideways by ``dx``, ``dy`` times the distance (screen right / up)."""
        shift = self.distance * (dx * self.right() + dy * self.camera_up())
        self.target = (torch.tensor(self.target, dtype=torch.float64) - shift).tolist()

    def dolly(self, steps: float) -> None:
        """Move towards the target (``steps`` > 0) or away, by 10% per step."""
        self.distance = max(1e-4, self.distance * 0.9**steps)

    # ----- fly --------------------------------------------------------------------------------
    def look(self, dx: float, dy: float) -> None:
        """Turn the heading about the eye by ``dx``, ``dy`` radians (the eye stays put)."""
        eye = self.eye()
        self.yaw += dx
        self.pitch = min(_MAX_PITCH, max(-_MAX_PITCH, self.pitch + dy))
        self.target = (eye + self.distance * self.forward()).tolist()

    def move(self, forward: float, right: float, up: float, dt: float) -> None:
        """Move eye and target by ``speed * dt`` along the view direction, the camera's right and the world's up."""
        step = self.speed * dt
        u = ground_basis(self.up)[0]
        delta = step * (forward * self.forward() + right * self.right() + up * u)
        self.target = (torch.tensor(self.target, dtype=torch.float64) + delta).tolist()

    def set_pose(self, world_to_camera: torch.Tensor) -> None:
        """Take a pose (e.g. a camera-path keyframe): keep the distance, derive target, yaw and pitch."""
        w2c = torch.as_tensor(world_to_camera, dtype=torch.float64)
        rot, t = w2c[:3, :3], w2c[:3, 3]
        eye = -(rot.T @ t)
        fwd = rot[2]
        u, a, b = ground_basis(self.up)
        self.pitch = min(_MAX_PITCH, max(-_MAX_PITCH, -math.asin(max(-1.0, min(1.0, float(fwd @ u))))))
        self.yaw = math.atan2(float(fwd @ b), float(fwd @ a))
        self.target = (eye + self.distance * self.forward()).tolist()
