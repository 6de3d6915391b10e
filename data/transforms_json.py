"""``transforms.json`` datasets: NeRF-synthetic (Blender) and instant-ngp / nerfstudio layouts.

- NeRF-synthetic: ``transforms_train.json`` (+ ``transforms_test.json`` as the held-out split) with
  ``camera_angle_x`` and frames ``{file_path (extension optional, ".png" tried), transform_matrix}``; RGBA images
  are composited onto ``DatasetOptions.background``.
- instant-ngp / nerfstudio: ``transforms.json`` with intrinsics ``fl_x, fl_y, cx, cy, w, h`` and distortion
  ``k1, k2, k3, k4, p1, p2``, at the top level or per frame (per frame wins); ``ply_file_path`` names optional
  initial points.

``transform_matrix`` is an OpenGL/Blender camera-to-world pose, converted with ``Camera.from_opengl_c2w``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from renderer import Camera

from .dataset import DatasetError, DatasetOptions, Frame, PointCloud, SceneDataset, SourceCamera, split_frames
from .images import image_size
from .undistort import pinhole_intrinsics

_DISTORTION = ("k1", "k2", "p1", "p2", "k3", "k4")


def find_transforms(root: Path) -> Path | None:
    """``transforms_train.json`` or ``transforms.json`` in ``root``, or None."""
    for name in ("transforms_train.json", "transforms.json"):
        if (root / name).is_file():
            return root / name
    return None


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` with a ``frames`` list."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(path, "file missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"invalid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise DatasetError(path, "expected an object with a 'frames' list")
    if not data["frames"]:
        raise DatasetError(path, "'frames' is empty")
    return data


def _image_path(root: Path, file_path: str) -> Path:
    path = root / file_path
    if path.suffix == "" or not path.is_file():
        for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
            if path.with_name(path.name + ext).is_file():
                return path.with_name(path.name + ext)
    return path


def _number(json_path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DatasetError(json_path, f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _source_camera(json_path: Path, where: str, fields: dict[str, Any], size: tuple[int, int]) -> SourceCamera:
    """The file's camera from ``fields`` (top level merged with the frame) for an image of ``size``."""
    model = fields.get("camera_model", "OPENCV")
    if model != "OPENCV":
        raise DatasetError(json_path, f"{where}: unsupported camera_model {model}; supported: OPENCV (pinhole with "
                                      "k1, k2, k3, k4, p1, p2)")
    width = int(_number(json_path, f"{where}.w", fields.get("w", size[0])))
    height = int(_number(json_path, f"{where}.h", fields.get("h", size[1])))
    if "fl_x" in fields:
        fx = _number(json_path, f"{where}.fl_x", fields["fl_x"])
    elif "camera_angle_x" in fields:
        fx = 0.5 * width / math.tan(0.5 * _number(json_path, f"{where}.camera_angle_x", fields["camera_angle_x"]))
    else:
        raise DatasetError(json_path, f"{where}: no focal length (fl_x or camera_angle_x)")
    if "fl_y" in fields:
        fy = _number(json_path, f"{where}.fl_y", fields["fl_y"])
    elif "camera_angle_y" in fields:
        fy = 0.5 * height / math.tan(0.5 * _number(json_path, f"{where}.camera_angle_y", fields["camera_angle_y"]))
    else:
        fy = fx
    cx = _number(json_path, f"{where}.cx", fields.get("cx", width / 2))
    cy = _number(json_path, f"{where}.cy", fields.get("cy", height / 2))
    dist = {k: _number(json_path, f"{where}.{k}", fields.get(k, 0.0)) for k in _DISTORTION}
    if dist["k3"] or dist["k4"]:
        source = SourceCamera("FULL_OPENCV", (fx, fy, cx, cy, dist["k1"], dist["k2"], dist["p1"], dist["p2"],
                                              dist["k3"], dist["k4"], 0.0, 0.0), width, height)
    elif any(dist.values()):
        source = SourceCamera("OPENCV", (fx, fy, cx, cy, dist["k1"], dist["k2"], dist["p1"], dist["p2"]),
                              width, height)
    else:
        source = SourceCamera("PINHOLE", (fx, fy, cx, cy), width, height)
    return source if (width, height) == size else source.scaled_to(*size)


def _frame(root: Path, json_path: Path, index: int, top: dict[str, Any], item: Any, downscale: int) -> Frame:
    where = f"frames[{index}]"
    if not isinstance(item, dict) or "file_path" not in item or "transform_matrix" not in item:
        raise DatasetError(json_path, f"{where}: expected an object with 'file_path' and 'transform_matrix'")
    path = _image_path(root, str(item["file_path"]))
    size = image_size(path)
    fields = {k: v for k, v in top.items() if k != "frames"} | item
    source = _source_camera(json_path, where, fields, size)
    k, width, height = pinhole_intrinsics(source)
    try:
        c2w = torch.as_tensor(item["transform_matrix"], dtype=torch.float64)
        camera = Camera.from_opengl_c2w(c2w, k, width, height)
    except (ValueError, TypeError, RuntimeError) as e:
        raise DatasetError(json_path, f"{where}.transform_matrix: {e}") from None
    if downscale > 1:
        camera = camera.scaled(1.0 / downscale)
    name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    return Frame(name, path, camera, source if source.model != "PINHOLE" else None)


def read_frames(root: Path, json_path: Path, downscale: int) -> list[Frame]:
    """The frames listed in ``json_path`` (image paths relative to ``root``)."""
    data = read_json(json_path)
    return [_frame(root, json_path, i, data, item, downscale) for i, item in enumerate(data["frames"])]


def read_transforms_dataset(root: Path, options: DatasetOptions) -> SceneDataset:
    """Read a NeRF-synthetic or nerfstudio dataset from ``root`` (see the module docstring)."""
    train_json = root / "transforms_train.json"
    if train_json.is_file():
        frames = read_frames(root, train_json, options.downscale)
        test_json = root / "transforms_test.json"
        if test_json.is_file():
            train, test = sorted(frames, key=lambda f: f.name), read_frames(root, test_json, options.downscale)
            test = sorted(test, key=lambda f: f.name)
        else:
            train, test = split_frames(frames, options.test_every)
        return SceneDataset(root, "nerf_synthetic", train, test, None, options.background)
    json_path = root / "transforms.json"
    frames = read_frames(root, json_path, options.downscale)
    train, test = split_frames(frames, options.test_every)
    return SceneDataset(root, "transforms", train, test, _ply_points(root, json_path), options.background)


def _ply_points(root: Path, json_path: Path) -> PointCloud | None:
    """Points named by ``ply_file_path`` in ``json_path`` (read with open3d), or None."""
    name = read_json(json_path).get("ply_file_path")
    if not name:
        return None
    import numpy as np
    import open3d as o3d

    path = root / str(name)
    if not path.is_file():
        raise DatasetError(json_path, f"ply_file_path: {path} not found")
    pcd = o3d.io.read_point_cloud(str(path))
    xyz = torch.tensor(np.asarray(pcd.points), dtype=torch.float32)
    if len(xyz) == 0:
        return None
    rgb = torch.tensor(np.asarray(pcd.colors), dtype=torch.float32) if pcd.has_colors() else torch.full_like(xyz, 0.5)
    return PointCloud(xyz, rgb)
