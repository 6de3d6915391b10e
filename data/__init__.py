"""gscache's scene files: INRIA ``.ply``, PlayCanvas ``.compressed.ply``, antimatter15 ``.splat``, Niantic ``.spz``.

Every reader returns float32 CPU :class:`renderer.Splats` in gscache's frame (RDF: x right, y down, z forward) and
raises :class:`SceneFormatError` with a one-line message naming the file and the problem.
"""

from .assets import ASSETS_DIR, default_scene_path
from .compressed_ply import read_compressed_ply
from .errors import SceneFormatError
from .ply import read_ply, write_ply
from .scene_io import (
    SceneInfo,
    SceneLoad,
    convert_scene,
    detect_format,
    load_scene,
    load_scene_report,
    save_scene,
    scene_info,
)
from .splat_format import read_splat, write_splat
from .spz import read_spz

__all__ = [
    "ASSETS_DIR", "default_scene_path",
    "SceneFormatError", "SceneInfo", "SceneLoad", "convert_scene", "detect_format", "load_scene", "load_scene_report",
    "read_compressed_ply", "read_ply", "read_spz", "read_splat", "save_scene", "scene_info", "write_ply", "write_splat",
]
