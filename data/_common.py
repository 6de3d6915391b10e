"""Helpers shared by the scene readers and writers: file opening, numpy <-> Splats, the NaN/Inf policy."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from renderer.splats import SH_C0, Splats

from .errors import SceneFormatError

NonFinite = Literal["error", "drop"]
NONFINITE_MODES: tuple[str, ...] = ("error", "drop")

# logit(1 - 0.5/255) = ln(509): the opacity logit we give an 8-bit alpha of 255 (and minus it for 0), where the
# exact inverse would be +-inf. splat-transform's decode of guitar.ply was patched to the same value.
BYTE_LOGIT_LIMIT = math.log(509.0)

_log = logging.getLogger("data")


class SplatArrays(NamedTuple):
    """A scene as float32 numpy arrays, in the conventions of ``renderer.splats``.

    Attributes:
        means: ``[N, 3]``.
        quats: ``[N, 4]`` w, x, y, z.
        log_scales: ``[N, 3]``.
        opacity_logits: ``[N]``.
        sh: ``[N, K, 3]`` coefficient-major.
    """

    means: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4]
    log_scales: np.ndarray  # [N, 3]
    opacity_logits: np.ndarray  # [N]
    sh: np.ndarray  # [N, K, 3]

    def subset(self, keep: np.ndarray) -> SplatArrays:
        """The rows where the boolean mask ``keep`` ``[N]`` is true."""
        return SplatArrays(*(a[keep] for a in self))

    def to_splats(self) -> Splats:
        """A float32 CPU :class:`Splats` (copies into contiguous tensors)."""
        return Splats(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in self))


def splat_arrays(splats: Splats) -> SplatArrays:
    """The scene's parameters as float32 numpy arrays on the CPU (no copy when already float32 CPU)."""
    cpu = splats.detach().to("cpu", torch.float32)
    return SplatArrays(cpu.means.numpy(), cpu.quats.numpy(), cpu.log_scales.numpy(),
                       cpu.opacity_logits.numpy(), cpu.sh.numpy())


def check_nonfinite_mode(nonfinite: str) -> None:
    """Raise ``ValueError`` unless ``nonfinite`` is ``"error"`` or ``"drop"``."""
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite: expected 'error' or 'drop', got {nonfinite!r}")


def read_file_bytes(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The file's bytes (at most ``limit``), raising :class:`SceneFormatError` when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except FileNotFoundError:
        raise SceneFormatError(path, "file not found") from None
    except IsADirectoryError:
        raise SceneFormatError(path, "is a directory, not a scene file") from None
    except OSError as e:
        raise SceneFormatError(path, f"cannot read the file: {e.strerror or e}") from None


class LoadReport(NamedTuple):
    """What a reader returns before it is reduced to :class:`Splats`.

    Attributes:
        splats: the float32 CPU scene.
        dropped: Gaussians skipped for NaN/Inf values (only with ``nonfinite="drop"``).
    """

    splats: Splats
    dropped: int


def finish_load(
    path: str | os.PathLike[str], arrays: SplatArrays, columns: Mapping[str, np.ndarray], nonfinite: str
) -> LoadReport:
    """Apply the NaN/Inf policy to decoded ``arrays`` (checking ``columns``, rows aligned with them) and wrap up."""
    keep = drop_nonfinite(path, columns, nonfinite)
    if keep is None:
        return LoadReport(arrays.to_splats(), 0)
    return LoadReport(arrays.subset(keep).to_splats(), int((~keep).sum()))


def drop_nonfinite(
    path: str | os.PathLike[str], columns: Mapping[str, np.ndarray], nonfinite: str
) -> np.ndarray | None:
    """Apply the NaN/Inf policy to a scene's raw columns.

    Args:
        path: the file, for messages.
        columns: field name -> array ``[N, ...]`` (names are the file's fields, used in the message).
        nonfinite: ``"error"`` raises :class:`SceneFormatError` naming the count and the fields;
            ``"drop"`` logs the count and returns the mask of rows to keep.

    Returns:
        ``None`` when every value is finite, else the boolean keep-mask ``[N]`` (``"drop"`` only).
    """
    check_nonfinite_mode(nonfinite)
    bad = None
    bad_fields = []
    for name, values in columns.items():
        rows = ~np.isfinite(values.reshape(len(values), int(np.prod(values.shape[1:])))).all(axis=1)
        if rows.any():
            bad_fields.append(name)
            bad = rows if bad is None else bad | rows
    if bad is None:
        return None
    count, total = int(bad.sum()), len(bad)
    fields = ", ".join(bad_fields)
    if nonfinite == "error":
        raise SceneFormatError(
            path, f"{count} of {total} Gaussians have NaN/Inf values (in {fields}); "
            "load with nonfinite='drop' to skip them",
        )
    _log.warning("%s: dropped %d of %d Gaussians with NaN/Inf values (in %s)", Path(path).name, count, total, fields)
    return ~bad


def logit_from_byte(alpha: np.ndarray) -> np.ndarray:
    """Opacity logits ``[N]`` from 8-bit opacities ``[N]`` (value / 255), with 0 and 255 mapped to -+ln(509)."""
    a = np.clip(alpha.astype(np.float64), 0.5, 254.5) / 255.0
    return np.log(a / (1.0 - a))


def byte_from_unit(values: np.ndarray) -> np.ndarray:
    """Round values in [0, 1] to bytes (``round(v * 255)``, clamped)."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def dc_from_color(rgb: np.ndarray) -> np.ndarray:
    """SH DC coefficients from base colours ``0.5 + SH_C0 * f_dc`` (inverse of ``color_from_dc``)."""
    return (rgb - 0.5) / SH_C0


def color_from_dc(f_dc: np.ndarray) -> np.ndarray:
    """The base colour ``0.5 + SH_C0 * f_dc`` of SH DC coefficients (not clamped)."""
    return 0.5 + SH_C0 * f_dc
