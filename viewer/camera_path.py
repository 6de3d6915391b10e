"""Camera paths: keyframes, smooth interpolation and JSON files.

Positions follow a Catmull-Rom spline through the keyframe eyes (ends extended linearly), rotations a slerp between
neighbouring keyframe quaternions with the segment parameter eased (smoothstep), fields of view a linear blend.
Sampling at a keyframe's time gives that keyframe exactly. Each segment lasts ``seconds_per_segment``.

File format (``version`` 1)::

    {"version": 1, "fps": 30, "seconds_per_segment": 2.0,
     "keyframes": [{"world_to_camera": [[...4x4, OpenCV...]], "fov_x_deg": 60.0}, ...]}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from renderer.cameras import check_rigid, rigid_inverse
from renderer.splats import quat_to_rotmat


@dataclass(frozen=True)
class Keyframe:
    """A recorded view: OpenCV world-to-camera ``[4, 4]`` (float64) and horizontal field of view."""

    world_to_camera: torch.Tensor  # [4, 4]
    fov_x_deg: float = 60.0

    @property
    def eye(self) -> torch.Tensor:
        return rigid_inverse(self.world_to_camera)[:3, 3]


def rotmat_to_quat(rot: torch.Tensor) -> torch.Tensor:
    """Unit quaternion w, x, y, z ``[4]`` of a rotation matrix ``[3, 3]`` (float64)."""
    m = rot.to(torch.float64)
    trace = float(m[0, 0] + m[1, 1] + m[2, 2])
    if trace > 0:
        s = math.sqrt(trace + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    quat = torch.tensor([float(v) for v in q], dtype=torch.float64)
    return quat / quat.norm()


def slerp(q0: torch.Tensor, q1: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical linear interpolation of unit quaternions ``[4]`` along the shorter arc."""
    dot = float(q0 @ q1)
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / q.norm()
    theta = math.acos(min(1.0, dot))
    return (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / math.sin(theta)


def catmull_rom(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor, t: float) -> torch.Tensor:
    """Uniform Catmull-Rom point between ``p1`` (t=0) and ``p2`` (t=1)."""
    t2, t3 = t * t, t * t * t
    return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)


@dataclass
class CameraPath:
    """Keyframes and timing.

    Attributes:
        keyframes: the recorded views, in order.
        seconds_per_segment: time from one keyframe to the next.
        fps: frame rate of playback and video export.
    """

    keyframes: list[Keyframe] = field(default_factory=list)
    seconds_per_segment: float = 2.0
    fps: float = 30.0

    @property
    def duration(self) -> float:
        return max(0, len(self.keyframes) - 1) * self.seconds_per_segment

    def frame_count(self) -> int:
        """Frames of a video of the whole path (first and last keyframe included)."""
        if not self.keyframes:
            return 0
        return int(round(self.duration * self.fps)) + 1

    def add(self, keyframe: Keyframe, index: int | None = None) -> None:
        self.keyframes.insert(len(self.keyframes) if index is None else index, keyframe)

    def remove(self, index: int) -> None:
        if not 0 <= index < len(self.keyframes):
            raise ValueError(f"keyframe index: expected 0..{len(self.keyframes) - 1}, got {index}")
        del self.keyframes[index]

    def sample(self, time_s: float) -> Keyframe:
        """The interpolated view at ``time_s`` seconds (clamped to the path)."""
        n = len(self.keyframes)
        if n == 0:
            raise ValueError("camera path: no keyframes (record at least one)")
        if n == 1:
            return self.keyframes[0]
        u = min(max(time_s / self.seconds_per_segment, 0.0), n - 1.0)
        i = min(int(math.floor(u)), n - 2)
        t = u - i
        eyes = [k.eye for k in self.keyframes]
        p0 = eyes[i - 1] if i > 0 else 2 * eyes[0] - eyes[1]
        p3 = eyes[i + 2] if i + 2 < n else 2 * eyes[n - 1] - eyes[n - 2]
        eye = catmull_rom(p0, eyes[i], eyes[i + 1], p3, t)
        k0, k1 = self.keyframes[i], self.keyframes[i + 1]
        # Rotations are of camera-to-world (the camera's axes in the world).
        q0 = rotmat_to_quat(k0.world_to_camera[:3, :3].T)
        q1 = rotmat_to_quat(k1.world_to_camera[:3, :3].T)
        ease = t * t * (3 - 2 * t)
        rot_c2w = quat_to_rotmat(slerp(q0, q1, ease))
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :3] = rot_c2w.T
        w2c[:3, 3] = -rot_c2w.T @ eye
        fov = k0.fov_x_deg + (k1.fov_x_deg - k0.fov_x_deg) * t
        return Keyframe(w2c, fov)

    def frames(self) -> list[Keyframe]:
        """Every frame of a video of the path at ``fps``."""
        count = self.frame_count()
        return [self.sample(i / self.fps) for i in range(count)]

    # ----- files ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"version": 1, "fps": self.fps, "seconds_per_segment": self.seconds_per_segment,
                "keyframes": [{"world_to_camera": k.world_to_camera.tolist(), "fov_x_deg": k.fov_x_deg}
                              for k in self.keyframes]}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the path as JSON (through a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), indent=1))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def load(path: str | os.PathLike[str]) -> CameraPath:
        """Read a camera-path JSON file; raises ``ValueError`` naming the file and the problem."""
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: camera path file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a camera path (invalid JSON: {err})") from None
        try:
            return CameraPath.from_json(doc)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{Path(path).name}: not a camera path ({err})") from None

    @staticmethod
    def from_json(doc: dict) -> CameraPath:
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("expected an object with \"version\": 1")
        keyframes = []
        for i, entry in enumerate(doc["keyframes"]):
            w2c = torch.tensor(entry["world_to_camera"], dtype=torch.float64)
            if w2c.shape != (4, 4):
                raise ValueError(f"keyframes[{i}].world_to_camera: expected 4x4, got {list(w2c.shape)}")
            check_rigid(f"keyframes[{i}].world_to_camera", w2c)
            fov = float(entry.get("fov_x_deg", 60.0))
            if not 0 < fov < 180:
                raise ValueError(f"keyframes[{i}].fov_x_deg: expected (0, 180), got {fov}")
            keyframes.append(Keyframe(w2c, fov))
        sps, fps = float(doc.get("seconds_per_segment", 2.0)), float(doc.get("fps", 30.0))
        if not (sps > 0 and fps > 0 and math.isfinite(sps) and math.isfinite(fps)):
            raise ValueError(f"seconds_per_segment and fps must be positive, got {sps}, {fps}")
        return CameraPath(keyframes, sps, fps)
