"""CPU benchmark of the ``torch`` backend: ``guitar`` at 640 x 480, one eye, on the ``orbit`` poses.

The target (issue 3): at most 3 s per frame on the 2-core CI machine. The torch backend is slow on CPU, so this runs
a handful of frames (2 warm-up + 8 timed) instead of the GPU protocol's 8 + 96, and writes the result JSON and plot
to ``benchmarks/results/`` in the ``BENCHMARK.md`` shape (renderer ``torch``, eyes 1, ``gpu`` = the CPU model).

    python benchmarks/cpu_torch_guitar.py [--data-dir DIR] [--timed-frames 8] ...

Every field of :class:`server.bench.BenchConfig` can be overridden on the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from server.bench import BenchConfig, bench_main  # noqa: E402

TARGET_MS = 3000.0

CPU_TORCH_GUITAR = BenchConfig(
    scenes=("guitar",),
    paths=("orbit",),
    renderers=("torch",),
    quality=False,
    width=640,
    height=480,
    eyes=1,
    warmup_frames=2,
    timed_frames=8,
    cover_path=False,
    device="cpu",
    out_dir=ROOT / "benchmarks" / "results",
    what="cpu-torch-guitar-640x480",
)


def main() -> int:
    import tyro

    config = tyro.cli(BenchConfig, default=CPU_TORCH_GUITAR)
    report = bench_main(config)
    worst = max(row.ms_median for row in report.result.rows)
    verdict = "meets" if worst <= TARGET_MS else "misses"
    print(f"median {worst:.0f} ms per frame: {verdict} the {TARGET_MS:.0f} ms target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
