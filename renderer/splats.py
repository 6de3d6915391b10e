"""The scene model: a set of 3D Gaussians stored in their raw (pre-activation) parameters.

Conventions (shared by every part of gscache):
- ``means`` are world positions;
- ``quats`` are rotations as w, x, y, z, not required to be normalised (normalised when activated);
- ``log_scales`` are stored as log and activated with ``exp``;
- ``opacity_logits`` are stored as logits and activated with ``sigmoid``;
- ``sh`` is coefficient-major in memory, ``[N, K, 3]`` with ``K = (degree + 1) ** 2``, ``sh[:, 0]`` is the DC term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SH_COEFFS_FOR_DEGREE = {0: 1, 1: 4, 2: 9, 3: 16}
SH_C0 = 0.28209479177387814


def sh_degree_from_coeffs(num_coeffs: int) -> int:
    """Return the SH degree for ``num_coeffs`` coefficients per channel, or raise ``ValueError``."""
    for degree, count in SH_COEFFS_FOR_DEGREE.items():
        if count == num_coeffs:
            return degree
    raise ValueError(
        f"sh: expected 1, 4, 9 or 16 coefficients per channel (SH degree 0..3), got {num_coeffs}"
    )


def _check_shape(name: str, value: Tensor, expected: tuple[int | None, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` does not have ``expected`` shape (None = any)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    shape = tuple(value.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, shape))
    if not ok:
        pretty = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name}: expected shape {pretty}, got {list(shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {value.dtype}")


@dataclass(frozen=True)
class Splats:
    """A Gaussian-splat scene (raw parameters; see the module docstring for conventions).

    Attributes:
        means: world positions ``[N, 3]``.
        quats: rotations w, x, y, z ``[N, 4]`` (not necessarily unit length).
        log_scales: per-axis log standard deviations ``[N, 3]``.
        opacity_logits: opacity logits ``[N]``.
        sh: spherical-harmonics coefficients, coefficient-major ``[N, K, 3]``, K in {1, 4, 9, 16}.
    """

    means: Tensor  # [N, 3]
    quats: Tensor  # [N, 4]
    log_scales: Tensor  # [N, 3]
    opacity_logits: Tensor  # [N]
    sh: Tensor  # [N, K, 3]

    def __post_init__(self) -> None:
        _check_shape("means", self.means, (None, 3))
        n = self.means.shape[0]
        _check_shape("quats", self.quats, (n, 4))
        _check_shape("log_scales", self.log_scales, (n, 3))
        _check_shape("opacity_logits", self.opacity_logits, (n,))
        _check_shape("sh", self.sh, (n, None, 3))
        sh_degree_from_coeffs(self.sh.shape[1])
        fields = self._fields()
        devices = {t.device for t in fields.values()}
        if len(devices) != 1:
            listing = ", ".join(f"{k} on {v.device}" for k, v in fields.items())
            raise ValueError(f"Splats: all fields must be on one device, got {listing}")
        dtypes = {t.dtype for t in fields.values()}
        if len(dtypes) != 1:
            listing = ", ".join(f"{k} {v.dtype}" for k, v in fields.items())
            raise ValueError(f"Splats: all fields must share one dtype, got {listing}")

    # ----- basic properties -------------------------------------------------------------------
    def _fields(self) -> dict[str, Tensor]:
        return {
            "means": self.means,
            "quats": self.quats,
            "log_scales": self.log_scales,
            "opacity_logits": self.opacity_logits,
            "sh": self.sh,
        }

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_gaussians(self) -> int:
        return len(self)

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_coeffs(self.sh.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def nbytes(self) -> int:
        """Memory held by the parameters, in bytes."""
        return sum(t.numel() * t.element_size() for t in self._fields().values())

    # ----- activated views --------------------------------------------------------------------
    def scales(self) -> Tensor:
        """Activated standard deviations ``[N, 3]`` (``exp`` of the log-scales)."""
        return torch.exp(self.log_scales)

    def opacities(self) -> Tensor:
        """Activated opacities in (0, 1) ``[N]``."""
        return torch.sigmoid(self.opacity_logits)

    def unit_quats(self) -> Tensor:
        """Normalised quaternions w, x, y, z ``[N, 4]``."""
        return torch.nn.functional.normalize(self.quats, dim=-1)

    def rotations(self) -> Tensor:
        """Rotation matrices ``[N, 3, 3]`` from the normalised quaternions."""
        return quat_to_rotmat(self.quats)

    def covariances(self) -> Tensor:
        """World-space 3D covariances ``[N, 3, 3]``: ``R diag(s^2) R^T``."""
        rs = self.rotations() * self.scales()[:, None, :]
        return rs @ rs.transpose(-1, -2)

    def base_colors(self) -> Tensor:
        """View-independent colour from the DC term, ``0.5 + C0 * sh[:, 0]``, clamped at 0 ``[N, 3]``."""
        return (0.5 + SH_C0 * self.sh[:, 0]).clamp_min(0.0)

    # ----- transforms -------------------------------------------------------------------------
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Splats:
        """Return the scene on ``device`` (and ``dtype`` if given)."""
        return Splats(**{k: v.to(device=device, dtype=dtype) for k, v in self._fields().items()})

    def subset(self, index: Tensor | slice) -> Splats:
        """Return the Gaussians selected by ``index`` (bool mask ``[N]``, integer indices or a slice)."""
        if isinstance(index, Tensor) and index.dtype == torch.bool and index.shape != (len(self),):
            raise ValueError(f"subset: boolean mask must have shape [{len(self)}], got {list(index.shape)}")
        return Splats(**{k: v[index] for k, v in self._fields().items()})

    def detach(self) -> Splats:
        return Splats(**{k: v.detach() for k, v in self._fields().items()})

    def with_sh_degree(self, degree: int) -> Splats:
        """Return a copy truncated or zero-padded to SH ``degree`` (0..3)."""
        if degree not in SH_COEFFS_FOR_DEGREE:
            raise ValueError(f"sh_degree: expected 0..3, got {degree}")
        k = SH_COEFFS_FOR_DEGREE[degree]
        have = self.sh.shape[1]
        if k <= have:
            sh = self.sh[:, :k]
        else:
            pad = self.sh.new_zeros((len(self), k - have, 3))
            sh = torch.cat([self.sh, pad], dim=1)
        return Splats(self.means, self.quats, self.log_scales, self.opacity_logits, sh.contiguous())

    # ----- checks -----------------------------------------------------------------------------
    def nonfinite_rows(self) -> Tensor:
        """Boolean mask ``[N]`` of Gaussians with any NaN or Inf parameter."""
        bad = torch.zeros(len(self), dtype=torch.bool, device=self.device)
        for value in self._fields().values():
            bad |= ~torch.isfinite(value.reshape(len(self), -1)).all(dim=1)
        return bad

    def bounds(self) -> tuple[Tensor, Tensor]:
        """Axis-aligned bounds of the means: ``(min [3], max [3])``."""
        if len(self) == 0:
            zeros = self.means.new_zeros(3)
            return zeros, zeros
        return self.means.min(dim=0).values, self.means.max(dim=0).values

    @staticmethod
    def from_activated(
        means: Tensor,  # [N, 3]
        quats: Tensor,  # [N, 4]
        scales: Tensor,  # [N, 3] linear
        opacities: Tensor,  # [N] in (0, 1)
        sh: Tensor,  # [N, K, 3]
    ) -> Splats:
        """Build a scene from activated values (linear scales, opacities in (0, 1))."""
        eps = torch.finfo(opacities.dtype).eps
        op = opacities.clamp(eps, 1.0 - eps)
        return Splats(means, quats, torch.log(scales), torch.log(op) - torch.log1p(-op), sh)

    @staticmethod
    def random(
        n: int,
        sh_degree: int = 0,
        seed: int = 0,
        extent: float = 1.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Splats:
        """A seeded random scene in the cube ``[-extent, extent]^3`` (for tests and benchmarks)."""
        g = torch.Generator().manual_seed(seed)
        k = SH_COEFFS_FOR_DEGREE[sh_degree]
        means = (torch.rand((n, 3), generator=g) * 2 - 1) * extent
        quats = torch.randn((n, 4), generator=g)
        log_scales = torch.rand((n, 3), generator=g) * 2.0 + math.log(0.01 * extent)
        opacity_logits = torch.randn((n,), generator=g)
        sh = torch.randn((n, k, 3), generator=g) * 0.5
        sh[:, 1:] *= 0.3
        fields = (means, quats, log_scales, opacity_logits, sh)
        return Splats(*(t.to(device=device, dtype=dtype) for t in fields))


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` from quaternions w, x, y, z ``[..., 4]`` (normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)
