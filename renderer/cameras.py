"""Cameras and stereo rigs.

Conventions: OpenCV camera axes (x right, y down, z forward); poses are world-to-camera 4x4 matrices
(``p_cam = R p_world + t``); intrinsics are a pinhole ``K`` with a real (possibly off-centre) principal point,
in pixel units where the centre of the top-left pixel is (0.5, 0.5). OpenGL camera-to-world poses (x right,
y up, z backward; Blender, NeRF, OpenXR) are converted at the edges with :func:`opencv_from_opengl_c2w`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_IMAGE_SIDE = 16384
_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def _as_matrix(name: str, value: Tensor | Sequence, shape: tuple[int, int]) -> Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, Tensor) else value
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return tensor


def check_rigid(name: str, matrix: Tensor, tol: float = 1e-3) -> None:
    """Raise ``ValueError`` unless ``matrix`` (4x4) is a rigid transform: rotation (det +1) plus translation."""
    m = matrix.detach().to(torch.float64)
    if not torch.allclose(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), atol=tol):
        raise ValueError(f"{name}: last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    r = m[:3, :3]
    err = (r @ r.T - torch.eye(3, dtype=torch.float64)).abs().max().item()
    det = torch.linalg.det(r).item()
    if err > tol or abs(det - 1.0) > tol:
        raise ValueError(
            f"{name}: upper 3x3 is not a rotation (|R R^T - I| = {err:.3g}, det = {det:.4g}); "
            "scaled, sheared or mirrored poses are not supported"
        )


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float, cx: float | None = None,
                        cy: float | None = None) -> Tensor:
    """Pinhole ``K`` ``[3, 3]`` with square pixels and horizontal field of view ``fov_x_deg``."""
    if not 0.0 < fov_x_deg < 180.0:
        raise ValueError(f"fov_x_deg: expected a value in (0, 180), got {fov_x_deg}")
    half_tan = math.tan(math.radians(fov_x_deg) / 2)
    f = 0.5 * width / half_tan if half_tan > 0 else math.inf
    if not math.isfinite(f):
        raise ValueError(f"fov_x_deg: {fov_x_deg} is too small to give a finite focal length")
    cx = width / 2 if cx is None else cx
    cy = height / 2 if cy is None else cy
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera.

    Attributes:
        world_to_camera: rigid world-to-camera transform in OpenCV axes ``[4, 4]``.
        K: intrinsics ``[3, 3]`` (fx, fy, cx, cy in pixels).
        width, height: image size in pixels.
        near, far: clip distances along the camera z axis.
    """

    world_to_camera: Tensor  # [4, 4]
    K: Tensor  # [3, 3]
    width: int
    height: int
    near: float = 0.01
    far: float = 1e10

    def __post_init__(self) -> None:
        object.__setattr__(self, "world_to_camera", _as_matrix("world_to_camera", self.world_to_camera, (4, 4)))
        object.__setattr__(self, "K", _as_matrix("K", self.K, (3, 3)))
        check_rigid("world_to_camera", self.world_to_camera)
        for name, size in (("width", self.width), ("height", self.height)):
            if not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIDE:
                raise ValueError(f"{name}: expected an integer in 1..{MAX_IMAGE_SIDE}, got {size!r}")
        k = self.K.detach().to(torch.float64)
        if not (k[0, 0] > 0 and k[1, 1] > 0):
            raise ValueError(f"K: focal lengths must be positive, got fx={k[0, 0].item()}, fy={k[1, 1].item()}")
        if k[0, 1] != 0 or k[1, 0] != 0 or not torch.equal(k[2], torch.tensor([0.0, 0.0, 1.0], dtype=k.dtype)):
            raise ValueError(f"K: expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {k.tolist()}")
        if not 0.0 < self.near < self.far:
            raise ValueError(f"near/far: expected 0 < near < far, got near={self.near}, far={self.far}")

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def camera_to_world(self) -> Tensor:
        """Inverse pose ``[4, 4]`` (camera axes in world coordinates, OpenCV)."""
        return rigid_inverse(self.world_to_camera)

    @property
    def position(self) -> Tensor:
        """Camera centre in world coordinates ``[3]``."""
        r, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -(r.T @ t)

    def to_opengl_c2w(self) -> Tensor:
        """Camera-to-world pose ``[4, 4]`` in OpenGL axes (x right, y up, z backward)."""
        return self.camera_to_world @ _OPENGL_TO_OPENCV.to(self.world_to_camera)

    def with_pose(self, world_to_camera: Tensor) -> Camera:
        return Camera(world_to_camera, self.K, self.width, self.height, self.near, self.far)

    def scaled(self, factor: float) -> Camera:
        """Same camera at ``factor`` times the resolution (intrinsics scaled to match)."""
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        k = self.K.clone()
        k[0] *= w / self.width
        k[1] *= h / self.height
        return Camera(self.world_to_camera, k, w, h, self.near, self.far)

    @staticmethod
    def from_opengl_c2w(c2w: Tensor | Sequence, K: Tensor | Sequence, width: int, height: int,
                        near: float = 0.01, far: float = 1e10) -> Camera:
        """Build a camera from an OpenGL/Blender camera-to-world pose ``[4, 4]``."""
        c2w = _as_matrix("c2w", c2w, (4, 4))
        check_rigid("c2w", c2w)
        return Camera(rigid_inverse(opencv_from_opengl_c2w(c2w)), K, width, height, near, far)

    @staticmethod
    def look_at(eye: Sequence[float] | Tensor, target: Sequence[float] | Tensor, up: Sequence[float] | Tensor,
                K: Tensor | Sequence, width: int, height: int, near: float = 0.01, far: float = 1e10) -> Camera:
        """Camera at ``eye`` looking at ``target``; ``up`` is the world direction shown upwards."""
        return Camera(look_at(eye, target, up), K, width, height, near, far)


