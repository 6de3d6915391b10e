"""The scene a server renders: loading it onto the device and describing it to clients."""

from __future__ import annotations

import itertools
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from data import load_scene
from data.chunk_file import is_chunk_file
from data.scene_cameras import SceneCameras, open_scene_cameras
from renderer import Splats, scene_frame
from renderer.streaming import StreamedScene, StreamingRenderer

from .security import SceneDirectory


@dataclass(frozen=True)
class LoadedScene:
    """A scene on the render device.

    Attributes:
        name: how clients refer to it (its path relative to the served directory, or the file name).
        path: the file it was read from.
        splats: the Gaussians, on the render device; for a chunk file (``.gschunks``) the :class:`StreamedScene`,
            rendered by ``streaming`` under the server's GPU budget.
        center: centre of the central 99% of the means ``(x, y, z)``; extent: their largest side. For a benchmark
            scene (``guitar-g8``): the centre of all copies and the largest side of ONE copy, as ``gscache bench``
            uses them.
        version: increases with every load, so that caches keyed on it see a new scene.
        grid: copies per side of a tiled benchmark scene (1 otherwise); the ``orbit``/``head`` paths depend on it.
    """

    name: str
    path: Path
    splats: Splats | StreamedScene
    center: tuple[float, float, float]
    extent: float
    version: int
    grid: int = 1
    streaming: StreamingRenderer | None = None
    capture: SceneCameras | None = None

    def describe(self) -> dict[str, object]:
        """What ``GET /scenes`` and ``POST /scenes/load`` say about it (no absolute paths). ``home``: where a
        client's view starts, the first capture camera (``world_to_camera`` in OpenCV axes, ``fov_x_deg``, the
        capture's ``up`` and the ``target`` its cameras look at) for scenes that carry their capture cameras, else
        absent (frame ``center``/``extent``)."""
        out: dict[str, object] = {"name": self.name, "gaussians": len(self.splats),
                                  "sh_degree": self.splats.sh_degree, "center": list(self.center),
                                  "extent": self.extent, "version": self.version, "grid": self.grid}
        if self.capture is not None:
            first = self.capture.cameras[0].camera
            out["home"] = {"world_to_camera": first.world_to_camera.tolist(),
                           "fov_x_deg": math.degrees(2 * math.atan(first.width / (2 * first.fx))),
                           "up": list(self.capture.up()), "target": self.capture.target().tolist()}
        return out


class SceneStore:
    """The served directory and the current scene. Loads run on the render thread; swaps are atomic."""

    def __init__(self, directory: SceneDirectory, device: torch.device, backend: str = "auto",
                 gpu_budget_mib: float | None = None, lod_threshold_px: float | None = None) -> None:
        self.directory = directory
        self.device = device
        self.backend, self.gpu_budget_mib, self.lod_threshold_px = backend, gpu_budget_mib, lod_threshold_px
        self.current: LoadedScene | None = None
        self._versions = itertools.count(1)
        self._lock = threading.Lock()

    def load(self, path: Path, name: str, drop_nonfinite: bool = False) -> LoadedScene:
        """Read ``path`` onto the device and make it the current scene (blocking; call on the render thread).

        A chunk file (``.gschunks``) is not loaded whole: its frames render through a :class:`StreamingRenderer`
        under ``gpu_budget_mib``.

        Raises:
            data.SceneFormatError: the file is unreadable or malformed (a ``ValueError``).
            ValueError: a chunk file without a budget, or with one too small for its largest chunk.
        """
        streaming = None
        if is_chunk_file(path):
            splats = StreamedScene.open(path, self.gpu_budget_mib, self.lod_threshold_px)
            streaming = splats.renderer(self.backend, self.device)
            center, extent = splats.frame()
        else:
            splats = load_scene(path, nonfinite="drop" if drop_nonfinite else "error").to(self.device)
            center, extent = scene_frame(splats)
        center = tuple(center)
        capture = _capture_cameras(path)
        with self._lock:
            scene = LoadedScene(name, path, splats, center, extent, next(self._versions), streaming=streaming,
                                capture=capture)
            self.current = scene
        return scene

    def load_bench(self, scene_id: str, data_dir: Path | None) -> LoadedScene:
        """Build the benchmark scene ``scene_id`` (``guitar-g8``, ...) from ``data_dir`` onto the device and make it
        the current scene (blocking). Its name is the id; centre, extent and grid are those of ``gscache bench``.

        Raises:
            ValueError: a malformed id or an unreadable scene file; FileNotFoundError: the base file is missing.
        """
        from .bench_scenes import resolve_scene

        bench = resolve_scene(scene_id, data_dir, self.device)
        path = bench_scene_file(scene_id, data_dir)
        with self._lock:
            scene = LoadedScene(scene_id, path, bench.splats, bench.center, bench.extent, next(self._versions),
                                bench.grid)
            self.current = scene
        return scene

    def name_for(self, path: Path) -> str:
        """``path`` relative to the served directory when it lies under it, else its file name."""
        try:
            return path.resolve().relative_to(self.directory.root).as_posix()
        except ValueError:
            return path.name


def _capture_cameras(path: Path) -> SceneCameras | None:
    """The scene's capture cameras; a malformed cameras file is logged and ignored (the scene still loads)."""
    try:
        return open_scene_cameras(path)
    except (OSError, ValueError) as err:
        logging.getLogger(__name__).warning("capture cameras of %s ignored: %s", path.name, err)
        return None


def bench_scene_file(scene_id: str, data_dir: Path | None) -> Path:
    """The file a benchmark scene id is built from (``guitar-g8`` -> ``DATA_DIR/guitar.ply``)."""
    from .bench_scenes import parse_scene_id, scene_file

    return scene_file(parse_scene_id(scene_id).base, data_dir)
