"""INRIA 3DGS ``.ply``: the layout written by graphdeco-inria's ``GaussianModel.save_ply``.

File layout (binary_little_endian, one ``element vertex`` of float properties, in this order)::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3*(K-1)-1)  opacity  scale_0..2  rot_0..3

- ``f_rest`` is channel-major in the file (all R coefficients, then G, then B) and coefficient-major in memory:
  ``f_rest_{c*(K-1) + (k-1)}`` holds ``sh[:, k, c]``. Its count is 0, 9, 24 or 45 (SH degree 0..3).
- ``opacity`` is a logit, ``scale_*`` are log-scales, ``rot_*`` is an unnormalised quaternion w, x, y, z.
- Normals are written as zeros and ignored on reading; files without ``nx ny nz`` (gsplat's export) load too.

Properties are found by name (``f_rest_*`` sorted numerically), so the order in the file does not matter; other
properties are ignored, except that ``f_dc_3``, ``scale_3``, ``rot_4`` and the like are rejected as malformed.
"""

from __future__ import annotations

import os
import re

import numpy as np

from renderer.splats import SH_COEFFS_FOR_DEGREE, Splats

from ._common import LoadReport, SplatArrays, check_nonfinite_mode, finish_load, splat_arrays
from ._plyheader import PlyElementSpec, read_ply_elements, read_ply_header
from .errors import SceneFormatError

_INDEXED = re.compile(r"^(f_dc|f_rest|scale|rot)_(\d+)$")
_INDEX_LIMITS = {"f_dc": 3, "scale": 3, "rot": 4}
F_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}  # number of f_rest properties -> SH degree


