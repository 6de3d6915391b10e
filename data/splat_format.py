"""antimatter15 ``.splat``: 32 bytes per Gaussian, no header, DC colour only.

Row layout (little-endian)::

    float32 x, y, z             position
    float32 sx, sy, sz          linear scale (exp of our log-scales)
    uint8   r, g, b, a          r, g, b = (0.5 + SH_C0 * f_dc) * 255, a = sigmoid(opacity) * 255
    uint8   qw, qx, qy, qz      q / |q| * 128 + 128

The writer orders rows by ``-exp(sum of log-scales) * sigmoid(opacity)`` (big and opaque first, for progressive
loading), as antimatter15's ``convert.py`` does, and rounds to the nearest byte where convert.py truncates.
"""

from __future__ import annotations

import os

import numpy as np

from renderer.splats import Splats

from ._common import (
    LoadReport,
    SplatArrays,
    byte_from_unit,
    check_nonfinite_mode,
    color_from_dc,
    dc_from_color,
    finish_load,
    logit_from_byte,
    read_file_bytes,
    splat_arrays,
)
from .errors import SceneFormatError

SPLAT_ROW = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])


def read_splat(path: str | os.PathLike[str], nonfinite: str = "error") -> Splats:
    """Read an antimatter15 ``.splat`` file into float32 CPU :class:`Splats` (SH degree 0).

    Colours, opacities and rotations come back quantised to 8 bits: ``f_dc = (byte / 255 - 0.5) / SH_C0``,
    opacity logit ``= logit(a / 255)`` with a = 0 and 255 mapped to -+ln(509), quaternion ``(byte - 128) / 128``
    (w, x, y, z, not renormalised).

    Args:
        path: the file.
        nonfinite: ``"error"`` or ``"drop"`` for rows with NaN/Inf positions or non-positive scales.

    Raises:
        SceneFormatError: missing file, a size that is not a multiple of 32 bytes, or NaN/Inf values.
    """
    return read_splat_report(path, nonfinite).splats


def read_splat_report(path: str | os.PathLike[str], nonfinite: str = "error") -> LoadReport:
    """:func:`read_splat`, also returning how many Gaussians were dropped for NaN/Inf values."""
    check_nonfinite_mode(nonfinite)
    data = read_file_bytes(path)
    if len(data) % SPLAT_ROW.itemsize:
        raise SceneFormatError(path, f"size {len(data)} bytes is not a multiple of {SPLAT_ROW.itemsize} "
                                     f"(a .splat file is {SPLAT_ROW.itemsize} bytes per Gaussian)")
    rows = np.frombuffer(data, dtype=SPLAT_ROW)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_scales = np.log(rows["scale"].astype(np.float64))
    arrays = SplatArrays(
        means=rows["position"].astype(np.float32),
        quats=((rows["rotation"].astype(np.float32) - 128.0) / 128.0),
        log_scales=log_scales.astype(np.float32),
        opacity_logits=logit_from_byte(rows["rgba"][:, 3]).astype(np.float32),
        sh=dc_from_color(rows["rgba"][:, None, :3] / 255.0).astype(np.float32),
    )
    return finish_load(path, arrays, {"position": arrays.means, "scale": arrays.log_scales}, nonfinite)


def splat_bytes(splats: Splats) -> bytes:
    """The ``.splat`` encoding of ``splats``: DC colour only, higher SH bands are dropped.

    Rows are sorted by ``-exp(sum of log-scales) * sigmoid(opacity)`` (stable, so ties keep their order).
    """
    a = splat_arrays(splats)
    n = len(a.means)
    opacity = 1.0 / (1.0 + np.exp(-a.opacity_logits.astype(np.float64)))
    importance = np.exp(a.log_scales.astype(np.float64).sum(axis=1)) * opacity
    order = np.argsort(-importance, kind="stable")
    rows = np.empty(n, dtype=SPLAT_ROW)
    rows["position"] = a.means
    rows["scale"] = np.exp(a.log_scales)
    rows["rgba"][:, :3] = byte_from_unit(color_from_dc(a.sh[:, 0, :].astype(np.float64)))
    rows["rgba"][:, 3] = byte_from_unit(opacity)
    q = a.quats.astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    unit = np.divide(q, norm, out=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)), where=norm > 0)
    rows["rotation"] = np.clip(np.rint(unit * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return rows[order].tobytes()


def write_splat(path: str | os.PathLike[str], splats: Splats) -> None:
    """Write ``splats`` as an antimatter15 ``.splat`` file.

    The format holds only the DC colour: a scene with SH degree > 0 loses its higher bands (``sh[:, 1:]``).
    Opacity and colour are quantised to 8 bits, rotations to 8 bits per normalised component. The file is
    written in place; ``save_scene`` adds the write-then-rename safety.
    """
    data = splat_bytes(splats)
    with open(path, "wb") as f:
        f.write(data)
