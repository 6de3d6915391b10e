"""COLMAP sparse models (binary or text) read through pycolmap, as a :class:`SceneDataset`.

Layout: ``<root>/sparse/0/{cameras,images,points3D}.{bin,txt}`` (or ``<root>/sparse/`` or ``<root>`` itself) and
the images in ``<root>/images/`` (``images_<downscale>/`` is used when it exists, else the only ``images_*``
folder). Poses are COLMAP's world-to-camera (OpenCV axes), so they are used as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from renderer import Camera

from .dataset import DatasetError, DatasetOptions, Frame, PointCloud, SceneDataset, SourceCamera, split_frames
from .images import image_size
from .undistort import DISTORTED_MODELS, check_model, pinhole_intrinsics

_MODEL_FILES = ("cameras.bin", "cameras.txt")


def find_colmap_model(root: Path) -> Path | None:
    """The folder holding the COLMAP model under ``root`` (``sparse/0``, ``sparse`` or ``root``), or None."""
    for candidate in (root / "sparse" / "0", root / "sparse", root):
        if any((candidate / name).is_file() for name in _MODEL_FILES):
            return candidate
    return None


def find_images_dir(root: Path, options: DatasetOptions) -> tuple[Path, int]:
    """The image folder and the downscale factor still to apply to its images."""
    if options.images_dir is not None:
        folder = root / options.images_dir
        if not folder.is_dir():
            raise DatasetError(folder, "images folder not found (images_dir)")
        return folder, options.downscale
    if options.downscale > 1 and (root / f"images_{options.downscale}").is_dir():
        return root / f"images_{options.downscale}", 1
    if (root / "images").is_dir():
        return root / "images", options.downscale
    others = sorted((p for p in root.glob("images_*") if p.is_dir() and re.fullmatch(r"images_\d+", p.name)),
                    key=lambda p: int(p.name.split("_")[1]))
    if others:
        return others[0], options.downscale
    raise DatasetError(root, "no images folder (expected images/ or images_<N>/)")


def read_colmap_model(model_dir: Path):
    """``pycolmap.Reconstruction`` of ``model_dir``, with errors turned into :class:`DatasetError`."""
    import pycolmap

    for stem in ("cameras", "images", "points3D"):
        if not any((model_dir / f"{stem}.{ext}").is_file() for ext in ("bin", "txt")):
            raise DatasetError(model_dir, f"COLMAP model incomplete: {stem}.bin or {stem}.txt missing")
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # noqa: BLE001 - pycolmap raises several kinds; all mean a malformed model
        raise DatasetError(model_dir, f"cannot read COLMAP model: {e}") from None
    if len(rec.images) == 0:
        raise DatasetError(model_dir, "empty COLMAP model: no images")
    return rec


def _world_to_camera(image) -> torch.Tensor:
    cfw = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world  # method since 3.12
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3] = torch.as_tensor(np.asarray(cfw.matrix()), dtype=torch.float64)
    return w2c


def _frame(image, cam, images_dir: Path, model_dir: Path, downscale: int) -> Frame:
    path = images_dir / image.name
    model = cam.model.name
    check_model(model, model_dir / f"cameras (camera {cam.camera_id})")
    width, height = image_size(path)
    source = SourceCamera(model, tuple(float(p) for p in cam.params), int(cam.width), int(cam.height))
    if (width, height) != (source.width, source.height):
        source = source.scaled_to(width, height)
    k, pw, ph = pinhole_intrinsics(source)
    camera = Camera(_world_to_camera(image), k, pw, ph)
    if downscale > 1:
        camera = camera.scaled(1.0 / downscale)
    return Frame(image.name, path, camera, source if model in DISTORTED_MODELS else None)


def read_colmap_dataset(root: Path, options: DatasetOptions) -> SceneDataset:
    """Read the COLMAP dataset in ``root`` (see the module docstring)."""
    model_dir = find_colmap_model(root)
    if model_dir is None:
        raise DatasetError(root, "no COLMAP model (sparse/0/cameras.bin or cameras.txt)")
    rec = read_colmap_model(model_dir)
    images_dir, downscale = find_images_dir(root, options)
    frames = [_frame(im, rec.cameras[im.camera_id], images_dir, model_dir, downscale)
              for im in rec.images.values()]
    train, test = split_frames(frames, options.test_every)
    return SceneDataset(root, "colmap", train, test, _points(rec), options.background)


def _points(rec) -> PointCloud | None:
    if len(rec.points3D) == 0:
        return None
    pts = list(rec.points3D.values())
    xyz = torch.tensor(np.stack([p.xyz for p in pts]), dtype=torch.float32)
    rgb = torch.tensor(np.stack([p.color for p in pts]), dtype=torch.float32) / 255.0
    return PointCloud(xyz, rgb)
