"""The peer's figures on the GPU: gsplat 1.5.3 (``packed=False`` and ``packed=True``) through the harness.

Two presets (every :class:`server.bench.BenchConfig` field can be overridden after the preset's name):

- ``peer``: the ``BENCHMARK.md`` protocol (stereo 2064 x 2208, 8 warm-up + 96 timed frames, ``orbit``) on
  ``guitar``, ``playbot``, ``guitar-g4/g8/g12`` and ``guitar-g8-sh3``; PSNR of packed against unpacked.
- ``vs-torch``: gsplat against the ``torch`` reference on the real scenes at a quarter of the pixels
  (1032 x 1104 per eye), 16 poses: shows both compute the same image (PSNR per frame).

    python benchmarks/gsplat_peer.py peer [--data-dir DIR] [--out-dir DIR] ...
    python benchmarks/gsplat_peer.py vs-torch [--data-dir DIR] ...

Add ``native`` to ``--renderers`` once that backend exists to put our figures beside the peer's in one run.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from server.bench import BenchConfig, bench_main  # noqa: E402

PRESETS: dict[str, tuple[str, BenchConfig]] = {
    "peer": (
        "gsplat packed and unpacked on the protocol's scenes (orbit, stereo 2064 x 2208)",
        BenchConfig(scenes=("guitar", "playbot", "guitar-g4", "guitar-g8", "guitar-g12", "guitar-g8-sh3"),
                    paths=("orbit",), renderers=("gsplat-unpacked", "gsplat-packed"), device="cuda",
                    out_dir=ROOT / "benchmarks" / "results", what="gsplat-peer-orbit"),
    ),
    "vs-torch": (
        "gsplat against the torch reference on guitar and playbot (orbit, 16 poses, stereo 1032 x 1104)",
        BenchConfig(scenes=("guitar", "playbot"), paths=("orbit",), renderers=("gsplat-unpacked", "gsplat-packed"),
                    reference="torch", width=1032, height=1104, timed_frames=16, cover_path=False, device="cuda",
                    out_dir=ROOT / "benchmarks" / "results", what="gsplat-vs-torch-orbit"),
    ),
}


def main() -> int:
    import tyro

    config = tyro.extras.overridable_config_cli(PRESETS)
    bench_main(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
