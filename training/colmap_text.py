"""COLMAP text models without pycolmap: the fallback :func:`training.trainer.open_dataset` uses where pycolmap is
not installed (e.g. a GPU machine whose Python has no wheel for it).

It reads ``cameras.txt``, ``images.txt`` and ``points3D.txt`` and undistorts SIMPLE_RADIAL, RADIAL and OPENCV images
the way :mod:`data.undistort` does through pycolmap: COLMAP's ``UndistortCamera`` (default options: no blank pixels,
scale clamped to [0.2, 2]) for the pinhole camera, COLMAP's distortion polynomials for the pixel mapping and the same
bilinear ``grid_sample``. ``tests/test_train_fallback.py`` checks cameras, images and points against the pycolmap
reader. Binary models (``*.bin``) and FULL_OPENCV still need pycolmap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data.colmap import find_colmap_model, find_images_dir
from data.dataset import (
    DatasetError,
    DatasetOptions,
    Frame,
    ImageCache,
    PointCloud,
    SceneDataset,
    SourceCamera,
    split_frames,
)
from data.images import image_size
from data.undistort import PINHOLE_MODELS, check_model
from renderer import Camera

FALLBACK_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
_NUM_PARAMS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8, "FULL_OPENCV": 12}


def can_read(root: Path) -> bool:
    """Whether ``root`` holds a COLMAP model in text form (the only form read here)."""
    model_dir = find_colmap_model(root)
    return model_dir is not None and all((model_dir / f"{s}.txt").is_file() for s in ("cameras", "images",
                                                                                        "points3D"))


# ----- distortion (COLMAP's camera models, float64, vectorised) ------------------------------------------------
def _split(model: str, params: tuple[float, ...]) -> tuple[float, float, float, float, tuple[float, ...]]:
    """``(fx, fy, cx, cy, extra)`` of a COLMAP parameter list."""
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        return params[0], params[0], params[1], params[2], tuple(params[3:])
    return params[0], params[1], params[2], params[3], tuple(params[4:])


def _distortion(model: str, extra: tuple[float, ...], u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP ``Distortion``: the offsets ``(du, dv)`` added to normalised image coordinates."""
    if model in PINHOLE_MODELS:
        return np.zeros_like(u), np.zeros_like(v)
    u2, v2, uv = u * u, v * v, u * v
    r2 = u2 + v2
    if model == "SIMPLE_RADIAL":
        radial = extra[0] * r2
        return u * radial, v * radial
    if model == "RADIAL":
        radial = extra[0] * r2 + extra[1] * r2 * r2
        return u * radial, v * radial
    if model == "OPENCV":
        k1, k2, p1, p2 = extra
        radial = k1 * r2 + k2 * r2 * r2
        return (u * radial + 2.0 * p1 * uv + p2 * (r2 + 2.0 * u2),
                v * radial + 2.0 * p2 * uv + p1 * (r2 + 2.0 * v2))
    raise ValueError(f"camera model {model}: needs pycolmap")


def img_from_cam(source: SourceCamera, xyz: np.ndarray) -> np.ndarray:
    """Pixels ``[..., 2]`` of camera-space points ``[..., 3]`` through ``source``'s distortion."""
    fx, fy, cx, cy, extra = _split(source.model, source.params)
    u, v = xyz[..., 0] / xyz[..., 2], xyz[..., 1] / xyz[..., 2]
    du, dv = _distortion(source.model, extra, u, v)
    return np.stack([fx * (u + du) + cx, fy * (v + dv) + cy], axis=-1)


