"""Where a training step's time goes: the trainer of ``gscache train`` on a dataset, one backend, with the PyTorch
profiler over a window of steps after densification has started.

Prints the step rate over the window (with and without the profiler), the ops with the most host (CPU) time and
the kernels with the most device time, and writes the tables to ``--out-dir``. A diagnostic for the per-step
overhead that both backends share (the rate of a 200x200 lego step is bound by the host, not the kernels), not a
benchmark result.

    python benchmarks/train_profile.py DATA --backend native --steps 1500 --window 200 --out-dir OUT
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--backend", default="native")
    parser.add_argument("--steps", type=int, default=1500, help="steps before the measured window")
    parser.add_argument("--window", type=int, default=200, help="steps timed (and profiled)")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/train_profile"))
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args(argv)

    from training.config import preset
    from training.trainer import Trainer

    config = preset("default")
    config.backend = args.backend
    config.steps = 30_000
    config.tensorboard = False
    config.eval_every = 10**9
    config.checkpoint_every = 10**9
    config.log_every = 10**9
    run_dir = args.out_dir / f"run-{args.backend}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, args.data, run_dir)
    trainer.train(stop_at=args.steps)

    cuda = trainer.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def timed(n: int) -> float:
        sync()
        t0 = time.perf_counter()
        trainer.train(stop_at=trainer.step + n)
        sync()
        return (time.perf_counter() - t0) / n * 1e3

    plain_ms = timed(args.window)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        profiled_ms = timed(args.window)
    plain_again_ms = timed(args.window)
    head = (f"{args.backend}: step {trainer.step}, {trainer.num_gaussians} Gaussians; {plain_ms:.3f} ms/step "
            f"({plain_again_ms:.3f} after), {profiled_ms:.3f} ms/step under the profiler")
    cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    dev = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows) if cuda else ""

    text = f"{head}\n\n== by self CPU time ({args.window} steps)\n{cpu}\n\n== by self CUDA time\n{dev}\n"
    (args.out_dir / f"profile-{args.backend}.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
