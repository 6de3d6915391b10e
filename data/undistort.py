"""Undistortion of COLMAP camera models to pinhole cameras.

The undistorted camera is COLMAP's own choice (``pycolmap.undistort_camera``: same focal length, the image size
and principal point that keep only valid pixels). The pixel mapping comes from the distorted model
(``pycolmap.Camera.img_from_cam``) and the resampling is ``torch.nn.functional.grid_sample`` (bilinear): no OpenCV
dependency, one precomputed grid per camera, and it applies to any float tensor (RGB, alpha, masks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .dataset import DatasetError, SourceCamera

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
DISTORTED_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
SUPPORTED_MODELS = PINHOLE_MODELS + DISTORTED_MODELS
_SINGLE_FOCAL = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")


def check_model(model: str, where: Path) -> None:
    """Raise :class:`DatasetError` naming ``model`` unless it is one we read."""
    if model not in SUPPORTED_MODELS:
        raise DatasetError(where, f"unsupported camera model {model}; supported: {', '.join(SUPPORTED_MODELS)} "
                                  "(undistort the images first, e.g. with colmap image_undistorter)")


def scale_params(model: str, params: tuple[float, ...], sx: float, sy: float) -> tuple[float, ...]:
    """Parameters of ``model`` for an image scaled by ``sx`` horizontally and ``sy`` vertically."""
    p = list(params)
    if model in _SINGLE_FOCAL:  # f, cx, cy, ...
        p[0] *= (sx + sy) / 2
        p[1] *= sx
        p[2] *= sy
    else:  # fx, fy, cx, cy, ...
        p[0] *= sx
        p[1] *= sy
        p[2] *= sx
        p[3] *= sy
    return tuple(p)


def _pycolmap_camera(source: SourceCamera):
    import pycolmap

    return pycolmap.Camera(model=source.model, width=source.width, height=source.height,
                           params=list(source.params))


def pinhole_intrinsics(source: SourceCamera) -> tuple[Tensor, int, int]:
    """The undistorted pinhole camera for ``source``: ``(K [3, 3] float64, width, height)``."""
    if source.model == "SIMPLE_PINHOLE":
        f, cx, cy = source.params[:3]
        fx = fy = f
    elif source.model == "PINHOLE":
        fx, fy, cx, cy = source.params[:4]
    else:
        import pycolmap

        cam = pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), _pycolmap_camera(source))
        k = torch.as_tensor(np.asarray(cam.calibration_matrix()), dtype=torch.float64)
        return k, int(cam.width), int(cam.height)
    k = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return k, source.width, source.height


def remap_grid(source: SourceCamera) -> Tensor:
    """Sampling grid ``[H', W', 2]`` (grid_sample's normalised x, y) from the undistorted image to ``source``'s."""
    k, width, height = pinhole_intrinsics(source)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    k_np = k.numpy()
    rays = np.stack([(u - k_np[0, 2]) / k_np[0, 0], (v - k_np[1, 2]) / k_np[1, 1], np.ones_like(u)], axis=-1)
    pixels = _pycolmap_camera(source).img_from_cam(rays.reshape(-1, 3), check_cheirality=False)
    pixels = np.asarray(pixels, dtype=np.float64).reshape(height, width, 2)
    grid = np.stack([2.0 * pixels[..., 0] / source.width - 1.0, 2.0 * pixels[..., 1] / source.height - 1.0], -1)
    return torch.from_numpy(grid.astype(np.float32))


def apply_remap(image: Tensor, grid: Tensor) -> Tensor:
    """Resample ``image`` ``[H, W, C]`` at ``grid`` ``[H', W', 2]`` (bilinear): ``[H', W', C]``."""
    x = image.permute(2, 0, 1)[None]
    out = F.grid_sample(x, grid[None].to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0).contiguous()
