"""Lazy loading of the native CUDA extension (``cuda/csrc``), in one place.

Order: a prebuilt library (``$GSCACHE_NATIVE_LIB`` or ``renderer/native/_gscache_native.so``), else a JIT build with
``torch.utils.cpp_extension.load`` (ninja) into a cache folder keyed by a hash of the sources, the flags, the GPU
architecture and the torch/CUDA versions (so a change to any of them rebuilds), else a clear
:class:`BackendUnavailableError`. Nothing is built and no CUDA call is made at import time.

Environment:
    GSCACHE_NATIVE_LIB: path of a prebuilt library to load instead of building.
    GSCACHE_CACHE_DIR: cache root (default ``~/.cache/gscache``); builds go to ``<root>/native/<name>``.
    GSCACHE_NATIVE_DEBUG=1: debug build (``-O0 -lineinfo``, host and device).
    GSCACHE_NATIVE_SYNC=1: synchronise after every launch so that an error names the op (read by the C++ glue).
    GSCACHE_NATIVE_VERBOSE=1: show the build commands.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import torch

from ..backends.base import BackendUnavailableError

CSRC_DIR = Path(__file__).resolve().parent.parent.parent / "cuda" / "csrc"
_SOURCES = ("preprocess.cu", "binning.cu", "blend.cu", "gl_interop.cu", "preprocess_op.cpp", "binning_op.cpp",
            "blend_op.cpp", "gl_interop_op.cpp", "shared_memory.cpp", "ext.cpp")
_PREBUILT = Path(__file__).resolve().parent / "_gscache_native.so"
_RELEASE_FLAGS = {"cxx": ["-O3"], "cuda": ["-O3", "-lineinfo"]}
_DEBUG_FLAGS = {"cxx": ["-O0", "-g"], "cuda": ["-O0", "-lineinfo", "-Xptxas", "-O0"]}

_lock = threading.Lock()
_loaded: dict[str, str] = {}


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _cache_root() -> Path:
    root = os.environ.get("GSCACHE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "gscache"


def _arch(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def native_build_info(device: torch.device | None = None) -> dict:
    """What a JIT build for ``device`` would use: name (with the hash), sources, flags, architecture, folder."""
    device = device or torch.device("cuda", torch.cuda.current_device())
    flags = _DEBUG_FLAGS if _flag("GSCACHE_NATIVE_DEBUG") else _RELEASE_FLAGS
    arch = _arch(device)
    digest = hashlib.sha256()
    for path in sorted(CSRC_DIR.glob("*")):
        if path.suffix in (".h", ".cuh", ".cu", ".cpp"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    meta = {"flags": flags, "arch": arch, "torch": torch.__version__, "cuda": torch.version.cuda}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    name = f"gscache_native_{digest.hexdigest()[:16]}"
    return {"name": name, "sources": [str(CSRC_DIR / s) for s in _SOURCES],
            "build_dir": str(_cache_root() / "native" / name), **meta}


def _load_prebuilt() -> str | None:
    path = os.environ.get("GSCACHE_NATIVE_LIB") or (str(_PREBUILT) if _PREBUILT.exists() else None)
    if path is None:
        return None
    if not Path(path).exists():
        raise BackendUnavailableError(f"native: GSCACHE_NATIVE_LIB={path} does not exist")
    torch.ops.load_library(path)
    return path


def _jit_build(device: torch.device) -> str:
    from torch.utils import cpp_extension

    if shutil.which("nvcc") is None and cpp_extension.CUDA_HOME is None:
        raise BackendUnavailableError("native: no prebuilt library and no CUDA compiler (nvcc) to build one; "
                                      "install the CUDA toolkit or set GSCACHE_NATIVE_LIB")
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as err:
        raise BackendUnavailableError("native: building needs ninja (pip install ninja)") from err
    info = native_build_info(device)
    build_dir = Path(info["build_dir"])
    build_dir.mkdir(parents=True, exist_ok=True)
    old_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = info["arch"]  # build for the GPU in use only
    try:
        path = cpp_extension.load(name=info["name"], sources=info["sources"], extra_cflags=info["flags"]["cxx"],
                                  extra_cuda_cflags=info["flags"]["cuda"], build_directory=str(build_dir),
                                  verbose=_flag("GSCACHE_NATIVE_VERBOSE"), is_python_module=False)
    except Exception as err:  # compiler errors come as RuntimeError/CalledProcessError
        raise BackendUnavailableError(f"native: building the extension in {build_dir} failed: {err}") from err
    finally:
        if old_arch is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch
    (build_dir / "build_info.json").write_text(json.dumps(info, indent=1))
    return str(path)


def load_native(device: torch.device | None = None):
    """Load (building if needed) the extension and return its op namespace ``torch.ops.gscache``.

    Raises:
        BackendUnavailableError: no CUDA device, no compiler, or the build failed (the message says which).
    """
    if not torch.cuda.is_available():
        raise BackendUnavailableError("native: CUDA is not available (torch.cuda.is_available() is False)")
    with _lock:
        if "path" not in _loaded:
            device = device if device is not None and device.type == "cuda" else torch.device("cuda")
            _loaded["path"] = _load_prebuilt() or _jit_build(device)
    return torch.ops.gscache