def cam_from_img(source: SourceCamera, pixels: np.ndarray) -> np.ndarray:
    """Normalised undistorted coordinates ``[..., 2]`` of ``pixels`` ``[..., 2]`` (Newton on the distortion, as
    COLMAP's ``IterativeUndistortion``)."""
    fx, fy, cx, cy, extra = _split(source.model, source.params)
    x0 = np.stack([(pixels[..., 0] - cx) / fx, (pixels[..., 1] - cy) / fy], axis=-1)
    x = x0.copy()
    for _ in range(100):
        u, v = x[..., 0], x[..., 1]
        du, dv = _distortion(source.model, extra, u, v)
        su = np.maximum(np.finfo(np.float64).eps, np.abs(1e-6 * u))
        sv = np.maximum(np.finfo(np.float64).eps, np.abs(1e-6 * v))
        du_uf, dv_uf = _distortion(source.model, extra, u + su, v)
        du_ub, dv_ub = _distortion(source.model, extra, u - su, v)
        du_vf, dv_vf = _distortion(source.model, extra, u, v + sv)
        du_vb, dv_vb = _distortion(source.model, extra, u, v - sv)
        j00 = 1.0 + (du_uf - du_ub) / (2 * su)
        j01 = (du_vf - du_vb) / (2 * sv)
        j10 = (dv_uf - dv_ub) / (2 * su)
        j11 = 1.0 + (dv_vf - dv_vb) / (2 * sv)
        ru, rv = u + du - x0[..., 0], v + dv - x0[..., 1]
        det = j00 * j11 - j01 * j10
        step = np.stack([(j11 * ru - j01 * rv) / det, (j00 * rv - j10 * ru) / det], axis=-1)
        x = x - step
        if float(np.max((step**2).sum(axis=-1), initial=0.0)) < 1e-10:
            break
    return x


def undistort_camera(source: SourceCamera) -> tuple[Tensor, int, int]:
    """COLMAP ``UndistortCamera`` with its default options: ``(K [3, 3] float64, width, height)``."""
    fx, fy, cx, cy, _ = _split(source.model, source.params)
    w, h = source.width, source.height
    if source.model not in PINHOLE_MODELS:
        ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5

        def undistorted(px: np.ndarray, py: np.ndarray) -> np.ndarray:
            uv = cam_from_img(source, np.stack(np.broadcast_arrays(px, py), axis=-1))
            return np.stack([fx * uv[..., 0] + cx, fy * uv[..., 1] + cy], axis=-1)

        left, right = undistorted(0.5, ys)[:, 0], undistorted(w - 0.5, ys)[:, 0]
        top, bottom = undistorted(xs, 0.5)[:, 1], undistorted(xs, h - 0.5)[:, 1]
        max_scale_x = max(cx / (cx - left.max()), (w - 0.5 - cx) / (right.min() - cx))
        max_scale_y = max(cy / (cy - top.max()), (h - 0.5 - cy) / (bottom.min() - cy))
        scale_x = min(max(1.0 / max_scale_x, 0.2), 2.0)
        scale_y = min(max(1.0 / max_scale_y, 0.2), 2.0)
        new_w, new_h = int(max(1.0, scale_x * w)), int(max(1.0, scale_y * h))
        cx, cy = cx * new_w / w, cy * new_h / h
        w, h = new_w, new_h
    k = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return k, w, h


def remap_grid(source: SourceCamera) -> Tensor:
    """Sampling grid ``[H', W', 2]`` from the undistorted image to ``source``'s (:func:`data.undistort.remap_grid`)."""
    k, width, height = undistort_camera(source)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    k_np = k.numpy()
    rays = np.stack([(u - k_np[0, 2]) / k_np[0, 0], (v - k_np[1, 2]) / k_np[1, 1], np.ones_like(u)], axis=-1)
    pixels = img_from_cam(source, rays)
    grid = np.stack([2.0 * pixels[..., 0] / source.width - 1.0, 2.0 * pixels[..., 1] / source.height - 1.0], -1)
    return torch.from_numpy(grid.astype(np.float32))


class FallbackImageCache(ImageCache):
    """:class:`data.dataset.ImageCache` with the undistortion above instead of pycolmap's."""

    def _remap_grid(self, source: SourceCamera) -> Tensor:
        return remap_grid(source)


