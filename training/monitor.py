"""What a run shows and records: a rich progress bar and TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .evaluate import EvalResult


class StepStats(NamedTuple):
    """One training step's numbers."""

    step: int
    loss: float
    l1: float
    ssim: float
    psnr: float
    num_gaussians: int
    it_per_s: float
    means_lr: float
    sh_degree: int


class Monitor:
    """Progress bar (step, loss, PSNR, Gaussians, it/s) and TensorBoard logs under ``<run>/tb``."""

    def __init__(self, console: Console, run_dir: Path, total_steps: int, start_step: int, tensorboard: bool) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  PSNR {task.fields[psnr]:.2f}  "
                       "{task.fields[gaussians]:,} Gaussians  {task.fields[speed]:.2f} it/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, loss=0.0, psnr=0.0,
                                           gaussians=0, speed=0.0)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step)

    def __enter__(self) -> Monitor:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        if self.writer is not None:
            self.writer.close()

    def advance(self, step: int, it_per_s: float) -> None:
        """Move the bar to ``step`` without new loss figures (the steps between logged ones read nothing back from
        the GPU)."""
        self.progress.update(self.task, completed=step, speed=it_per_s)

    def log_step(self, stats: StepStats, write: bool) -> None:
        """Advance the bar; write the scalars to TensorBoard when ``write``."""
        self.progress.update(self.task, completed=stats.step, loss=stats.loss, psnr=stats.psnr,
                             gaussians=stats.num_gaussians, speed=stats.it_per_s)
        if write and not self.console.is_terminal:  # a log file: one line per logged step instead of the bar
            self.console.print(f"step {stats.step} loss {stats.loss:.4f} PSNR {stats.psnr:.2f} "
                               f"{stats.num_gaussians:,} Gaussians {stats.it_per_s:.2f} it/s")
        if write and self.writer is not None:
            for name in ("loss", "l1", "ssim", "psnr", "num_gaussians", "it_per_s", "means_lr", "sh_degree"):
                self.writer.add_scalar(f"train/{name}", getattr(stats, name), stats.step)

    def log_eval(self, result: EvalResult) -> None:
        lp = "n/a" if result.lpips is None else f"{result.lpips:.4f}"
        self.console.print(f"step {result.step}: {result.split} PSNR {result.psnr:.2f} SSIM {result.ssim:.4f} "
                           f"LPIPS {lp} ({result.frames} images)")
        if self.writer is not None:
            self.writer.add_scalar(f"eval/{result.split}_psnr", result.psnr, result.step)
            self.writer.add_scalar(f"eval/{result.split}_ssim", result.ssim, result.step)
            if result.lpips is not None:
                self.writer.add_scalar(f"eval/{result.split}_lpips", result.lpips, result.step)