def inria_property_names(sh_degree: int, normals: bool = True) -> list[str]:
    """The INRIA layout's property names, in file order, for SH degree 0..3."""
    rest = 3 * (SH_COEFFS_FOR_DEGREE[sh_degree] - 1)
    return (
        ["x", "y", "z"] + (["nx", "ny", "nz"] if normals else [])
        + [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    )


def read_ply(path: str | os.PathLike[str], nonfinite: str = "error") -> Splats:
    """Read an INRIA-layout 3DGS ``.ply`` into float32 CPU :class:`Splats`.

    Args:
        path: the file.
        nonfinite: ``"error"`` (default) raises on any NaN/Inf value; ``"drop"`` skips those Gaussians and logs
            how many were dropped.

    Returns:
        The scene with N Gaussians and SH degree 0..3 (from the ``f_rest`` count); N may be 0.

    Raises:
        SceneFormatError: missing file, not a PLY, malformed header, truncated data, missing or malformed
            properties, an ``f_rest`` count other than 0/9/24/45, or NaN/Inf values with ``nonfinite="error"``.
    """
    return read_ply_report(path, nonfinite).splats


def read_ply_report(path: str | os.PathLike[str], nonfinite: str = "error") -> LoadReport:
    """:func:`read_ply`, also returning how many Gaussians were dropped for NaN/Inf values."""
    check_nonfinite_mode(nonfinite)
    header = read_ply_header(path)
    vertex = header.element("vertex")
    if vertex is None:
        found = ", ".join(repr(e.name) for e in header.elements) or "none"
        raise SceneFormatError(path, f"no element 'vertex' in the PLY header (elements: {found})")
    if header.element("chunk") is not None and "packed_position" in vertex.names:
        raise SceneFormatError(path, "is a PlayCanvas compressed PLY, not the INRIA layout; "
                                     "read it with read_compressed_ply() or load_scene()")
    names = _layout_names(path, vertex)
    rows = read_ply_elements(path, header)["vertex"]
    values = np.empty((len(rows), len(names)), dtype=np.float32)  # [N, P]
    for i, name in enumerate(names):
        values[:, i] = rows[name]
    columns = {name: values[:, i] for i, name in enumerate(names)}
    return finish_load(path, _arrays_from_values(values, len(names) - 14), columns, nonfinite)


def _layout_names(path: str | os.PathLike[str], vertex: PlyElementSpec) -> list[str]:
    """The INRIA property names (without normals) in our column order, after validating ``vertex``."""
    present = vertex.names
    duplicates = sorted({n for n in present if present.count(n) > 1})
    if duplicates:
        raise SceneFormatError(path, f"property '{duplicates[0]}' appears more than once in element 'vertex'")
    lists = [p.name for p in vertex.properties if p.list_count_type is not None]
    if lists:
        raise SceneFormatError(path, f"property '{lists[0]}' in element 'vertex' is a list, expected a scalar")
    rest = []
    for name in present:
        match = _INDEXED.match(name)
        if match is None:
            continue
        prefix, index = match.group(1), int(match.group(2))
        if prefix == "f_rest":
            rest.append(index)
        elif index >= _INDEX_LIMITS[prefix]:
            last = _INDEX_LIMITS[prefix] - 1
            raise SceneFormatError(path, f"unexpected property '{name}' in element 'vertex' "
                                         f"(the INRIA layout has {prefix}_0..{prefix}_{last})")
    if len(rest) not in F_REST_COUNTS:
        raise SceneFormatError(path, f"element 'vertex' has {len(rest)} f_rest properties, "
                                     "expected 0, 9, 24 or 45 (SH degree 0..3)")
    rest.sort()
    if rest != list(range(len(rest))):
        gaps = sorted(set(range(len(rest))) - set(rest))
        raise SceneFormatError(path, f"f_rest properties must be numbered f_rest_0..f_rest_{len(rest) - 1}, "
                                     f"f_rest_{gaps[0]} is missing")
    names = inria_property_names(F_REST_COUNTS[len(rest)], normals=False)
    missing = [n for n in names if n not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SceneFormatError(path, f"property '{missing[0]}' missing from element 'vertex'{more}")
    return names


def _arrays_from_values(values: np.ndarray, num_rest: int) -> SplatArrays:
    """Split the float32 columns ``[N, 14 + num_rest]`` (INRIA order without normals) into scene arrays."""
    n = len(values)
    k1 = num_rest // 3  # K - 1
    dc = values[:, 3:6]
    rest = values[:, 6 : 6 + num_rest].reshape(n, 3, k1).transpose(0, 2, 1)  # [N, K-1, 3]
    tail = values[:, 6 + num_rest :]  # opacity, scale_0..2, rot_0..3
    sh = np.concatenate([dc[:, None, :], rest], axis=1)
    return SplatArrays(values[:, 0:3], tail[:, 4:8], tail[:, 1:4], tail[:, 0], sh)


def write_ply(path: str | os.PathLike[str], splats: Splats) -> None:
    """Write ``splats`` as an INRIA-layout binary little-endian ``.ply`` (float32; normals written as zeros).

    Values are written as they are (raw logits, log-scales, unnormalised quaternions), so ``read_ply`` returns
    the same float32 bits. The file is written in place; ``save_scene`` adds the write-then-rename safety.
    """
    from plyfile import PlyData, PlyElement

    arrays = splat_arrays(splats)
    n, k = arrays.sh.shape[0], arrays.sh.shape[1]
    names = inria_property_names(splats.sh_degree)
    rows = np.zeros(n, dtype=np.dtype([(name, "<f4") for name in names]))
    rest = arrays.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))  # channel-major [N, 3*(K-1)]
    columns = {"x": arrays.means[:, 0], "y": arrays.means[:, 1], "z": arrays.means[:, 2]}
    columns["opacity"] = arrays.opacity_logits
    columns.update({f"f_dc_{i}": arrays.sh[:, 0, i] for i in range(3)})
    columns.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
    columns.update({f"scale_{i}": arrays.log_scales[:, i] for i in range(3)})
    columns.update({f"rot_{i}": arrays.quats[:, i] for i in range(4)})
    for name, column in columns.items():
        rows[name] = column
    PlyData([PlyElement.describe(rows, "vertex")], byte_order="<").write(str(path))
