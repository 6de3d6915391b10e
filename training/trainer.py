"""The training loop: Adam on gsplat-style parameters, L1 + D-SSIM, a gsplat densification strategy, evaluation,
atomic checkpoints and an exactly resumable state, and the final INRIA ``.ply`` plus ``metrics.json``.

Run directory layout: ``config.json``, ``checkpoint.pt`` (latest), ``tb/`` (TensorBoard), ``renders/step_N/*.png``
(ground truth | render), ``scene.ply`` and ``metrics.json`` at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from data import save_scene
from data.dataset import DatasetOptions, SceneDataset, load_dataset
from data.init_points import random_points, remove_outliers, splats_from_points
from data.transforms_json import find_transforms
from renderer import Splats, render

from .atomic import run_lock, write_json_atomic
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, config_dict
from .evaluate import EvalResult, LpipsMetric, evaluate
from .losses import photometric_loss
from .monitor import Monitor, StepStats
from .params import (
    base_learning_rates,
    make_optimizers,
    means_lr_at,
    params_from_splats,
    params_from_tensors,
    sh_degree_at,
    splats_from_params,
)
from .strategy import build_strategy, initial_state, post_backward, pre_backward, strategy_info

# Fields that may differ between a run and its resumption (they do not change the trained parameters).
RESUME_FREE_FIELDS = ("steps", "cpu_threads", "log_every", "tensorboard", "eval_every", "eval_max_frames",
                      "save_images", "checkpoint_every")


@dataclass(frozen=True)
class TrainResult:
    """What a call to :meth:`Trainer.train` did.

    Attributes:
        run_dir: the run directory.
        step: steps completed.
        finished: the run reached ``config.steps`` (and exported the scene and metrics).
        num_gaussians: Gaussians at the end.
        scene_path, metrics_path: the exported files (None unless finished).
        last_eval: the latest evaluation (None if none ran).
        it_per_s: mean training speed of this call.
    """

    run_dir: Path
    step: int
    finished: bool
    num_gaussians: int
    scene_path: Path | None
    metrics_path: Path | None
    last_eval: EvalResult | None
    it_per_s: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but CUDA is not available")
    return torch.device(name)


def open_dataset(data_path: Path, config: TrainConfig) -> SceneDataset:
    """Load the dataset with the config's options (white background for transforms.json, black for COLMAP)."""
    bg = config.data.background
    if bg is None:
        bg = (1.0, 1.0, 1.0) if find_transforms(Path(data_path)) is not None else (0.0, 0.0, 0.0)
    options = DatasetOptions(config.data.downscale, config.data.test_every, tuple(bg), config.data.images_dir)
    return load_dataset(data_path, options)


def initial_splats(dataset: SceneDataset, config: TrainConfig) -> Splats:
    """Gaussians from the dataset's points (outliers removed) or random points where it has none."""
    init = config.init
    points = dataset.points
    if points is None or len(points) == 0:
        points = random_points(init.random_points, init.random_extent, config.seed)
    elif init.outlier_neighbors > 0:
        points = remove_outliers(points, init.outlier_neighbors, init.outlier_std).points
    return splats_from_points(points, config.sh_degree, init.opacity, init.scale_factor)


