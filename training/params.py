"""Trainable parameters (a ``ParameterDict`` with gsplat's keys) and their per-parameter Adam optimizers."""

from __future__ import annotations

import torch
from torch import Tensor

from renderer import Splats
from renderer.splats import SH_COEFFS_FOR_DEGREE

from .config import OptimConfig

PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def params_from_splats(splats: Splats, sh_degree: int, device: torch.device) -> torch.nn.ParameterDict:
    """gsplat-style parameters: means ``[N, 3]``, scales (log) ``[N, 3]``, quats ``[N, 4]``, opacities (logits)
    ``[N]``, sh0 ``[N, 1, 3]``, shN ``[N, K-1, 3]`` for ``sh_degree`` (higher bands zero-padded)."""
    s = splats.with_sh_degree(sh_degree).to(device, torch.float32)
    tensors = {"means": s.means, "scales": s.log_scales, "quats": s.quats, "opacities": s.opacity_logits,
               "sh0": s.sh[:, :1], "shN": s.sh[:, 1:]}
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.contiguous().clone()) for k, v in tensors.items()})


def params_from_tensors(tensors: dict[str, Tensor], device: torch.device) -> torch.nn.ParameterDict:
    """Parameters from saved tensors (a checkpoint), checked for gsplat's keys."""
    missing = [k for k in PARAM_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"params: missing {', '.join(missing)}")
    return torch.nn.ParameterDict({k: torch.nn.Parameter(tensors[k].to(device).contiguous()) for k in PARAM_KEYS})


def splats_from_params(params: torch.nn.ParameterDict) -> Splats:
    """The scene the parameters describe (differentiable: shares the parameters' autograd graph)."""
    sh = torch.cat([params["sh0"], params["shN"]], dim=1)
    return Splats(params["means"], params["quats"], params["scales"], params["opacities"], sh)


def base_learning_rates(optim: OptimConfig, scene_scale: float) -> dict[str, float]:
    """Initial learning rate per parameter (means scaled by the scene scale, as 3DGS)."""
    return {"means": optim.means_lr * scene_scale, "scales": optim.scales_lr, "quats": optim.quats_lr,
            "opacities": optim.opacities_lr, "sh0": optim.sh0_lr, "shN": optim.shN_lr}


def make_optimizers(params: torch.nn.ParameterDict, lrs: dict[str, float], eps: float) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter (gsplat's strategies expect exactly one param group each); the fused CUDA kernel (one
    launch per update instead of several) when the parameters are on a GPU."""
    fused = True if params["means"].is_cuda else None
    return {k: torch.optim.Adam([{"params": params[k], "lr": lrs[k], "name": k}], eps=eps, fused=fused)
            for k in PARAM_KEYS}


def means_lr_at(step: int, steps: int, base: float, final_factor: float) -> float:
    """Exponential decay from ``base`` at step 0 to ``base * final_factor`` at ``steps``."""
    return base * final_factor ** (min(step, steps) / steps)


def sh_degree_at(step: int, interval: int, max_degree: int) -> int:
    """SH degree used at ``step``: one more every ``interval`` steps, up to ``max_degree``."""
    return min(step // interval, max_degree)


def num_sh_coeffs(degree: int) -> int:
    return SH_COEFFS_FOR_DEGREE[degree]
