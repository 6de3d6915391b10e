"""Typed training configuration and its named presets.

``TrainConfig`` nests one dataclass per concern. The densification policy is configured by
``DefaultStrategyConfig`` (3DGS adaptive density control) or ``MCMCStrategyConfig`` (3DGS-as-MCMC), whose fields
and defaults are those of gsplat 1.5.3's ``DefaultStrategy`` / ``MCMCStrategy``; ``build()`` makes the gsplat
object. (The configs are ours so that parsing ``gscache`` arguments never imports gsplat, which takes seconds.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro

PresetName = Literal["default", "fast", "cpu", "mcmc", "test"]


@dataclass
class DefaultStrategyConfig:
    """3DGS adaptive density control: gsplat ``DefaultStrategy`` (same fields and defaults)."""

    prune_opa: float = 0.005
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    grow_scale2d: float = 0.05
    prune_scale3d: float = 0.1
    prune_scale2d: float = 0.15
    refine_scale2d_stop_iter: int = 0
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    reset_every: int = 3000
    refine_every: int = 100
    pause_refine_after_reset: int = 0
    absgrad: bool = False
    revised_opacity: bool = False
    verbose: bool = False

    def build(self):
        """The gsplat ``DefaultStrategy``."""
        from gsplat.strategy import DefaultStrategy

        return DefaultStrategy(**dataclasses.asdict(self))


@dataclass
class MCMCStrategyConfig:
    """3DGS-as-MCMC: gsplat ``MCMCStrategy`` (same fields and defaults); needs CUDA in gsplat 1.5.3."""

    cap_max: int = 1_000_000
    noise_lr: float = 5e5
    refine_start_iter: int = 500
    refine_stop_iter: int = 25_000
    refine_every: int = 100
    min_opacity: float = 0.005
    verbose: bool = False

    def build(self):
        """The gsplat ``MCMCStrategy``."""
        from gsplat.strategy import MCMCStrategy

        return MCMCStrategy(**dataclasses.asdict(self))


StrategyConfig = (
    Annotated[DefaultStrategyConfig, tyro.conf.subcommand("default")]
    | Annotated[MCMCStrategyConfig, tyro.conf.subcommand("mcmc")]
)


@dataclass
class DataConfig:
    """Which images to train on."""

    downscale: int = 1
    """Shrink the images by this integer factor (COLMAP images_<N>/ folders are used when present)."""
    test_every: int = 8
    """Hold out every n-th image after sorting by name (0: none); transforms_test.json wins where present."""
    background: tuple[float, float, float] | None = None
    """Render background and RGBA composite colour; white for transforms.json datasets, black for COLMAP if None."""
    images_dir: str | None = None
    """COLMAP image folder under the dataset (found automatically if None)."""


@dataclass
class InitConfig:
    """Initial Gaussians."""

    random_points: int = 100_000
    """Random points when the dataset has no points (NeRF synthetic)."""
    random_extent: float = 1.3
    """Random points are drawn in [-extent, extent]^3."""
    opacity: float = 0.1
    scale_factor: float = 1.0
    """Multiplies the nearest-neighbour scale."""
    outlier_neighbors: int = 20
    """Statistical outlier removal on SfM points: neighbours considered (0 disables)."""
    outlier_std: float = 2.0
    """Statistical outlier removal: std ratio."""


@dataclass
class OptimConfig:
    """Adam learning rates (one optimizer per parameter, as gsplat) and the loss."""

    means_lr: float = 1.6e-4
    """Times the scene scale; decays exponentially to means_lr_final_factor x over the run."""
    means_lr_final_factor: float = 0.01
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    eps: float = 1e-15
    ssim_lambda: float = 0.2
    """loss = (1 - lambda) L1 + lambda (1 - SSIM)."""
    opacity_reg: float = 0.0
    scale_reg: float = 0.0


@dataclass
class TrainConfig:
    """Everything that decides a training run (saved in checkpoints and metrics.json)."""

    steps: int = 30_000
    sh_degree: int = 3
    sh_degree_interval: int = 1000
    """Raise the SH degree used in rendering by one every this many steps."""
    data: DataConfig = field(default_factory=DataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: StrategyConfig = field(default_factory=DefaultStrategyConfig)
    backend: str = "auto"
    """Rasterizer: auto (native on CUDA, else torch), torch, native, or the peer gsplat / gsplat-packed
    (gsplat.rasterization, CUDA)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int = 0
    """torch.set_num_threads for a CPU run (0: PyTorch's default). 1 is much faster on a busy machine."""
    seed: int = 0
    eval_every: int = 7000
    """Evaluate on the held-out images every this many steps (and at the end)."""
    eval_max_frames: int = 0
    """Evaluate on at most this many held-out images (0: all)."""
    save_images: int = 4
    """Comparison PNGs (ground truth | render) written per evaluation."""
    checkpoint_every: int = 1000
    log_every: int = 50
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "sh_degree_interval", "eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree: expected 0..3, got {self.sh_degree}")


