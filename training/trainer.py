"""The training loop: Adam on gsplat-style parameters, L1 + D-SSIM, a gsplat densification strategy, evaluation,
atomic checkpoints and an exactly resumable state, and the final INRIA ``.ply`` plus ``metrics.json``.

Run directory layout: ``config.json``, ``checkpoint.pt`` (latest), ``tb/`` (TensorBoard), ``renders/step_N/*.png``
(ground truth | render), ``scene.ply``, ``metrics.json`` and ``cameras.json`` (the dataset's cameras) at the end.

On a GPU a step reads nothing back from the device except where it must (the sort's pair count, the strategy's
visible set): the loss and PSNR are read every ``log_every`` steps, the images are on the device from the start
(:mod:`training.targets`), the cameras are stacked there once (:mod:`training.rasterize`), Adam is the fused kernel,
and the backend is built and warmed up before the clock starts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from data import save_scene
from data.dataset import DatasetOptions, SceneDataset, load_dataset
from data.scene_cameras import RUN_CAMERAS, SceneCamera, cameras_document
from data.transforms_json import find_transforms
from renderer import Splats

from .atomic import remove_stale_temp_files, run_lock, write_json_atomic
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import MCMCStrategyConfig, TrainConfig, config_dict
from .evaluate import EvalResult, LpipsMetric, evaluate
from .init import initial_splats_from
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
    step_optimizers,
)
from .rasterize import Rasterizer
from .strategy import build_strategy, initial_state, post_backward, pre_backward
from .targets import Targets

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


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported (found on the path), without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def open_dataset(data_path: Path, config: TrainConfig) -> SceneDataset:
    """Load the dataset with the config's options (white background for transforms.json, black for COLMAP).

    Without pycolmap, a COLMAP model in text form is read by :mod:`training.colmap_text` (same frames, cameras,
    undistorted images and points).
    """
    bg = config.data.background
    root = Path(data_path)
    if bg is None:
        bg = (1.0, 1.0, 1.0) if find_transforms(root) is not None else (0.0, 0.0, 0.0)
    options = DatasetOptions(config.data.downscale, config.data.test_every, tuple(bg), config.data.images_dir)
    if root.is_dir() and find_transforms(root) is None and not module_available("pycolmap"):
        from . import colmap_text

        if colmap_text.can_read(root):
            return colmap_text.read_colmap_text_dataset(root, options)
    return load_dataset(root, options)


def initial_splats(dataset: SceneDataset, config: TrainConfig) -> Splats:
    """Gaussians from the dataset's points (outliers removed) or random points where it has none (open3d's
    neighbour search where installed, else SciPy's: :mod:`training.init`)."""
    return initial_splats_from(dataset.points, config.init, config.sh_degree, config.seed)


