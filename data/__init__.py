"""gscache's scene files: INRIA ``.ply``, PlayCanvas ``.compressed.ply``, antimatter15 ``.splat``, Niantic ``.spz``.

Every reader returns float32 CPU :class:`renderer.Splats` in gscache's frame (RDF: x right, y down, z forward) and
raises :class:`SceneFormatError` with a one-line message naming the file and the problem.
"""

from .assets import ASSETS_DIR, default_scene_path
from .chunk_file import ChunkFile, ChunkFileInfo, convert_to_chunks, open_chunk_file, write_chunk_file
from .compressed_ply import read_compressed_ply
from .dataset import DatasetError, DatasetOptions, Frame, PointCloud, SceneDataset, SourceCamera, load_dataset
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
    # datasets for training (data.dataset, data.colmap, data.transforms_json; initialisation: data.init_points)
    "DatasetError", "DatasetOptions", "Frame", "PointCloud", "SceneDataset", "SourceCamera", "load_dataset",
    # chunk files for large scenes (data.chunk_file)
    "ChunkFile", "ChunkFileInfo", "convert_to_chunks", "open_chunk_file", "write_chunk_file",
]
