"""Training checkpoints: one named structure, written atomically, loaded without unpickling code."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import atomic_path

CHECKPOINT_VERSION = 1
_OPTIONAL_FIELDS = {"cuda_rng"}


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly where it stopped.

    Attributes:
        step: steps completed.
        params: parameter tensors by gsplat key (means ``[N, 3]``, scales, quats, opacities, sh0, shN).
        optimizers: ``state_dict()`` of each parameter's Adam.
        strategy_state: the densification strategy's state (running gradient sums, counts, scene scale).
        torch_rng: ``torch.get_rng_state()`` (splitting and noise draw from the global generator).
        config: the run's configuration as a JSON-ready dict (compared on resume, never executed).
        elapsed_s: training wall time so far.
        version: checkpoint layout version.
        cuda_rng: ``torch.cuda.get_rng_state()`` of a CUDA run (gsplat's split and MCMC noise draw on the GPU), else
            None. Optional: checkpoints written before it existed load without it.
    """

    step: int
    params: dict[str, Tensor]
    optimizers: dict[str, dict[str, Any]]
    strategy_state: dict[str, Any]
    torch_rng: Tensor
    config: dict[str, Any]
    elapsed_s: float = 0.0
    version: int = CHECKPOINT_VERSION
    cuda_rng: Tensor | None = None


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a killed run leaves the previous checkpoint intact)."""
    payload = {f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(checkpoint)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint (``torch.load(weights_only=True)``: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several kinds for a corrupt file
        raise ValueError(f"{path}: cannot read checkpoint: {e}") from None
    names = {f.name for f in dataclasses.fields(Checkpoint)}
    required = names - _OPTIONAL_FIELDS
    if not isinstance(payload, dict) or not required <= set(payload) <= names:
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a gscache checkpoint (found {found})")
    if payload["version"] != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload['version']}, expected {CHECKPOINT_VERSION}")
    return Checkpoint(**payload)
