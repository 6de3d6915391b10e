"""Quick timing of the native backend (not the project benchmark protocol; see BENCHMARK.md for that).

Stereo frames at a headset's panel size (2064 x 2208 per eye, 90 degrees), median of CUDA-event timings after a
warm-up: inference (render under inference_mode, both eyes as one batch of two cameras) and a training step
(forward + backward, one eye, smaller image). Prints a table; ``--json PATH`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from renderer import Camera, Splats, StereoRig, intrinsics_from_fov, look_at, render  # noqa: E402
from renderer.backends import default_registry  # noqa: E402
from renderer.cameras import stack_cameras  # noqa: E402
from renderer.types import RenderOptions  # noqa: E402


def _time(fn, warmup: int = 3, reps: int = 15) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def _rig(splats: Splats, width: int, height: int) -> StereoRig:
    lo, hi = splats.bounds()
    centre, extent = ((lo + hi) / 2).double().cpu(), float((hi - lo).max())
    eye = centre + torch.tensor([0.35, -0.3, -1.1], dtype=torch.float64) * extent
    k = intrinsics_from_fov(width, height, 90.0)
    return StereoRig(Camera(look_at(eye, centre, (0, -1, 0)), k, width, height), 0.064 * extent)


def _stage_times(splats: Splats, rig: StereoRig) -> tuple[float, float, float]:
    backend = default_registry().get("native")
    cams = stack_cameras(rig, "cuda")
    opts = RenderOptions()
    bg = torch.zeros(2, 3, device="cuda")
    with torch.inference_mode():
        proj = backend.preprocess(splats, cams, splats.sh_degree, True)
        bins = backend.sort(proj, cams)
        t_pre = _time(lambda: backend.preprocess(splats, cams, splats.sh_degree, True))
        t_sort = _time(lambda: backend.sort(proj, cams))
        t_blend = _time(lambda: backend.blend(proj, bins, cams, opts, bg))
    return t_pre, t_sort, t_blend


def _bench_scene(name: str, splats: Splats) -> dict:
    rig = _rig(splats, 2064, 2208)
    with torch.inference_mode():
        out = render(splats, rig, backend="native")
        frame = _time(lambda: render(splats, rig, backend="native"))
    pre, srt, bl = _stage_times(splats, rig)
    params = [t.detach().clone().requires_grad_(True) for t in splats._fields().values()]
    train_cam = _rig(splats, 1032, 1104).head

    def step():
        o = render(Splats(*params), train_cam, backend="native")
        o.image.sum().backward()

    train = _time(step, warmup=2, reps=7)
    return {"scene": name, "gaussians": len(splats), "sh_degree": splats.sh_degree, "pairs": out.stats.tile_keys,
            "stereo_ms": frame, "preprocess_ms": pre, "sort_ms": srt, "blend_ms": bl,
            "train_step_ms_1032x1104": train, "gpu": torch.cuda.get_device_name()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000,4000000")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    scenes = []
    playbot = ROOT / "assets" / "scenes" / "playbot.ply"
    if playbot.exists():
        from data.scene_io import load_scene

        scenes.append(("playbot", load_scene(playbot)))
    for n in (int(s) for s in args.sizes.split(",")):
        scenes.append((f"random-{n}", Splats.random(n, sh_degree=3, seed=0, extent=1.0)))
    print(f"{'scene':>16s} {'N':>9s} {'pairs':>10s} {'stereo ms':>10s} {'pre':>6s} {'sort':>6s} {'blend':>6s} "
          f"{'train ms':>9s}")
    for name, cpu_splats in scenes:
        row = _bench_scene(name, cpu_splats.to("cuda"))
        rows.append(row)
        print(f"{name:>16s} {row['gaussians']:>9d} {row['pairs']:>10d} {row['stereo_ms']:>10.2f} "
              f"{row['preprocess_ms']:>6.2f} {row['sort_ms']:>6.2f} {row['blend_ms']:>6.2f} "
              f"{row['train_step_ms_1032x1104']:>9.2f}", flush=True)
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
