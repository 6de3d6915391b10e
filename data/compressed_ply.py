"""PlayCanvas / SuperSplat ``.compressed.ply`` (read only).

Layout: a binary little-endian PLY with

- ``element chunk`` (one row per 256 Gaussians, in order): float ``min_x min_y min_z max_x max_y max_z``,
  ``min_scale_x.. max_scale_z`` (log-scales) and, in newer files, ``min_r min_g min_b max_r max_g max_b``;
- ``element vertex``: uint ``packed_position`` (11-10-11 bits, x in the high bits, as fractions of the chunk's
  min..max), ``packed_rotation`` (smallest-three: 2 bits for the index of the largest of w, x, y, z, then three
  10-bit components in (-1/sqrt2, 1/sqrt2)), ``packed_scale`` (11-10-11 like positions), ``packed_color``
  (8-8-8-8 bits: r, g, b as fractions of the chunk's colour range, a = opacity);
- optionally ``element sh`` with uchar ``f_rest_0..f_rest_{M-1}`` (M = 9, 24 or 45, channel-major as in the
  INRIA layout), decoded as ``(q / 256 - 0.5) * 8`` with q = 0 and 255 mapped to -4 and 4.

The colour is the base colour ``0.5 + SH_C0 * f_dc`` (so ``f_dc = (colour - 0.5) / SH_C0``); without chunk colour
bounds it is the byte / 255 itself. Alpha bytes map to opacity logits ``logit(a / 255)``, with 0 and 255 clamped to
-+ln(509) instead of -+inf (as was done for ``guitar.ply`` in shared data).
"""

from __future__ import annotations

import os

import numpy as np

from renderer.splats import Splats

from ._common import LoadReport, SplatArrays, check_nonfinite_mode, dc_from_color, finish_load, logit_from_byte
from ._plyheader import PlyElementSpec, PlyHeader, read_ply_elements, read_ply_header
from .errors import SceneFormatError

CHUNK_SIZE = 256
CHUNK_BOUNDS = [f"{m}_{a}" for m in ("min", "max") for a in "xyz"]
CHUNK_SCALES = [f"{m}_scale_{a}" for m in ("min", "max") for a in "xyz"]
CHUNK_COLORS = [f"{m}_{c}" for m in ("min", "max") for c in "rgb"]
PACKED = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]


def is_compressed_ply_header(header: PlyHeader) -> bool:
    """Whether a PLY header is the compressed layout (``element chunk``, ``vertex`` with ``packed_position``)."""
    vertex = header.element("vertex")
    return header.element("chunk") is not None and vertex is not None and "packed_position" in vertex.names


def read_compressed_ply(path: str | os.PathLike[str], nonfinite: str = "error") -> Splats:
    """Decode a PlayCanvas ``.compressed.ply`` into float32 CPU :class:`Splats`.

    Args:
        path: the file.
        nonfinite: ``"error"`` or ``"drop"`` for Gaussians whose chunk bounds hold NaN/Inf.

    Returns:
        N Gaussians, SH degree 0, or 1..3 when an ``sh`` element is present.

    Raises:
        SceneFormatError: missing file, malformed or truncated PLY, missing elements or properties, a chunk count
            other than ceil(N / 256), or NaN/Inf values.
    """
    return read_compressed_ply_report(path, nonfinite).splats


def read_compressed_ply_report(path: str | os.PathLike[str], nonfinite: str = "error") -> LoadReport:
    """:func:`read_compressed_ply`, also returning how many Gaussians were dropped for NaN/Inf values."""
    check_nonfinite_mode(nonfinite)
    header = read_ply_header(path)
    _check_layout(path, header)
    elements = read_ply_elements(path, header)
    chunk, vertex = elements["chunk"], elements["vertex"]
    n = len(vertex)
    ci = np.arange(n) // CHUNK_SIZE
    bounds = _columns(chunk, CHUNK_BOUNDS)[ci]  # [N, 6]
    scale_bounds = _columns(chunk, CHUNK_SCALES)[ci]  # [N, 6]
    color = _unpack_8888(vertex["packed_color"])  # [N, 4]
    rgb = color[:, :3]
    if "min_r" in chunk.dtype.names:
        color_bounds = _columns(chunk, CHUNK_COLORS)[ci]
        rgb = _lerp(color_bounds[:, :3], color_bounds[:, 3:], rgb)
    alpha = (vertex["packed_color"] & 0xFF).astype(np.float64)
    sh = dc_from_color(rgb)[:, None, :]
    if "sh" in elements:
        sh = np.concatenate([sh, _decode_sh(elements["sh"])], axis=1)
    means = _lerp(bounds[:, :3], bounds[:, 3:], _unpack_111011(vertex["packed_position"]))
    log_scales = _lerp(scale_bounds[:, :3], scale_bounds[:, 3:], _unpack_111011(vertex["packed_scale"]))
    arrays = SplatArrays(
        means=means.astype(np.float32),
        quats=_unpack_rotation(vertex["packed_rotation"]).astype(np.float32),
        log_scales=log_scales.astype(np.float32),
        opacity_logits=logit_from_byte(alpha).astype(np.float32),
        sh=sh.astype(np.float32),
    )
    columns = {"position bounds": arrays.means, "scale bounds": arrays.log_scales, "colour bounds": arrays.sh}
    return finish_load(path, arrays, columns, nonfinite)