class Trainer:
    """One training run in ``run_dir`` (fresh, or resumed from its ``checkpoint.pt``)."""

    def __init__(self, config: TrainConfig, data_path: Path, run_dir: Path, console: Console | None = None,
                 dataset: SceneDataset | None = None, resume: bool = False) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.console = console or Console(quiet=True)
        self.device = resolve_device(config.device)
        if self.device.type == "cpu" and config.cpu_threads > 0:
            torch.set_num_threads(config.cpu_threads)
        self.strategy = build_strategy(config.strategy, self.device)
        self.dataset = dataset if dataset is not None else open_dataset(Path(data_path), config)
        if not self.dataset.train:
            raise ValueError(f"{data_path}: no training images")
        self.background = torch.tensor(self.dataset.background, dtype=torch.float32, device=self.device)
        self.scene_scale = max(self.dataset.camera_extent(), 1e-6) * 1.1
        self.base_lrs = base_learning_rates(config.optim, self.scene_scale)
        self.lpips = LpipsMetric()
        self.last_eval: EvalResult | None = None
        self.history: list[dict[str, Any]] = []
        torch.manual_seed(config.seed)
        if resume:
            self._restore(load_checkpoint(self.checkpoint_path, self.device))
        else:
            self.step, self.elapsed_s = 0, 0.0
            self.params = params_from_splats(initial_splats(self.dataset, config), config.sh_degree, self.device)
            self.optimizers = make_optimizers(self.params, self.base_lrs, config.optim.eps)
            self.strategy_state = initial_state(self.strategy, self.scene_scale)
        self.strategy.check_sanity(self.params, self.optimizers)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    # ----- the loop ------------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``config.steps`` (or until ``stop_at`` steps, leaving the run resumable)."""
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / "config.json", config_dict(cfg))
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        start_step, t0 = self.step, time.perf_counter()
        with (run_lock(self.run_dir),
              Monitor(self.console, self.run_dir, cfg.steps, self.step, cfg.tensorboard) as monitor):
            while self.step < end:
                stats = self.train_step(start_step, t0)
                monitor.log_step(stats, write=self.step % cfg.log_every == 0)
                self.maybe_eval(monitor)
                self.maybe_checkpoint(t0)
            if self.step >= cfg.steps and (self.last_eval is None or self.last_eval.step != self.step):
                self.maybe_eval(monitor, force=True)  # e.g. a resumed run already at or past its (new) last step
        seconds = time.perf_counter() - t0
        it_per_s = (self.step - start_step) / seconds if seconds > 0 else 0.0
        self.elapsed_s += seconds
        if self.step < cfg.steps:
            return TrainResult(self.run_dir, self.step, False, self.num_gaussians, None, None, self.last_eval,
                               it_per_s)
        scene_path, metrics_path = self.export(it_per_s)
        return TrainResult(self.run_dir, self.step, True, self.num_gaussians, scene_path, metrics_path,
                           self.last_eval, it_per_s)

    def train_step(self, start_step: int, t0: float) -> StepStats:
        """One optimisation step on one training image; returns its numbers."""
        cfg, step = self.config, self.step
        means_lr = self.set_learning_rates(step)
        sh_degree = sh_degree_at(step, cfg.sh_degree_interval, cfg.sh_degree)
        frame = self.frame_at(step)
        target = self.dataset.image(frame).to(self.device)
        out = render(splats_from_params(self.params), frame.camera, backend=cfg.backend, sh_degree=sh_degree,
                     background=self.background)
        if out.projected is None or out.image is None:
            raise ValueError(f"backend: {cfg.backend!r} does not expose the projected means densification needs")
        info = strategy_info(out.projected, frame.camera.width, frame.camera.height)
        terms = photometric_loss(out.image[0], target, cfg.optim.ssim_lambda)
        loss = terms.total + self.regularisers()
        pre_backward(self.strategy, self.params, self.optimizers, self.strategy_state, step, info)
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.maybe_densify(info, means_lr)
        self.step += 1
        mse = float(((out.image[0].detach() - target) ** 2).mean())
        speed = (self.step - start_step) / max(time.perf_counter() - t0, 1e-9)
        return StepStats(self.step, loss.item(), terms.l1.item(), terms.ssim.item(),
                         -10.0 * torch.log10(torch.tensor(max(mse, 1e-12))).item(), self.num_gaussians, speed,
                         means_lr, sh_degree)

    # ----- pieces of a step ----------------------------------------------------------------------------------
    def frame_at(self, step: int):
        """The training frame of ``step``: a fresh seeded permutation each epoch (stateless, so resumable)."""
        n = len(self.dataset.train)
        epoch, index = divmod(step, n)
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return self.dataset.train[int(torch.randperm(n, generator=g)[index])]

    def set_learning_rates(self, step: int) -> float:
        """Set this step's learning rates (only the means decay); returns the means learning rate."""
        optim = self.config.optim
        lr = means_lr_at(step, self.config.steps, self.base_lrs["means"], optim.means_lr_final_factor)
        self.optimizers["means"].param_groups[0]["lr"] = lr
        return lr

    def regularisers(self) -> torch.Tensor:
        optim = self.config.optim
        reg = torch.zeros((), device=self.device)
        if optim.opacity_reg > 0:
            reg = reg + optim.opacity_reg * torch.sigmoid(self.params["opacities"]).mean()
        if optim.scale_reg > 0:
            reg = reg + optim.scale_reg * torch.exp(self.params["scales"]).mean()
        return reg

    def maybe_densify(self, info: dict[str, Any], means_lr: float) -> None:
        """Let the strategy grow, prune, reset or relocate Gaussians after this step's update."""
        post_backward(self.strategy, self.params, self.optimizers, self.strategy_state, self.step, info,
                      means_lr)

    def maybe_eval(self, monitor: Monitor, force: bool = False) -> None:
        """Evaluate every ``eval_every`` steps and at the last step (or now when ``force``)."""
        cfg = self.config
        if not force and self.step % cfg.eval_every != 0 and self.step != cfg.steps:
            return
        result = evaluate(splats_from_params(self.params).detach(), self.dataset, self.step, cfg.backend,
                          self.background, self.run_dir / "renders", cfg.save_images, cfg.eval_max_frames,
                          self.lpips)
        self.last_eval = result
        self.history.append(_eval_dict(result))
        monitor.log_eval(result)

    def maybe_checkpoint(self, t0: float) -> None:
        if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
            save_checkpoint(self.checkpoint_path, self.checkpoint(self.elapsed_s + time.perf_counter() - t0))

    # ----- state ---------------------------------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def checkpoint(self, elapsed_s: float) -> Checkpoint:
        return Checkpoint(self.step, {k: v.detach() for k, v in self.params.items()},
                          {k: o.state_dict() for k, o in self.optimizers.items()}, dict(self.strategy_state),
                          torch.get_rng_state(), config_dict(self.config), elapsed_s)

    def _restore(self, ckpt: Checkpoint) -> None:
        _check_same_config(self.checkpoint_path, ckpt.config, config_dict(self.config))
        self.step, self.elapsed_s = ckpt.step, ckpt.elapsed_s
        self.params = params_from_tensors(ckpt.params, self.device)
        self.optimizers = make_optimizers(self.params, self.base_lrs, self.config.optim.eps)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(ckpt.optimizers[key])
        self.strategy_state = dict(ckpt.strategy_state)
        torch.set_rng_state(ckpt.torch_rng.cpu())

    def export(self, it_per_s: float) -> tuple[Path, Path]:
        """Write ``scene.ply`` (INRIA layout) and ``metrics.json``, both atomically."""
        scene_path = self.run_dir / "scene.ply"
        save_scene(scene_path, splats_from_params(self.params).detach().to("cpu"))
        metrics = {"step": self.step, "num_gaussians": self.num_gaussians, "train_seconds": self.elapsed_s,
                   "it_per_s": it_per_s, "device": str(self.device), "dataset": str(self.dataset.root),
                   "dataset_kind": self.dataset.kind, "train_images": len(self.dataset.train),
                   "test_images": len(self.dataset.test), "scene": str(scene_path),
                   "eval": _eval_dict(self.last_eval) if self.last_eval else None, "history": self.history,
                   "config": config_dict(self.config)}
        metrics_path = self.run_dir / "metrics.json"
        write_json_atomic(metrics_path, metrics)
        return scene_path, metrics_path


def _eval_dict(result: EvalResult) -> dict[str, Any]:
    return {"step": result.step, "split": result.split, "frames": result.frames, "psnr": result.psnr,
            "ssim": result.ssim, "lpips": result.lpips, "images": list(result.images)}


def _check_same_config(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the fields where a resumed run's config differs from its checkpoint's."""
    saved_n, current_n = (json.loads(json.dumps(c)) for c in (saved, current))
    diffs = sorted(_diff_keys(saved_n, current_n, "") - set(RESUME_FREE_FIELDS))
    if diffs:
        raise ValueError(f"{path}: the configuration differs from the checkpoint's in {', '.join(diffs)}; "
                         "resume with the same arguments as the original run")


def _diff_keys(a: Any, b: Any, prefix: str) -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
