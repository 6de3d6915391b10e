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


def step_optimizers(optimizers: dict[str, torch.optim.Adam]) -> None:
    """One Adam update of every parameter with a gradient, then the gradients dropped (``zero_grad(set_to_none)``).

    Fused optimizers (the GPU) are updated by calling the fused kernel directly: ``Optimizer.step`` spends about
    120 us of Python per call under the profiler (hooks, profiler records, group bookkeeping): with one optimizer per
    parameter (what gsplat's strategies expect) ~0.7 ms of host time per training step there, while the kernels take
    ~60 us (a lego step at 200 x 200 on an H200 went from 4.69 to 4.38 ms without the profiler).
    The arithmetic is ``Adam(fused=True).step()``'s exactly: the step counters are raised by one, then
    ``torch._fused_adam_`` with the group's hyper-parameters. A parameter whose state is not initialised yet, and
    every non-fused optimizer, goes through ``Optimizer.step``.
    """
    fused: list[tuple[torch.Tensor, dict, dict]] = []
    for opt in optimizers.values():
        group = opt.param_groups[0]
        param = group["params"][0]
        state = opt.state.get(param)
        if param.grad is None:
            continue
        if (not group.get("fused") or group.get("decoupled_weight_decay") or not state or len(opt.param_groups) != 1
                or len(group["params"]) != 1):
            opt.step()
            opt.zero_grad(set_to_none=True)
            continue
        fused.append((param, group, state))
    if fused:
        torch._foreach_add_([state["step"] for _, _, state in fused], 1)
    for param, group, state in fused:
        beta1, beta2 = group["betas"]
        torch._fused_adam_([param], [param.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
                           amsgrad=group["amsgrad"], lr=group["lr"], beta1=beta1, beta2=beta2,
                           weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                           grad_scale=None, found_inf=None)
        param.grad = None


def means_lr_at(step: int, steps: int, base: float, final_factor: float) -> float:
    """Exponential decay from ``base`` at step 0 to ``base * final_factor`` at ``steps``."""
    return base * final_factor ** (min(step, steps) / steps)


def sh_degree_at(step: int, interval: int, max_degree: int) -> int:
    """SH degree used at ``step``: one more every ``interval`` steps, up to ``max_degree``."""
    return min(step // interval, max_degree)


def num_sh_coeffs(degree: int) -> int:
    return SH_COEFFS_FOR_DEGREE[degree]