def rigid_inverse(matrix: Tensor) -> Tensor:
    """Inverse of a rigid transform ``[..., 4, 4]``."""
    r = matrix[..., :3, :3]
    t = matrix[..., :3, 3:]
    inv = torch.zeros_like(matrix)
    inv[..., :3, :3] = r.transpose(-1, -2)
    inv[..., :3, 3:] = -r.transpose(-1, -2) @ t
    inv[..., 3, 3] = 1.0
    return inv


def opencv_from_opengl_c2w(c2w: Tensor) -> Tensor:
    """Convert a camera-to-world pose ``[..., 4, 4]`` from OpenGL axes to OpenCV axes (flip y and z)."""
    return c2w @ _OPENGL_TO_OPENCV.to(c2w)


def look_at(eye: Sequence[float] | Tensor, target: Sequence[float] | Tensor,
            up: Sequence[float] | Tensor) -> Tensor:
    """World-to-camera ``[4, 4]`` (OpenCV axes, float64) for a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that appears upwards in the image (so the camera's +y, which points down
    in the image, is opposite to it).
    """
    eye_t, target_t, up_t = (torch.as_tensor(v, dtype=torch.float64).reshape(3) for v in (eye, target, up))
    forward = target_t - eye_t
    if forward.norm() < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, up_t)  # x = y cross z with y = -up (down in the image), z = forward
    if right.norm() < 1e-9:
        raise ValueError(f"look_at: up {up_t.tolist()} is parallel to the viewing direction")
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward])  # rows: camera axes in world coordinates
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ eye_t
    return w2c