class Trainer:
    """One training run in ``run_dir`` (fresh, or resumed from its ``checkpoint.pt``)."""

    def __init__(self, config: TrainConfig, data_path: Path, run_dir: Path, console: Console | None = None,
                 dataset: SceneDataset | None = None, resume: bool = False) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.console = console or Console(quiet=True)
        self.device = resolve_device(config.device)
        if self.device.type == "cpu" and config.cpu_threads > 0:
            torch.set_num_threads(config.cpu_threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed image sizes: the SSIM convolutions pick their fastest kernel
        self.strategy = build_strategy(config.strategy, self.device)
        self.rasterizer = Rasterizer(config.backend, self.device, bool(getattr(config.strategy, "absgrad", False)))
        self.dataset = dataset if dataset is not None else open_dataset(Path(data_path), config)
        if not self.dataset.train:
            raise ValueError(f"{data_path}: no training images")
        self.background = torch.tensor(self.dataset.background, dtype=torch.float32, device=self.device)[None]
        self.targets = Targets(self.dataset, self.device)
        self.timing = {"eval_s": 0.0, "checkpoint_s": 0.0}
        self._perm: tuple[int, list[int]] = (-1, [])
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
        if self.device.type == "cuda":
            self._warm_up()

    def _warm_up(self) -> None:
        """One render without gradients, so that lazy builds (gsplat compiles its kernels on first use) and the
        first allocations happen before the training clock starts."""
        frame = self.dataset.train[0]
        with torch.no_grad():
            self.rasterizer(splats_from_params(self.params), frame.camera, 0, self.background)
        if isinstance(self.config.strategy, MCMCStrategyConfig):
            import gsplat.cuda._backend  # noqa: F401 - MCMC relocates with gsplat's kernels: build them now
        torch.cuda.synchronize(self.device)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    # ----- the loop ------------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``config.steps`` (or until ``stop_at`` steps, leaving the run resumable)."""
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with run_lock(self.run_dir):
            stale = remove_stale_temp_files(self.run_dir)  # a killed run's half-written temporaries
            if stale:
                self.console.print(f"removed {len(stale)} partial file(s) of an interrupted run: "
                                   f"{', '.join(p.name for p in stale)}")
            write_json_atomic(self.run_dir / "config.json", config_dict(cfg))
            start_step, t0 = self.step, time.perf_counter()
            with Monitor(self.console, self.run_dir, cfg.steps, self.step, cfg.tensorboard) as monitor:
                while self.step < end:
                    new_step = self.step + 1
                    write = new_step % cfg.log_every == 0
                    stats = self.train_step(start_step, t0, with_stats=write or new_step == end)
                    if stats is None:
                        monitor.advance(self.step, (self.step - start_step) / max(time.perf_counter() - t0, 1e-9))
                    else:
                        monitor.log_step(stats, write=write)
                    self.maybe_eval(monitor)
                    self.maybe_checkpoint(t0)
                if self.step >= cfg.steps and (self.last_eval is None or self.last_eval.step != self.step):
                    self.maybe_eval(monitor, force=True)  # e.g. a resumed run already at or past its (new) last step
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - t0
        it_per_s = (self.step - start_step) / seconds if seconds > 0 else 0.0
        self.elapsed_s += seconds
        self.timing["seconds"] = seconds
        self.timing["steps"] = self.step - start_step
        # the optimisation alone: without evaluations and checkpoint writes
        self.timing["loop_s"] = seconds - self.timing["eval_s"] - self.timing["checkpoint_s"]
        if self.step < cfg.steps:
            return TrainResult(self.run_dir, self.step, False, self.num_gaussians, None, None, self.last_eval,
                               it_per_s)
        scene_path, metrics_path = self.export(it_per_s)
        return TrainResult(self.run_dir, self.step, True, self.num_gaussians, scene_path, metrics_path,
                           self.last_eval, it_per_s)

    def train_step(self, start_step: int, t0: float, with_stats: bool = True) -> StepStats | None:
        """One optimisation step on one training image; returns its numbers when ``with_stats`` (reading them back
        from the GPU waits for the step to finish, so the loop asks only on logged steps), else None."""
        cfg, step = self.config, self.step
        means_lr = self.set_learning_rates(step)
        sh_degree = sh_degree_at(step, cfg.sh_degree_interval, cfg.sh_degree)
        frame = self.frame_at(step)
        target = self.targets(frame)
        image, info = self.rasterizer(splats_from_params(self.params), frame.camera, sh_degree, self.background)
        terms = photometric_loss(image, target, cfg.optim.ssim_lambda)
        reg = self.regularisers()
        loss = terms.total if reg is None else terms.total + reg
        pre_backward(self.strategy, self.params, self.optimizers, self.strategy_state, step, info)
        loss.backward()
        step_optimizers(self.optimizers)
        self.maybe_densify(info, means_lr)
        self.step += 1
        if not with_stats:
            return None
        mse = ((image.detach() - target) ** 2).mean()
        loss_v, l1_v, ssim_v, mse_v = torch.stack([loss.detach(), terms.l1.detach(), terms.ssim.detach(),
                                                   mse]).tolist()
        speed = (self.step - start_step) / max(time.perf_counter() - t0, 1e-9)
        return StepStats(self.step, loss_v, l1_v, ssim_v, -10.0 * math.log10(max(mse_v, 1e-12)), self.num_gaussians,
                         speed, means_lr, sh_degree)

    # ----- pieces of a step ----------------------------------------------------------------------------------
    def frame_at(self, step: int):
        """The training frame of ``step``: a fresh seeded permutation each epoch (stateless, so resumable)."""
        n = len(self.dataset.train)
        epoch, index = divmod(step, n)
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(n, generator=g).tolist())
        return self.dataset.train[self._perm[1][index]]

    def set_learning_rates(self, step: int) -> float:
        """Set this step's learning rates (only the means decay); returns the means learning rate."""
        optim = self.config.optim
        lr = means_lr_at(step, self.config.steps, self.base_lrs["means"], optim.means_lr_final_factor)
        self.optimizers["means"].param_groups[0]["lr"] = lr
        return lr

    def regularisers(self) -> torch.Tensor | None:
        """The opacity and scale regularisers (MCMC), or None when both weights are 0."""
        optim = self.config.optim
        reg = None
        if optim.opacity_reg > 0:
            reg = optim.opacity_reg * torch.sigmoid(self.params["opacities"]).mean()
        if optim.scale_reg > 0:
            term = optim.scale_reg * torch.exp(self.params["scales"]).mean()
            reg = term if reg is None else reg + term
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
        t0 = time.perf_counter()
        result = evaluate(splats_from_params(self.params).detach(), self.dataset, self.step, cfg.backend,
                          self.background, self.run_dir / "renders", cfg.save_images, cfg.eval_max_frames,
                          self.lpips, targets=self.targets)
        self.timing["eval_s"] += time.perf_counter() - t0
        self.last_eval = result
        self.history.append(_eval_dict(result))
        monitor.log_eval(result)

    def maybe_checkpoint(self, t0: float) -> None:
        if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
            t1 = time.perf_counter()
            save_checkpoint(self.checkpoint_path, self.checkpoint(self.elapsed_s + t1 - t0))
            self.timing["checkpoint_s"] += time.perf_counter() - t1

    # ----- state ---------------------------------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def checkpoint(self, elapsed_s: float) -> Checkpoint:
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return Checkpoint(self.step, {k: v.detach() for k, v in self.params.items()},
                          {k: o.state_dict() for k, o in self.optimizers.items()}, dict(self.strategy_state),
                          torch.get_rng_state(), config_dict(self.config), elapsed_s, cuda_rng=cuda_rng)

    def _restore(self, ckpt: Checkpoint) -> None:
        _check_same_config(self.checkpoint_path, ckpt.config, config_dict(self.config))
        self.step, self.elapsed_s = ckpt.step, ckpt.elapsed_s
        self.params = params_from_tensors(ckpt.params, self.device)
        self.optimizers = make_optimizers(self.params, self.base_lrs, self.config.optim.eps)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(ckpt.optimizers[key])
        self.strategy_state = dict(ckpt.strategy_state)
        torch.set_rng_state(ckpt.torch_rng.cpu())
        if ckpt.cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt.cuda_rng.cpu(), self.device)

    def export(self, it_per_s: float) -> tuple[Path, Path]:
        """Write ``scene.ply`` (INRIA layout), ``metrics.json`` and ``cameras.json`` (the dataset's cameras, where
        viewers start: :mod:`data.scene_cameras`), each atomically."""
        scene_path = self.run_dir / "scene.ply"
        save_scene(scene_path, splats_from_params(self.params).detach().to("cpu"))
        metrics = {"step": self.step, "num_gaussians": self.num_gaussians, "train_seconds": self.elapsed_s,
                   "it_per_s": it_per_s, "device": str(self.device), "backend": self.rasterizer.name,
                   "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
                   "peak_memory_mib": (torch.cuda.max_memory_allocated(self.device) / 2**20
                                       if self.device.type == "cuda" else None),
                   "timing_this_call": {"it_per_s": it_per_s, **self.timing},  # of the last (resumed) process
                   "dataset": str(self.dataset.root),
                   "dataset_kind": self.dataset.kind, "train_images": len(self.dataset.train),
                   "test_images": len(self.dataset.test), "scene": str(scene_path),
                   "eval": _eval_dict(self.last_eval) if self.last_eval else None, "history": self.history,
                   "config": config_dict(self.config)}
        metrics_path = self.run_dir / "metrics.json"
        write_json_atomic(metrics_path, metrics)
        write_json_atomic(self.run_dir / RUN_CAMERAS, dataset_cameras_document(self.dataset))
        return scene_path, metrics_path


def dataset_cameras_document(dataset: SceneDataset) -> dict[str, Any]:
    """The dataset's cameras (training and held-out) in :mod:`data.scene_cameras`' layout."""
    frames = [(f, "train") for f in dataset.train] + [(f, "test") for f in dataset.test]
    return cameras_document([SceneCamera(f.name, f.camera, split) for f, split in frames])


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
