"""Rasterizer backends, registered by name. ``native`` and ``gsplat`` load lazily on first use."""

from __future__ import annotations

from functools import cache

from .base import Backend, BackendRegistry, BackendUnavailableError, StagedBackend
from .torch_backend import TorchBackend


@cache
def default_registry() -> BackendRegistry:
    """The registry with every backend gscache ships (built once, on first use)."""
    registry = BackendRegistry()
    registry.register("torch", TorchBackend)
    return registry


__all__ = ["Backend", "BackendRegistry", "BackendUnavailableError", "StagedBackend", "TorchBackend",
           "default_registry"]
