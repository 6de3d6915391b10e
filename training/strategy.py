"""Densification through gsplat's strategy objects (``DefaultStrategy``, ``MCMCStrategy``).

The strategies read an ``info`` dict shaped like gsplat's rasterization ``meta``; :func:`strategy_info` builds it
from our ``Projected`` (dense, not packed): ``means2d`` ``[C, N, 2]`` in pixels (its gradient is what ADC
accumulates), ``radii`` ``[C, N, 2]``, ``width``, ``height``, ``n_cameras`` and ``gaussian_ids`` (None: dense). With
the ``gsplat`` backends ``info`` is gsplat's own ``meta`` (packed when ``gaussian_ids`` is a tensor).
"""

from __future__ import annotations

from typing import Any

import torch

from renderer import Projected

from .config import DefaultStrategyConfig, MCMCStrategyConfig

Strategy = Any  # gsplat.strategy.DefaultStrategy | gsplat.strategy.MCMCStrategy


def strategy_info(projected: Projected, width: int, height: int) -> dict[str, Any]:
    """gsplat's ``info`` for the strategies, from our preprocess output."""
    return {"means2d": projected.means2d, "radii": projected.radii, "width": width, "height": height,
            "n_cameras": int(projected.means2d.shape[0]), "gaussian_ids": None}


def build_strategy(config: DefaultStrategyConfig | MCMCStrategyConfig, device: torch.device) -> Strategy:
    """The gsplat strategy for ``config``, checked to run on ``device``."""
    try:
        strategy = config.build()
    except ImportError as e:
        raise ValueError(f"strategy: gsplat is needed for training ({e}); install gscache[train]") from None
    check_strategy(strategy, device)
    return strategy


def check_strategy(strategy: Strategy, device: torch.device) -> None:
    """Raise ``ValueError`` when ``strategy`` cannot run on ``device``."""
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    if isinstance(strategy, MCMCStrategy) and device.type != "cuda":
        raise ValueError("strategy: MCMCStrategy needs CUDA (gsplat 1.5.3's relocation and noise ops are CUDA "
                         "kernels); use the default strategy (DefaultStrategy) on the CPU")
    if not isinstance(strategy, DefaultStrategy | MCMCStrategy):
        raise ValueError(f"strategy: expected DefaultStrategy or MCMCStrategy, got {type(strategy).__name__}")
    # absgrad (DefaultStrategy) is checked against the backend by training.rasterize.Rasterizer


def initial_state(strategy: Strategy, scene_scale: float) -> dict[str, Any]:
    from gsplat.strategy import DefaultStrategy

    if isinstance(strategy, DefaultStrategy):
        return strategy.initialize_state(scene_scale=scene_scale)
    return strategy.initialize_state()


def pre_backward(strategy: Strategy, params, optimizers, state: dict[str, Any], step: int,
                 info: dict[str, Any]) -> None:
    from gsplat.strategy import DefaultStrategy

    if isinstance(strategy, DefaultStrategy):
        strategy.step_pre_backward(params, optimizers, state, step, info)


def post_backward(strategy: Strategy, params, optimizers, state: dict[str, Any], step: int, info: dict[str, Any],
                  means_lr: float) -> None:
    """Densify / prune (Default) or relocate and add noise (MCMC) after the optimizer step."""
    from gsplat.strategy import DefaultStrategy

    if isinstance(strategy, DefaultStrategy):
        packed = info.get("gaussian_ids") is not None  # gsplat's packed meta: [nnz] layout
        strategy.step_post_backward(params, optimizers, state, step, info, packed=packed)
    else:
        strategy.step_post_backward(params, optimizers, state, step, info, lr=means_lr)
