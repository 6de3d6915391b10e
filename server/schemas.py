"""Request bodies and stream messages (pydantic), and how a request becomes cameras.

Cameras follow the README's camera-file format: ``width``, ``height``, intrinsics as ``K`` (3x3) or ``fov_x_deg``,
the pose as ``world_to_camera`` (OpenCV, 4x4) or ``c2w_opengl`` (OpenGL/Blender camera-to-world, 4x4).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from renderer import Camera, StereoRig, intrinsics_from_fov

from .config import MAX_IMAGE_SIDE

ImageFormat = Literal["png", "jpeg", "raw"]
PathName = Literal["orbit", "head"]


def _matrix(rows: int, cols: int):
    def check(value: list[list[float]]) -> list[list[float]]:
        got_cols = sorted({len(row) for row in value})
        if len(value) != rows or got_cols != [cols]:
            shape = f"{len(value)} rows of {'/'.join(map(str, got_cols)) or 0} numbers"
            raise ValueError(f"expected a {rows}x{cols} matrix ({rows} rows of {cols} numbers), got {shape}")
        return value

    return AfterValidator(check)


Matrix4 = Annotated[list[Annotated[list[FiniteFloat], Field(max_length=8)]], Field(max_length=8), _matrix(4, 4)]
Matrix3 = Annotated[list[Annotated[list[FiniteFloat], Field(max_length=8)]], Field(max_length=8), _matrix(3, 3)]


def _nonzero_tangent(fov_x_deg: float) -> float:
    if math.tan(math.radians(fov_x_deg) / 2) == 0.0:  # 5e-324 passes gt=0 but its focal length divides by zero
        raise ValueError(f"{fov_x_deg} degrees is too small: the focal length would be infinite")
    return fov_x_deg


FovDeg = Annotated[FiniteFloat, Field(gt=0.0, lt=180.0), AfterValidator(_nonzero_tangent)]
Side = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]
Unit = Annotated[FiniteFloat, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoseSpec(_Strict):
    """A head pose: exactly one of ``world_to_camera`` (OpenCV) or ``c2w_opengl`` (OpenGL camera-to-world)."""

    world_to_camera: Matrix4 | None = None
    c2w_opengl: Matrix4 | None = None

    @model_validator(mode="after")
    def _one_pose(self):
        if (self.world_to_camera is None) == (self.c2w_opengl is None):
            raise ValueError("give exactly one of world_to_camera (OpenCV) or c2w_opengl (OpenGL camera-to-world)")
        return self


class ViewSpec(_Strict):
    """Everything about a frame but the pose: size, intrinsics, eyes and encoding.

    ``width`` and ``height`` are per eye; a stereo frame is the two eyes side by side (left first), ``2 * width``
    pixels wide. ``K`` wins over ``fov_x_deg``; with neither, ``fov_x_deg`` is 60. ``K_left``/``K_right`` give
    per-eye intrinsics (off-centre frusta, as OpenXR gives).
    """

    width: Side = 640
    height: Side = 480
    K: Matrix3 | None = None
    fov_x_deg: FovDeg | None = None
    near: Annotated[FiniteFloat, Field(gt=0.0)] = 0.01
    far: Annotated[FiniteFloat, Field(gt=0.0)] = 1e10
    stereo: bool = False
    ipd: Annotated[FiniteFloat, Field(ge=0.0, le=100.0)] = 0.064
    K_left: Matrix3 | None = None
    K_right: Matrix3 | None = None
    background: tuple[Unit, Unit, Unit] = (0.0, 0.0, 0.0)
    format: ImageFormat = "jpeg"
    quality: Annotated[int, Field(ge=1, le=100)] = 90

    @model_validator(mode="after")
    def _intrinsics(self):
        if self.K is not None and self.fov_x_deg is not None:
            raise ValueError("give K or fov_x_deg, not both")
        if (self.K_left is not None or self.K_right is not None) and not self.stereo:
            raise ValueError("K_left/K_right are only used with stereo: true")
        if not self.near < self.far:
            raise ValueError(f"near/far: expected near < far, got near={self.near}, far={self.far}")
        return self


class RenderRequest(ViewSpec, PoseSpec):
    """``POST /render``: one frame (mono or stereo) for one pose."""


class StreamConfig(ViewSpec):
    """Stream message ``{"type": "config", ...}``: the view used for the poses that follow."""

    type: Literal["config"]


class StreamPose(PoseSpec):
    """Stream message ``{"type": "pose", "id": N, ...}``: a head pose; only the newest one is rendered."""

    type: Literal["pose"]
    id: Annotated[int, Field(ge=-(2**63), lt=2**63)]


StreamMessage = Annotated[StreamConfig | StreamPose, Field(discriminator="type")]


class SceneLoadRequest(_Strict):
    """``POST /scenes/load``: a scene file under the served directory, by its relative path."""

    path: Annotated[str, Field(min_length=1, max_length=1024)]
    drop_nonfinite: bool = False


class BenchRequest(_Strict):
    """``POST /bench``: a bounded run of the benchmark protocol (server.bench) on the server's device.

    ``scene`` is a path under the served directory (the loaded scene's file when omitted); ``grid`` tiles it and
    ``sh3`` adds degree-3 SH, as the ids of BENCHMARK.md do. Renderers default to the server's backend.
    """

    scene: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    grid: Annotated[int, Field(ge=1, le=8)] = 1
    sh3: bool = False
    paths: Annotated[list[PathName], Field(min_length=1, max_length=2)] = ["orbit"]
    renderers: Annotated[list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=4)] | None = None
    reference: Annotated[str, Field(max_length=64)] | None = None
    quality: bool = False
    width: Side = 2064
    height: Side = 2208
    eyes: Literal[1, 2] = 2
    fov_x_deg: FovDeg = 90.0
    warmup_frames: Annotated[int, Field(ge=0, le=64)] = 8
    timed_frames: Annotated[int, Field(ge=1)] = 96
    cover_path: bool = False


def build_cameras(view: ViewSpec, pose: PoseSpec) -> Camera | StereoRig:
    """The camera (mono) or stereo rig a view and a pose describe.

    Raises:
        ValueError: naming the field, for poses that are not rigid and intrinsics that are not pinhole.
    """
    K = torch.tensor(view.K, dtype=torch.float64) if view.K is not None else intrinsics_from_fov(
        view.width, view.height, 60.0 if view.fov_x_deg is None else view.fov_x_deg)
    if pose.world_to_camera is not None:
        head = Camera(torch.tensor(pose.world_to_camera, dtype=torch.float64), K, view.width, view.height,
                      view.near, view.far)
    else:
        head = Camera.from_opengl_c2w(torch.tensor(pose.c2w_opengl, dtype=torch.float64), K, view.width, view.height,
                                      view.near, view.far)
    if not view.stereo:
        return head
    per_eye = [None if k is None else torch.tensor(k, dtype=torch.float64) for k in (view.K_left, view.K_right)]
    rig = StereoRig(head, view.ipd, *per_eye)
    if view.K_left is not None or view.K_right is not None:
        rig.eyes()  # validates the per-eye intrinsics now, not on the render thread (the eyes of a valid head and
        # its own K are valid: building them here too would triple the cost of every pose, most of them dropped)
    return rig
