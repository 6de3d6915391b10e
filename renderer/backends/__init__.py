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
    registry.register("native", lambda: __import__(f"{__name__}.native_backend", fromlist=["_"]).NativeBackend())
    registry.register("gsplat", lambda: _gsplat_backend(packed=False))
    registry.register("gsplat-unpacked", lambda: _gsplat_backend(packed=False))
    registry.register("gsplat-packed", lambda: _gsplat_backend(packed=True))
    return registry


def _gsplat_backend(packed: bool) -> Backend:
    """The gsplat adapter, imported on first use (gsplat itself is imported only when it renders)."""
    from .gsplat_backend import GsplatBackend

    return GsplatBackend(packed=packed)


__all__ = ["Backend", "BackendRegistry", "BackendUnavailableError", "StagedBackend", "TorchBackend",
           "default_registry"]
