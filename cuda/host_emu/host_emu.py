"""ctypes driver of the CPU emulation of the native rasterizer (``host_emu.cpp``), for CPU-only checks.

The emulation runs the same per-element math as the CUDA kernels (the shared ``__host__ __device__`` functions in
``cuda/csrc/*.h``), serially, so that the kernels' arithmetic can be compared with the PyTorch reference, forward and
backward, on a machine with ``nvcc`` but no GPU. Everything here works on CPU float32 torch tensors.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import shutil
import subprocess
from pathlib import Path

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
TILE = 16


def build(cache_dir: Path) -> Path:
    """Compile ``host_emu.cpp`` with the host C++ compiler into ``cache_dir``; reuse it while the sources match."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        raise FileNotFoundError("no C++ compiler (c++, g++ or clang++) on PATH")
    sources = [HERE / "host_emu.cpp", *sorted(CSRC.glob("*.h"))]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    lib = Path(cache_dir) / f"libgs_host_emu_{digest}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(".tmp.so")
        subprocess.run([cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-o", str(tmp),
                        str(HERE / "host_emu.cpp")], check=True, capture_output=True, text=True)
        tmp.replace(lib)
    return lib


def _ptrs(*tensors: Tensor | None) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[None if t is None else t.data_ptr() for t in tensors])


def _ints(*values: int) -> ctypes.Array:
    return (ctypes.c_int * len(values))(*values)


def _f32(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float32).contiguous()


