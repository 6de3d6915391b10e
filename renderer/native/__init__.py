"""The ``native`` backend's Python side: lazy build/load of ``cuda/csrc`` and the autograd wrappers of its ops.

Importing this package builds nothing and needs no CUDA; the extension is built or loaded on first use.
"""

from .build import load_native, native_build_info

__all__ = ["load_native", "native_build_info"]