# ----- the text files ----------------------------------------------------------------------------------------------
def _data_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise DatasetError(path, "file missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"cannot read: {e}") from None


def _floats(path: Path, line_no: int, values: list[str]) -> list[float]:
    try:
        out = [float(v) for v in values]
    except ValueError:
        raise DatasetError(path, f"line {line_no}: expected numbers, got {' '.join(values)!r}") from None
    if not all(np.isfinite(out)):
        raise DatasetError(path, f"line {line_no}: non-finite number")
    return out


def read_cameras_text(path: Path) -> dict[int, SourceCamera]:
    cameras: dict[int, SourceCamera] = {}
    for i, line in enumerate(_data_lines(path), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 4:
            raise DatasetError(path, f"line {i}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        model = parts[1]
        check_model(model, path.parent / f"cameras (camera {parts[0]})")
        if model not in FALLBACK_MODELS:
            raise DatasetError(path, f"camera {parts[0]}: {model} needs pycolmap (not installed)")
        params = _floats(path, i, parts[4:])
        if len(params) != _NUM_PARAMS[model]:
            raise DatasetError(path, f"line {i}: {model} takes {_NUM_PARAMS[model]} parameters, got {len(params)}")
        cameras[int(parts[0])] = SourceCamera(model, tuple(params), int(parts[2]), int(parts[3]))
    return cameras


def _qvec_to_rotmat(q: list[float]) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def read_images_text(path: Path) -> list[tuple[str, int, Tensor]]:
    """``(name, camera_id, world_to_camera [4, 4] float64)`` per image; each image line is followed by its
    POINTS2D line (possibly empty), as COLMAP writes them."""
    lines = _data_lines(path)
    images, i = [], 0
    while i < len(lines):
        parts = lines[i].split()
        i += 1
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 10:
            raise DatasetError(path, f"line {i}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        values = _floats(path, i, parts[1:8])
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :3] = torch.from_numpy(_qvec_to_rotmat(values[:4]))
        w2c[:3, 3] = torch.tensor(values[4:7], dtype=torch.float64)
        images.append((" ".join(parts[9:]), int(parts[8]), w2c))
        i += 1  # the POINTS2D line
    return images


def read_points_text(path: Path) -> PointCloud | None:
    xyz, rgb = [], []
    for i, line in enumerate(_data_lines(path), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 8:
            raise DatasetError(path, f"line {i}: expected POINT3D_ID X Y Z R G B ERROR TRACK[]")
        values = _floats(path, i, parts[1:7])
        xyz.append(values[:3])
        rgb.append(values[3:6])
    if not xyz:
        return None
    return PointCloud(torch.tensor(xyz, dtype=torch.float32), torch.tensor(rgb, dtype=torch.float32) / 255.0)


def read_colmap_text_dataset(root: Path, options: DatasetOptions) -> SceneDataset:
    """A COLMAP text dataset as :func:`data.colmap.read_colmap_dataset` reads it, without pycolmap."""
    model_dir = find_colmap_model(root)
    if model_dir is None:
        raise DatasetError(root, "no COLMAP model (sparse/0/cameras.bin or cameras.txt)")
    for stem in ("cameras", "images", "points3D"):
        if not (model_dir / f"{stem}.txt").is_file():
            raise DatasetError(model_dir, f"COLMAP model incomplete or binary: {stem}.txt missing (binary models "
                                          "need pycolmap)")
    cameras = read_cameras_text(model_dir / "cameras.txt")
    images = read_images_text(model_dir / "images.txt")
    if not images:
        raise DatasetError(model_dir, "empty COLMAP model: no images")
    images_dir, downscale = find_images_dir(root, options)
    frames = []
    for name, camera_id, w2c in images:
        if camera_id not in cameras:
            raise DatasetError(model_dir / "images.txt", f"image {name}: unknown camera {camera_id}")
        path = images_dir / name
        width, height = image_size(path)
        source = cameras[camera_id]
        if (width, height) != (source.width, source.height):
            source = source.scaled_to(width, height)
        k, pw, ph = undistort_camera(source)
        camera = Camera(w2c, k, pw, ph)
        if downscale > 1:
            camera = camera.scaled(1.0 / downscale)
        frames.append(Frame(name, path, camera, None if source.model in PINHOLE_MODELS else source))
    train, test = split_frames(frames, options.test_every)
    points = read_points_text(model_dir / "points3D.txt")
    return SceneDataset(root, "colmap", train, test, points, options.background, FallbackImageCache())
