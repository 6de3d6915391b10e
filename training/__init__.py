"""gscache: training.

``gscache train DATA --out RUN_DIR --preset NAME`` (``training.cli.Train``) runs ``training.trainer.Trainer`` with a
``training.config.TrainConfig``. Heavy modules (the trainer, gsplat, open3d) load only when training starts.
"""

from .config import (
    DataConfig,
    DefaultStrategyConfig,
    InitConfig,
    MCMCStrategyConfig,
    OptimConfig,
    PresetName,
    TrainConfig,
    preset,
    with_overrides,
)

__all__ = ["DataConfig", "DefaultStrategyConfig", "InitConfig", "MCMCStrategyConfig", "OptimConfig", "PresetName",
           "TrainConfig", "preset", "with_overrides"]
