"""The capture cameras that travel with a scene, so that viewers and renderers can start where the scene was seen.

A trained scene is only sharp from around the views it was trained on; from an orbit around its bounds, the
unconstrained background of a real capture shows as streaks. ``gscache train`` therefore writes the dataset's
cameras beside the scene (``cameras.json`` in the run folder), and ``gscache view``/``render``/``demo``/``serve``
start from them where they are found:

- ``<name>.cameras.json`` beside ``<name>.ply`` (how the bundled scenes carry theirs);
- ``cameras.json`` in the scene's folder (a ``gscache train`` run folder);
- ``cameras.json`` two folders up from ``point_cloud/iteration_N/point_cloud.ply`` (the original 3DGS code's output).

Two layouts are read: gscache's own (``{"format": "gscache.cameras/1", "cameras": [{name, split, width, height,
K, world_to_camera}]}``, which ``gscache render --cameras`` also reads) and the original 3DGS ``cameras.json`` (a list
of ``{img_name, width, height, position, rotation, fx, fy}`` with ``rotation`` the camera-to-world rotation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from renderer import Camera

FORMAT = "gscache.cameras/1"
RUN_CAMERAS = "cameras.json"


class SceneCamerasError(ValueError):
    """A cameras file that cannot be read; the message names the file and the entry."""


@dataclass(frozen=True)
class SceneCamera:
    """One capture camera.

    Attributes:
        name: the image's name in the dataset.
        camera: pinhole camera at the dataset's image size (OpenCV axes).
        split: ``"train"``, ``"test"`` or ``""`` (not known).
    """

    name: str
    camera: Camera
    split: str = ""


@dataclass(frozen=True)
class SceneCameras:
    """The capture cameras of a scene, in capture (name) order."""

    path: Path
    cameras: tuple[SceneCamera, ...]

    def __len__(self) -> int:
        return len(self.cameras)

    def up(self) -> tuple[float, float, float]:
        """World "up" as the cameras held it. Hand-held and turntable captures keep the camera upright (no roll),
        so every camera's x axis lies in the ground plane: up is the direction most nearly perpendicular to all of
        them (the smallest eigenvector of their scatter), on the side of the mean image-up (minus each camera's y
        axis). Where the x axes do not span a plane (one camera, a straight dolly) it is that mean image-up."""
        rights = torch.stack([c.camera.world_to_camera[0, :3].to(torch.float64) for c in self.cameras])
        mean_up = -torch.stack([c.camera.world_to_camera[1, :3].to(torch.float64) for c in self.cameras]).mean(0)
        values, vectors = torch.linalg.eigh(rights.T @ rights)
        if float(values[1]) > 1e-3 * float(values[2]):
            up = vectors[:, 0]
            up = -up if float(up @ mean_up) < 0 else up
        elif float(mean_up.norm()) > 1e-6:
            up = mean_up / mean_up.norm()
        else:
            return (0.0, -1.0, 0.0)
        return tuple(float(v) for v in up)

    def target(self) -> Tensor:
        """The point the cameras look at ``[3]`` (float64): nearest, in least squares, to every optical axis; the
        mean camera centre when the axes are (nearly) parallel."""
        eye = torch.eye(3, dtype=torch.float64)
        a = torch.zeros(3, 3, dtype=torch.float64)
        b = torch.zeros(3, dtype=torch.float64)
        centres = []
        for c in self.cameras:
            w2c = c.camera.world_to_camera.to(torch.float64)
            centre = -(w2c[:3, :3].T @ w2c[:3, 3])
            axis = w2c[2, :3] / w2c[2, :3].norm()
            projector = eye - torch.outer(axis, axis)
            a += projector
            b += projector @ centre
            centres.append(centre)
        if float(torch.linalg.det(a)) < 1e-9 * len(self.cameras) ** 3:
            return torch.stack(centres).mean(0)
        return torch.linalg.solve(a, b)

    def evenly(self, count: int) -> list[SceneCamera]:
        """``count`` cameras spread evenly over the capture order (all of them when there are fewer)."""
        if count <= 0:
            raise ValueError(f"count: expected >= 1, got {count}")
        n = len(self.cameras)
        if count >= n:
            return list(self.cameras)
        return [self.cameras[round(i * (n - 1) / max(count - 1, 1))] for i in range(count)]


def scene_cameras_candidates(scene_path: str | Path) -> list[Path]:
    """Where the cameras file of ``scene_path`` may lie, in the order looked at (see the module doc)."""
    scene = Path(scene_path)
    stem = scene.name.split(".")[0]
    candidates = [scene.parent / f"{stem}.cameras.json", scene.parent / RUN_CAMERAS]
    if scene.parent.parent.name == "point_cloud":
        candidates.append(scene.parent.parent.parent / RUN_CAMERAS)
    return candidates


def find_scene_cameras(scene_path: str | Path) -> Path | None:
    """The cameras file that belongs to ``scene_path`` (the first of :func:`scene_cameras_candidates`), or None."""
    return next((c for c in scene_cameras_candidates(scene_path) if c.is_file()), None)


def load_scene_cameras(path: str | Path) -> SceneCameras:
    """Read a cameras file (gscache's layout or the original 3DGS one).

    Raises:
        FileNotFoundError: no such file.
        SceneCamerasError: not JSON, no cameras, or an entry with a missing or malformed field (named).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: cameras file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SceneCamerasError(f"{path}: not valid JSON ({err})") from None
    if isinstance(doc, list):
        entries, parse = doc, _inria_camera
    elif isinstance(doc, dict) and isinstance(doc.get("cameras"), list):
        entries, parse = doc["cameras"], _gscache_camera
    else:
        raise SceneCamerasError(f"{path}: expected a list of cameras (3DGS) or an object with 'cameras'")
    if not entries:
        raise SceneCamerasError(f"{path}: no cameras")
    cameras = []
    for i, entry in enumerate(entries):
        try:
            cameras.append(parse(entry, i))
        except (KeyError, TypeError, ValueError) as err:
            detail = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            raise SceneCamerasError(f"{path}: cameras[{i}]: {detail}") from None
    cameras.sort(key=lambda c: c.name)
    return SceneCameras(path, tuple(cameras))


def open_scene_cameras(scene_path: str | Path) -> SceneCameras | None:
    """:func:`load_scene_cameras` of :func:`find_scene_cameras`; None when the scene has no cameras file."""
    found = find_scene_cameras(scene_path)
    return None if found is None else load_scene_cameras(found)


def _gscache_camera(entry: dict, index: int) -> SceneCamera:
    width, height = int(entry["width"]), int(entry["height"])
    k = torch.tensor(entry["K"], dtype=torch.float64)
    w2c = torch.tensor(entry["world_to_camera"], dtype=torch.float64)
    return SceneCamera(str(entry.get("name", f"camera_{index:04d}")), Camera(w2c, k, width, height),
                       str(entry.get("split", "")))


def _inria_camera(entry: dict, index: int) -> SceneCamera:
    width, height = int(entry["width"]), int(entry["height"])
    rotation = torch.tensor(entry["rotation"], dtype=torch.float64)  # camera-to-world
    position = torch.tensor(entry["position"], dtype=torch.float64)
    if rotation.shape != (3, 3) or position.shape != (3,):
        raise ValueError(f"rotation must be 3x3 and position 3 numbers, got {list(rotation.shape)}, "
                         f"{list(position.shape)}")
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = rotation.T
    w2c[:3, 3] = -(rotation.T @ position)
    k = torch.tensor([[float(entry["fx"]), 0.0, width / 2], [0.0, float(entry["fy"]), height / 2],
                      [0.0, 0.0, 1.0]], dtype=torch.float64)
    return SceneCamera(str(entry.get("img_name", f"camera_{index:04d}")), Camera(w2c, k, width, height))


def cameras_document(cameras: Sequence[SceneCamera]) -> dict:
    """gscache's layout of ``cameras`` (what :func:`load_scene_cameras` reads back)."""
    return {"format": FORMAT, "cameras": [
        {"name": c.name, "split": c.split, "width": c.camera.width, "height": c.camera.height,
         "K": c.camera.K.to(torch.float64).tolist(), "world_to_camera": c.camera.world_to_camera.to(torch.float64)
         .tolist()} for c in cameras]}


def camera_at_size(camera: Camera, width: int, height: int) -> Camera:
    """``camera`` seen through an image of ``width`` x ``height``: the same horizontal field of view and principal
    point (as a fraction of the image), square pixels; the vertical extent follows the new aspect."""
    k = camera.K.to(torch.float64).clone()
    sx = width / camera.width
    k[0, 0], k[1, 1] = k[0, 0] * sx, k[1, 1] * sx
    k[0, 2] *= sx
    k[1, 2] *= height / camera.height
    return Camera(camera.world_to_camera, k, width, height, camera.near, camera.far)


def scene_in_folder(folder: str | Path) -> Path:
    """The scene file of a training run folder: gscache's ``scene.ply``, or the original 3DGS code's
    ``point_cloud/iteration_<N>/point_cloud.ply`` of the largest N.

    Raises:
        FileNotFoundError: the folder holds neither (the message names the folder and what was looked for).
    """
    folder = Path(folder)
    if (folder / "scene.ply").is_file():
        return folder / "scene.ply"
    iterations = []
    for candidate in (folder / "point_cloud").glob("iteration_*/point_cloud.ply"):
        suffix = candidate.parent.name.removeprefix("iteration_")
        if suffix.isdigit():
            iterations.append((int(suffix), candidate))
    if iterations:
        return max(iterations)[1]
    raise FileNotFoundError(f"{folder}: a folder without a scene (looked for scene.ply and "
                            "point_cloud/iteration_N/point_cloud.ply)")


def resolve_scene_file(path: str | Path) -> Path:
    """``path`` itself, or for a folder (a training run) the scene file in it (:func:`scene_in_folder`)."""
    path = Path(path)
    return scene_in_folder(path) if path.is_dir() else path
