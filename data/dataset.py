"""Posed-image datasets for training: the shared types, the held-out split and the lazy image cache.

A dataset is read by :func:`load_dataset`, which picks the reader from the folder's content:

- a COLMAP model (``sparse/0/``, ``sparse/`` or the folder itself holding ``cameras.{bin,txt}``), see
  :mod:`data.colmap`;
- ``transforms_train.json`` (NeRF-synthetic) or ``transforms.json`` (instant-ngp / nerfstudio), see
  :mod:`data.transforms_json`.

Every camera is a pinhole :class:`renderer.Camera` in OpenCV axes; distorted inputs are undistorted when their
images are loaded (:mod:`data.undistort`). Images are decoded on first use and kept in memory as float32
``[H, W, 3]`` tensors in [0, 1].
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from renderer import Camera


class DatasetError(ValueError):
    """A dataset cannot be read; the one-line message names the file (or field) and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(problem.split())
        super().__init__(f"{self.path}: {self.problem}")


@dataclass(frozen=True)
class DatasetOptions:
    """How to read a dataset.

    Attributes:
        downscale: integer factor to shrink the images by (a COLMAP ``images_<downscale>/`` folder is used
            as is when present).
        test_every: hold out every n-th image after sorting by name (0: no held-out images); ignored where the
            dataset names its test images (``transforms_test.json``).
        background: RGB in [0, 1] that RGBA images are composited onto.
        images_dir: COLMAP image folder name under the dataset root; found automatically when None.
    """

    downscale: int = 1
    test_every: int = 8
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    images_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.downscale, int) or self.downscale < 1:
            raise ValueError(f"downscale: expected an integer >= 1, got {self.downscale!r}")
        if self.test_every < 0:
            raise ValueError(f"test_every: expected >= 0, got {self.test_every}")
        if len(self.background) != 3 or not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"background: expected 3 values in [0, 1], got {self.background}")


@dataclass(frozen=True)
class SourceCamera:
    """A camera as the image file saw it, before undistortion (COLMAP model names and parameter order).

    Attributes:
        model: COLMAP model name, e.g. ``"SIMPLE_RADIAL"``.
        params: the model's parameters in COLMAP order (pixels of an image of ``width`` x ``height``).
        width, height: image size the parameters refer to.
    """

    model: str
    params: tuple[float, ...]
    width: int
    height: int

    def scaled_to(self, width: int, height: int) -> SourceCamera:
        """The same camera for an image of ``width`` x ``height`` (focal lengths and principal point scaled)."""
        from .undistort import scale_params

        return SourceCamera(self.model, scale_params(self.model, self.params, width / self.width,
                                                     height / self.height), width, height)


@dataclass(frozen=True)
class Frame:
    """One posed image.

    Attributes:
        name: image name (relative path in the dataset), used for sorting and file names.
        image_path: the image file.
        camera: the pinhole camera the training image is rendered with (after undistortion and downscaling).
        source: the file's camera when it must be undistorted first, else None.
    """

    name: str
    image_path: Path
    camera: Camera
    source: SourceCamera | None = None


@dataclass(frozen=True)
class PointCloud:
    """Sparse points (SfM or given).

    Attributes:
        xyz: positions ``[P, 3]`` float32.
        rgb: colours in [0, 1] ``[P, 3]`` float32.
    """

    xyz: Tensor  # [P, 3]
    rgb: Tensor  # [P, 3]

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


@dataclass
class SceneDataset:
    """Train and held-out frames with their images (loaded lazily and cached).

    Attributes:
        root: the dataset folder.
        kind: ``"colmap"``, ``"nerf_synthetic"`` or ``"transforms"``.
        train, test: the frames of each split.
        points: sparse points for initialisation, None where the dataset has none.
        background: RGB that RGBA images were composited onto (also the render background in training).
    """

    root: Path
    kind: str
    train: list[Frame]
    test: list[Frame]
    points: PointCloud | None
    background: tuple[float, float, float]
    images: ImageCache = field(default_factory=lambda: ImageCache())

    def image(self, frame: Frame) -> Tensor:
        """The frame's image ``[H, W, 3]`` float32 in [0, 1], matching ``frame.camera``."""
        return self.images.get(frame, self.background)

    def camera_extent(self) -> float:
        """Largest distance of a training camera from the cameras' mean centre (gsplat's ``scene_scale``)."""
        centres = torch.stack([f.camera.position.to(torch.float64) for f in self.train])
        return float((centres - centres.mean(dim=0)).norm(dim=-1).max())


class ImageCache:
    """Decodes, undistorts and resizes each frame's image on first use and keeps the result."""

    def __init__(self) -> None:
        self._images: dict[str, Tensor] = {}
        self._remaps: dict[SourceCamera, Tensor] = {}

    def __len__(self) -> int:
        return len(self._images)

    def get(self, frame: Frame, background: tuple[float, float, float]) -> Tensor:
        key = str(frame.image_path)
        if key not in self._images:
            self._images[key] = self._load(frame, background)
        return self._images[key]

    def _load(self, frame: Frame, background: tuple[float, float, float]) -> Tensor:
        from .images import read_image_rgb, resize_image
        from .undistort import apply_remap

        image = read_image_rgb(frame.image_path, background)  # [H, W, 3]
        src = frame.source
        if src is not None:
            if (image.shape[1], image.shape[0]) != (src.width, src.height):
                raise DatasetError(frame.image_path, f"image is {image.shape[1]}x{image.shape[0]}, expected "
                                                     f"{src.width}x{src.height} like the other images of its camera")
            if src not in self._remaps:
                self._remaps[src] = self._remap_grid(src)
            image = apply_remap(image, self._remaps[src])
        return resize_image(image, frame.camera.width, frame.camera.height, frame.image_path)

    def _remap_grid(self, source: SourceCamera) -> Tensor:
        """The undistortion's sampling grid ``[H', W', 2]`` for ``source`` (:func:`data.undistort.remap_grid`)."""
        from .undistort import remap_grid

        return remap_grid(source)


def split_frames(frames: list[Frame], test_every: int) -> tuple[list[Frame], list[Frame]]:
    """Sort by name and hold out every ``test_every``-th frame (index % n == 0, as 3DGS and gsplat): (train, test)."""
    ordered = sorted(frames, key=lambda f: f.name)
    if test_every <= 0:
        return ordered, []
    test = [f for i, f in enumerate(ordered) if i % test_every == 0]
    train = [f for i, f in enumerate(ordered) if i % test_every != 0]
    return train, test


def load_dataset(path: str | os.PathLike[str], options: DatasetOptions | None = None) -> SceneDataset:
    """Read a COLMAP or ``transforms.json`` dataset from the folder ``path`` (see the module docstring).

    Raises:
        DatasetError: no known layout in ``path``, or a file of it is missing or malformed.
    """
    from .colmap import find_colmap_model, read_colmap_dataset
    from .transforms_json import find_transforms, read_transforms_dataset

    root = Path(path)
    options = options or DatasetOptions()
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found")
    if find_transforms(root) is not None:
        return read_transforms_dataset(root, options)
    if find_colmap_model(root) is not None:
        return read_colmap_dataset(root, options)
    raise DatasetError(root, "no dataset found: expected a COLMAP model (sparse/0/cameras.bin or .txt) or "
                             "transforms_train.json / transforms.json")