class HostEmu:
    """The four stage functions and two backward functions of the native rasterizer, on the CPU."""

    def __init__(self, lib_path: Path) -> None:
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.gs_host_bin_count.restype = ctypes.c_int

    def preprocess(self, means, quats, log_scales, opacity_logits, sh, viewmats, Ks, campos, width, height, near,
                   far, sh_degree, with_colors=True) -> dict[str, Tensor]:
        ins = [_f32(t) for t in (means, quats, log_scales, opacity_logits, sh, viewmats, Ks, campos)]
        c, n, k = viewmats.shape[0], means.shape[0], sh.shape[1]
        out = {"means2d": torch.empty(c, n, 2), "conics": torch.empty(c, n, 3), "depths": torch.empty(c, n),
               "opacities": torch.empty(c, n), "colors": torch.empty(c, n, 3) if with_colors else None,
               "radii": torch.empty(c, n, 2, dtype=torch.int32)}
        self.lib.gs_host_preprocess_forward(
            _ints(c, n, k, sh_degree, width, height), (ctypes.c_float * 2)(near, far), _ptrs(*ins),
            _ptrs(out["means2d"], out["conics"], out["depths"], out["opacities"], out["colors"]),
            ctypes.c_void_p(out["radii"].data_ptr()))
        return out

    def preprocess_backward(self, means, quats, log_scales, opacity_logits, sh, viewmats, Ks, campos, width, height,
                            sh_degree, v_means2d, v_conics, v_depths, v_opacities, v_colors) -> dict[str, Tensor]:
        ins = [_f32(t) for t in (means, quats, log_scales, opacity_logits, sh, viewmats, Ks, campos)]
        grads = [None if g is None else _f32(g) for g in (v_means2d, v_conics, v_depths, v_opacities, v_colors)]
        c, n, k = viewmats.shape[0], means.shape[0], sh.shape[1]
        out = {"means": torch.empty(n, 3), "quats": torch.empty(n, 4), "log_scales": torch.empty(n, 3),
               "opacity_logits": torch.empty(n), "sh": torch.empty(n, k, 3)}
        self.lib.gs_host_preprocess_backward(_ints(c, n, k, sh_degree, width, height), _ptrs(*ins), _ptrs(*grads),
                                             _ptrs(*out.values()))
        return out

    def sort(self, proj: dict[str, Tensor], width: int, height: int) -> tuple[Tensor, Tensor]:
        c, n = proj["depths"].shape
        ins = _ptrs(*(proj[k] for k in ("means2d", "conics", "opacities", "depths")))
        ints = _ints(c, n, width, height)
        radii = ctypes.c_void_p(proj["radii"].data_ptr())
        num_pairs = self.lib.gs_host_bin_count(ints, ins, radii)
        ids = torch.empty(num_pairs, dtype=torch.int32)
        offsets = torch.empty(c * math.ceil(width / TILE) * math.ceil(height / TILE) + 1, dtype=torch.int32)
        self.lib.gs_host_bin_emit(ints, ins, radii, ctypes.c_void_p(ids.data_ptr()),
                                  ctypes.c_void_p(offsets.data_ptr()))
        return ids, offsets

    def blend(self, proj, ids, offsets, width, height, background, with_colors, with_depth) -> dict[str, Tensor]:
        c, n = proj["depths"].shape
        out = {"image": torch.empty(c, height, width, 3) if with_colors else None,
               "alpha": torch.empty(c, height, width, 1), "depth": torch.empty(c, height, width, 1) if with_depth
               else None, "T": torch.empty(c, height, width), "last": torch.empty(c, height, width, dtype=torch.int32)}
        bg = _f32(background)
        ins = _ptrs(proj["means2d"], proj["conics"], proj["opacities"], proj["colors"] if with_colors else None,
                    proj["depths"] if with_depth else None, bg)
        self.lib.gs_host_blend_forward(_ints(c, n, width, height), ins, ctypes.c_void_p(ids.data_ptr()),
                                       ctypes.c_void_p(offsets.data_ptr()),
                                       _ptrs(out["image"], out["alpha"], out["depth"], out["T"]),
                                       ctypes.c_void_p(out["last"].data_ptr()))
        return out

    def blend_backward(self, proj, ids, offsets, width, height, background, fwd, v_image, v_alpha,
                       v_depth) -> dict[str, Tensor]:
        c, n = proj["depths"].shape
        with_colors, with_depth = fwd["image"] is not None, fwd["depth"] is not None
        bg = _f32(background)
        ins = _ptrs(proj["means2d"], proj["conics"], proj["opacities"], proj["colors"] if with_colors else None,
                    proj["depths"] if with_depth else None, bg)
        cot = [None if v is None else _f32(v) for v in (v_image, v_alpha, v_depth)]
        out = {"means2d": torch.zeros(c, n, 2), "conics": torch.zeros(c, n, 3), "opacities": torch.zeros(c, n),
               "colors": torch.zeros(c, n, 3) if with_colors else None,
               "depths": torch.zeros(c, n) if with_depth else None}
        self.lib.gs_host_blend_backward(_ints(c, n, width, height), ins, ctypes.c_void_p(ids.data_ptr()),
                                        ctypes.c_void_p(offsets.data_ptr()), _ptrs(fwd["depth"], fwd["T"]),
                                        ctypes.c_void_p(fwd["last"].data_ptr()), _ptrs(*cot), _ptrs(*out.values()))
        return out

    def subtile_cull(self, footprints: Tensor, rects: Tensor) -> Tensor:
        """The kernels' sub-tile culling next to the per-pixel test, case by case.

        Args:
            footprints: ``[n, 6]`` conic (a, b, c), opacity, centre (mx, my).
            rects: ``[n, 2]`` int first pixel (x0, y0) of an 8 x 4 sub-tile.
        Returns:
            ``[n, 2]`` int32: whether the case is culled, and how many of its 32 pixels the per-pixel test keeps.
        """
        fp = _f32(footprints)
        rect = rects.to("cpu", torch.int32).contiguous()
        out = torch.zeros(len(fp), 2, dtype=torch.int32)
        self.lib.gs_host_subtile_cull(ctypes.c_int(len(fp)), ctypes.c_void_p(fp.data_ptr()),
                                      ctypes.c_void_p(rect.data_ptr()), ctypes.c_void_p(out.data_ptr()))
        return out
