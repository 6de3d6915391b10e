"""Load, save, convert and describe scene files, whatever their format.

Formats (``SceneFormatName``):

- ``"ply"``: INRIA 3DGS ``.ply`` (read and write), see ``data.ply``;
- ``"compressed_ply"``: PlayCanvas ``.compressed.ply`` (read), see ``data.compressed_ply``;
- ``"splat"``: antimatter15 ``.splat`` (read and write, DC colour only), see ``data.splat_format``;
- ``"spz"``: Niantic ``.spz`` v2-v4 (read), returned in gscache's RDF frame, see ``data.spz``.

Reading picks the format from the file's content (PLY header, SPZ or gzip magic) and falls back on the extension
for ``.splat``, which has no header. Writing picks it from the extension, and always goes through a temporary file in
the destination directory that is renamed over the destination only once complete.
"""

from __future__ import annotations

import gzip
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from renderer.splats import Splats

from ._common import LoadReport, check_nonfinite_mode, read_file_bytes
from ._plyheader import read_ply_header
from .compressed_ply import is_compressed_ply_header, read_compressed_ply_report
from .errors import SceneFormatError
from .ply import read_ply_report, write_ply
from .splat_format import read_splat_report, write_splat
from .spz import SPZ_MAGIC, read_spz_report

SceneFormatName = Literal["ply", "compressed_ply", "splat", "spz"]
READERS: dict[str, Callable[[str | os.PathLike[str], str], LoadReport]] = {
    "ply": read_ply_report, "compressed_ply": read_compressed_ply_report, "splat": read_splat_report,
    "spz": read_spz_report,
}  # fmt: skip
WRITERS: dict[str, Callable[[Path, Splats], None]] = {".ply": write_ply, ".splat": write_splat}


@dataclass(frozen=True)
class SceneInfo:
    """A summary of a scene file.

    Attributes:
        path: the file.
        format: one of ``"ply"``, ``"compressed_ply"``, ``"splat"``, ``"spz"``.
        count: number of Gaussians N.
        sh_degree: SH degree 0..3.
        bounds_min: smallest x, y, z of the means (zeros for an empty scene).
        bounds_max: largest x, y, z of the means.
        nbytes: memory held by the loaded float32 parameters (``Splats.nbytes()``).
        file_bytes: size of the file.
        dropped: Gaussians skipped for NaN/Inf values (only when loaded with ``nonfinite="drop"``).
    """

    path: Path
    format: SceneFormatName
    count: int
    sh_degree: int
    bounds_min: tuple[float, float, float]
    bounds_max: tuple[float, float, float]
    nbytes: int
    file_bytes: int
    dropped: int = 0


class SceneLoad(NamedTuple):
    """A loaded scene with how it was read.

    Attributes:
        splats: the float32 CPU scene (RDF frame).
        format: the detected format.
        dropped: Gaussians skipped for NaN/Inf values (``nonfinite="drop"``).
    """

    splats: Splats
    format: SceneFormatName
    dropped: int


def detect_format(path: str | os.PathLike[str]) -> SceneFormatName:
    """The format of the scene file at ``path``, from its content, or its extension for ``.splat``.

    Raises:
        SceneFormatError: missing file, malformed PLY header, or a format we do not know.
    """
    head = read_file_bytes(path, 64)
    suffix = Path(path).suffix.lower()
    if head.startswith(b"ply\n") or head.startswith(b"ply\r\n") or suffix == ".ply":
        return "compressed_ply" if is_compressed_ply_header(read_ply_header(path)) else "ply"
    if head.startswith(SPZ_MAGIC) or (head.startswith(b"\x1f\x8b") and _gzip_starts_with(path, SPZ_MAGIC)):
        return "spz"
    if suffix == ".splat":
        return "splat"
    if suffix == ".spz":
        return "spz"  # let the SPZ reader name what is wrong with it
    raise SceneFormatError(path, f"unknown scene format (expected .ply, .compressed.ply, .splat or .spz; "
                                 f"the file starts with {head[:8]!r})")


def _gzip_starts_with(path: str | os.PathLike[str], magic: bytes) -> bool:
    try:
        with gzip.open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except (OSError, EOFError):
        return False


def load_scene(path: str | os.PathLike[str], nonfinite: str = "error") -> Splats:
    """Load a scene file of any supported format as float32 CPU :class:`Splats` (RDF frame, y down).

    Args:
        path: ``.ply`` (INRIA or PlayCanvas compressed), ``.splat`` or ``.spz``.
        nonfinite: ``"error"`` (default) rejects NaN/Inf values; ``"drop"`` skips those Gaussians and logs how
            many.

    Raises:
        SceneFormatError: the file is missing, unknown, malformed, truncated or holds NaN/Inf values.
    """
    return load_scene_report(path, nonfinite).splats


def load_scene_report(path: str | os.PathLike[str], nonfinite: str = "error") -> SceneLoad:
    """:func:`load_scene`, also returning the detected format and how many Gaussians were dropped."""
    check_nonfinite_mode(nonfinite)
    fmt = detect_format(path)
    splats, dropped = READERS[fmt](path, nonfinite)
    return SceneLoad(splats, fmt, dropped)


def save_scene(path: str | os.PathLike[str], splats: Splats) -> None:
    """Write ``splats`` as ``.ply`` (INRIA layout, exact) or ``.splat`` (DC only, 8-bit colour), by extension.

    The data goes to a temporary file in the destination directory, which is renamed over ``path`` only when
    complete: on any error no partial file is left and an existing file at ``path`` is untouched.

    Raises:
        SceneFormatError: an extension we cannot write, or the file cannot be written (e.g. missing directory).
    """
    path = Path(path)
    writer = _writer_for(path)
    if not path.parent.is_dir():
        raise SceneFormatError(path, f"cannot write: directory '{path.parent}' does not exist")
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb"):  # created with the default permissions (mkstemp would make it private)
            pass
        writer(tmp, splats)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise SceneFormatError(path, f"cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _writer_for(path: Path) -> Callable[[Path, Splats], None]:
    name = path.name.lower()
    if name.endswith(".compressed.ply"):
        raise SceneFormatError(path, "writing .compressed.ply is not supported (save_scene writes .ply and .splat)")
    writer = WRITERS.get(path.suffix.lower())
    if writer is None:
        raise SceneFormatError(path, f"cannot write '{path.suffix or 'no extension'}' files "
                                     "(save_scene writes .ply and .splat)")
    return writer


def convert_scene(src: str | os.PathLike[str], dst: str | os.PathLike[str], nonfinite: str = "error") -> int:
    """Load ``src`` (any readable format), save it to ``dst`` (``.ply`` or ``.splat``); returns the count written."""
    _writer_for(Path(dst))  # fail before reading a large file
    splats = load_scene(src, nonfinite=nonfinite)
    save_scene(dst, splats)
    return len(splats)


def scene_info(path: str | os.PathLike[str], nonfinite: str = "error") -> SceneInfo:
    """Load the scene at ``path`` and summarise it (see :class:`SceneInfo`)."""
    splats, fmt, dropped = load_scene_report(path, nonfinite)
    low, high = splats.bounds()
    return SceneInfo(
        path=Path(path), format=fmt, count=len(splats), sh_degree=splats.sh_degree,
        bounds_min=tuple(float(v) for v in low), bounds_max=tuple(float(v) for v in high),  # type: ignore[arg-type]
        nbytes=splats.nbytes(), file_bytes=os.path.getsize(path), dropped=dropped,
    )  # fmt: skip