def _check_layout(path: str | os.PathLike[str], header: PlyHeader) -> None:
    """Raise :class:`SceneFormatError` unless ``header`` is a well-formed compressed-PLY header."""
    if header.format != "binary_little_endian":
        raise SceneFormatError(path, f"compressed PLY must be binary_little_endian, got {header.format}")
    chunk, vertex = header.element("chunk"), header.element("vertex")
    for name, element in (("chunk", chunk), ("vertex", vertex)):
        if element is None:
            raise SceneFormatError(path, f"compressed PLY has no element '{name}'")
    _require(path, chunk, CHUNK_BOUNDS + CHUNK_SCALES, "float")
    if "min_r" in chunk.names:
        _require(path, chunk, CHUNK_COLORS, "float")
    _require(path, vertex, PACKED, "uint")
    expected = -(-vertex.count // CHUNK_SIZE)
    if chunk.count != expected:
        raise SceneFormatError(path, f"element 'chunk' has {chunk.count} rows, expected ceil({vertex.count} / "
                                     f"{CHUNK_SIZE}) = {expected}")
    sh = header.element("sh")
    if sh is not None:
        if len(sh.names) not in (9, 24, 45):
            raise SceneFormatError(path, f"element 'sh' has {len(sh.names)} properties, expected 9, 24 or 45")
        _require(path, sh, [f"f_rest_{i}" for i in range(len(sh.names))], "uchar")
        if sh.count != vertex.count:
            raise SceneFormatError(path, f"element 'sh' has {sh.count} rows, expected {vertex.count} (one per vertex)")


def _require(path: str | os.PathLike[str], element: PlyElementSpec, names: list[str], type_name: str) -> None:
    types = {p.name: p.type for p in element.properties}
    aliases = {"float": ("float", "float32"), "uint": ("uint", "uint32"), "uchar": ("uchar", "uint8")}[type_name]
    for name in names:
        if name not in types:
            raise SceneFormatError(path, f"property '{name}' missing from element '{element.name}'")
        if types[name] not in aliases:
            raise SceneFormatError(path, f"property '{name}' of element '{element.name}' is {types[name]}, "
                                         f"expected {type_name}")


def _columns(rows: np.ndarray, names: list[str]) -> np.ndarray:
    """The named fields of a structured array as a float64 matrix ``[R, len(names)]``."""
    return np.stack([rows[name].astype(np.float64) for name in names], axis=1)


def _lerp(low: np.ndarray, high: np.ndarray, t: np.ndarray) -> np.ndarray:
    return low * (1.0 - t) + high * t


def _unpack_111011(packed: np.ndarray) -> np.ndarray:
    """Fractions ``[N, 3]`` from 11-10-11-bit words ``[N]`` (first component in the high bits)."""
    p = packed.astype(np.uint32)
    return np.stack([(p >> 21) / 2047.0, ((p >> 11) & 0x3FF) / 1023.0, (p & 0x7FF) / 2047.0], axis=1)


def _unpack_8888(packed: np.ndarray) -> np.ndarray:
    """Fractions ``[N, 4]`` from 8-8-8-8-bit words ``[N]`` (first component in the high byte)."""
    p = packed.astype(np.uint32)
    return np.stack([((p >> s) & 0xFF) / 255.0 for s in (24, 16, 8, 0)], axis=1)


def _unpack_rotation(packed: np.ndarray) -> np.ndarray:
    """Unit quaternions w, x, y, z ``[N, 4]`` from smallest-three words ``[N]``."""
    p = packed.astype(np.uint32)
    norm = np.sqrt(2.0)  # components lie in [-1/sqrt2, 1/sqrt2]
    small = np.stack([(((p >> s) & 0x3FF) / 1023.0 - 0.5) * norm for s in (20, 10, 0)], axis=1)  # [N, 3]
    largest = np.sqrt(np.maximum(0.0, 1.0 - (small * small).sum(axis=1)))
    which = (p >> 30).astype(np.int64)
    out = np.empty((len(p), 4), dtype=np.float64)
    slots = np.arange(4)[None, :]  # the three small components fill the other slots in order
    others = slots[:, :3] + (slots[:, :3] >= which[:, None])
    rows = np.arange(len(p))[:, None]
    out[rows, others] = small
    out[np.arange(len(p)), which] = largest
    return out


def _decode_sh(sh_rows: np.ndarray) -> np.ndarray:
    """Higher SH bands ``[N, K-1, 3]`` from the uchar ``f_rest_*`` element (channel-major in the file)."""
    m = len(sh_rows.dtype.names)
    q = np.stack([sh_rows[f"f_rest_{i}"] for i in range(m)], axis=1).astype(np.float64)  # [N, M]
    unit = np.where(q == 0, 0.0, np.where(q == 255, 1.0, (q + 0.5) / 256.0))
    values = (unit - 0.5) * 8.0
    return values.reshape(len(q), 3, m // 3).transpose(0, 2, 1)
