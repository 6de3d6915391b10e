"""``gscache train DATA --out RUN_DIR [--preset NAME] [--resume] [config overrides]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro
from rich.console import Console

from .config import PresetName, TrainConfig, preset, with_overrides


@dataclass
class Train:
    """Train a scene from a COLMAP or transforms.json dataset; writes scene.ply and metrics.json into --out.

    Presets: default (3DGS, 30k steps), fast (7k), cpu (2k steps at half size), mcmc (CUDA), test (60 tiny
    steps). Flags given explicitly override the preset (a flag equal to the default preset's value reads as not
    given). --resume continues a killed run from its checkpoint.pt (give the same arguments as the original run;
    --steps may change).
    """

    dataset: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="DATA")]
    """Dataset folder (COLMAP sparse model + images, or transforms.json / transforms_train.json)."""
    out: Path
    """Run directory (created)."""
    preset: PresetName = "default"
    resume: bool = False
    """Continue the run in --out from its checkpoint.pt."""
    config: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)

    def resolved_config(self) -> TrainConfig:
        """The preset with the explicitly given flags applied."""
        return with_overrides(preset(self.preset), self.config)

    def run(self, console: Console) -> None:
        from .trainer import Trainer

        config = self.resolved_config()
        trainer = Trainer(config, self.dataset, self.out, console, resume=self.resume)
        console.print(f"training {trainer.dataset.kind} dataset {self.dataset}: {len(trainer.dataset.train)} train / "
                      f"{len(trainer.dataset.test)} test images, {trainer.num_gaussians:,} Gaussians, "
                      f"device {trainer.device}, from step {trainer.step}")
        result = trainer.train()
        console.print(f"wrote {result.scene_path} ({result.num_gaussians:,} Gaussians) and {result.metrics_path}")