@dataclass(frozen=True)
class StereoRig:
    """Two parallel-axis eyes around a head pose.

    Attributes:
        head: the centre eye, a :class:`Camera` (its pose is the head pose, OpenCV axes).
        ipd: inter-pupillary distance in scene units (eyes at -ipd/2 and +ipd/2 along the head's x axis).
        K_left, K_right: optional per-eye intrinsics (off-centre principal points, as OpenXR gives);
            the head's ``K`` when omitted.
    """

    head: Camera
    ipd: float
    K_left: Tensor | None = None
    K_right: Tensor | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ipd) and self.ipd >= 0.0):
            raise ValueError(f"ipd: expected a finite value >= 0, got {self.ipd}")

    def eye(self, side: str) -> Camera:
        """The ``"left"`` or ``"right"`` eye camera."""
        if side not in ("left", "right"):
            raise ValueError(f"side: expected 'left' or 'right', got {side!r}")
        sign = 1.0 if side == "left" else -1.0
        w2c = self.head.world_to_camera.clone()
        # Eye centre c_e = c_h + d with d = -/+ (ipd/2) * head x axis, so t_e = t_h - R d = t_h +/- ipd/2 e_x.
        w2c[0, 3] += sign * self.ipd / 2
        k = self.K_left if side == "left" else self.K_right
        h = self.head
        return Camera(w2c, h.K if k is None else k, h.width, h.height, h.near, h.far)

    def eyes(self) -> tuple[Camera, Camera]:
        """``(left, right)`` eye cameras."""
        return self.eye("left"), self.eye("right")


@dataclass(frozen=True)
class CameraBatch:
    """C cameras of one image size, stacked for a backend.

    Attributes:
        viewmats: world-to-camera ``[C, 4, 4]``.
        Ks: intrinsics ``[C, 3, 3]``.
        width, height, near, far: shared by all cameras.
    """

    viewmats: Tensor  # [C, 4, 4]
    Ks: Tensor  # [C, 3, 3]
    width: int
    height: int
    near: float
    far: float

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def positions(self) -> Tensor:
        """Camera centres ``[C, 3]``."""
        r, t = self.viewmats[:, :3, :3], self.viewmats[:, :3, 3:]
        return -(r.transpose(-1, -2) @ t)[..., 0]

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> CameraBatch:
        return CameraBatch(self.viewmats.to(device, dtype), self.Ks.to(device, dtype), self.width,
                           self.height, self.near, self.far)


def as_camera_list(cameras: Camera | StereoRig | Sequence[Camera]) -> list[Camera]:
    """Normalise what ``render`` accepts (one camera, a stereo rig, or a sequence of cameras) to a list."""
    if isinstance(cameras, Camera):
        return [cameras]
    if isinstance(cameras, StereoRig):
        return list(cameras.eyes())
    cams = list(cameras)
    if not cams:
        raise ValueError("cameras: expected at least one camera, got an empty sequence")
    for i, cam in enumerate(cams):
        if not isinstance(cam, Camera):
            raise ValueError(f"cameras[{i}]: expected a Camera, got {type(cam).__name__}")
    return cams


def stack_cameras(cameras: Camera | StereoRig | Sequence[Camera], device: torch.device | str,
                  dtype: torch.dtype = torch.float32) -> CameraBatch:
    """Stack cameras (same size and clip planes) into a :class:`CameraBatch` on ``device``."""
    cams = as_camera_list(cameras)
    first = cams[0]
    for i, cam in enumerate(cams[1:], start=1):
        if (cam.width, cam.height) != (first.width, first.height):
            raise ValueError(
                f"cameras[{i}]: size {cam.width}x{cam.height} differs from cameras[0] {first.width}x{first.height};"
                " render cameras of different sizes in separate calls"
            )
        if (cam.near, cam.far) != (first.near, first.far):
            raise ValueError(f"cameras[{i}]: near/far differ from cameras[0]")
    viewmats = torch.stack([c.world_to_camera.to(torch.float64) for c in cams]).to(device, dtype)
    ks = torch.stack([c.K.to(torch.float64) for c in cams]).to(device, dtype)
    return CameraBatch(viewmats, ks, first.width, first.height, first.near, first.far)