def _cpu_preset() -> TrainConfig:
    strategy = DefaultStrategyConfig(refine_start_iter=200, refine_every=100, refine_stop_iter=1500,
                                     reset_every=100_000)
    return TrainConfig(steps=2000, sh_degree_interval=400, data=DataConfig(downscale=2), strategy=strategy,
                       eval_every=500, checkpoint_every=100, log_every=10)


def _test_preset() -> TrainConfig:
    strategy = DefaultStrategyConfig(refine_start_iter=10, refine_every=10, refine_stop_iter=25, reset_every=100_000)
    return TrainConfig(steps=60, sh_degree=1, sh_degree_interval=20, init=InitConfig(random_points=2000),
                       strategy=strategy, eval_every=30, checkpoint_every=20, log_every=10, tensorboard=False,
                       save_images=1)


def preset(name: PresetName) -> TrainConfig:
    """The named preset: ``default`` (3DGS, 30k steps), ``fast`` (7k), ``cpu`` (2k steps at half size, for a CPU),
    ``mcmc`` (MCMCStrategy with its regularisers, CUDA only) or ``test`` (60 tiny steps, one densification at
    step 20)."""
    if name == "default":
        return TrainConfig()
    if name == "fast":
        return TrainConfig(steps=7000, eval_every=7000)
    if name == "cpu":
        return _cpu_preset()
    if name == "mcmc":
        return TrainConfig(init=InitConfig(opacity=0.5, scale_factor=0.1),
                           optim=OptimConfig(opacity_reg=0.01, scale_reg=0.01), strategy=MCMCStrategyConfig())
    if name == "test":
        return _test_preset()
    raise ValueError(f"preset: expected one of default, fast, cpu, mcmc, test, got {name!r}")


def with_overrides(chosen: TrainConfig, given: TrainConfig, base: TrainConfig | None = None) -> TrainConfig:
    """``chosen`` (a preset) with every field of ``given`` that differs from ``base`` (the defaults) applied."""
    base = base if base is not None else TrainConfig()
    return _merge(chosen, given, base)


def _merge(chosen, given, base):
    if type(given) is not type(base):  # e.g. another strategy class: the user picked it
        return given
    if not dataclasses.is_dataclass(given):
        return chosen if given == base else given
    if type(chosen) is not type(given):  # the preset picked another class; keep it unless the user changed fields
        return given if given != base else chosen
    updates = {f.name: _merge(getattr(chosen, f.name), getattr(given, f.name), getattr(base, f.name))
               for f in dataclasses.fields(given) if f.init}
    return dataclasses.replace(chosen, **updates)


def config_dict(config: TrainConfig) -> dict:
    """A JSON-ready dict of ``config`` (the strategy's class name under ``strategy.name``)."""
    out = dataclasses.asdict(config)
    out["strategy"] = {"name": type(config.strategy).__name__.removesuffix("Config"), **out["strategy"]}
    return out
