"""Per-stage profile of a renderer on the benchmark scenes (GPU machine; not the project benchmark protocol).

For each scene: stereo 2064 x 2208 orbit frames through ``backend.render`` under inference_mode (median of CUDA-event
timings, peak extra memory), a kernel-time breakdown from ``torch.profiler`` over a few frames, and optionally a
training step (forward + backward, one 1920 x 1080 camera). Writes JSON rows with ``--json``.

    python cuda/tools/profile_native.py --data-dir .benchdata --scenes guitar-g8,guitar-g12 --renderers native
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from renderer.backends import default_registry  # noqa: E402
from renderer.cameras import stack_cameras  # noqa: E402
from renderer.paths import orbit_path  # noqa: E402
from renderer.splats import Splats  # noqa: E402
from renderer.types import RenderOptions  # noqa: E402
from server.bench_scenes import resolve_scene  # noqa: E402

MIB = 1 << 20


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _frames(backend, splats, batches, opts, bg, warmup: int, reps: int) -> tuple[float, float]:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup):
        backend.render(splats, batches[i % len(batches)], opts, bg)
    times = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(reps):
        torch.cuda.synchronize()
        start.record()
        backend.render(splats, batches[i % len(batches)], opts, bg)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    peak = (torch.cuda.max_memory_allocated() - base) / MIB
    return _median(times), peak


def _kernels(backend, splats, batches, opts, bg, frames: int = 6) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(frames):
            backend.render(splats, batches[(5 * i) % len(batches)], opts, bg)
        torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None)
        if t is None:
            t = getattr(evt, "cuda_time_total", 0.0)
        if t > 0:
            rows.append((evt.key[:90], t / 1e3 / frames))
    rows.sort(key=lambda r: -r[1])
    return rows[:14]


def _train(name: str, splats: Splats, cam, reps: int = 15) -> tuple[float, float]:
    backend = default_registry().get(name)
    params = [t.detach().clone().requires_grad_(True) for t in splats._fields().values()]
    bg = torch.zeros(1, 3, device="cuda")
    opts = RenderOptions(background=bg)
    cams = stack_cameras(cam, "cuda", torch.float32)

    def step():
        out = backend.render(Splats(*params), cams, opts, bg)
        out.image.sum().backward()
        for p in params:
            p.grad = None

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        step()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return _median(times), (torch.cuda.max_memory_allocated() - base) / MIB


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=".benchdata")
    p.add_argument("--scenes", default="playbot,guitar,guitar-g8,guitar-g12")
    p.add_argument("--renderers", default="native")
    p.add_argument("--profile", default="guitar-g8,guitar-g12")
    p.add_argument("--reps", type=int, default=48)
    p.add_argument("--train", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    names = args.renderers.split(",")
    rows = []
    print("gpu", torch.cuda.get_device_name(), flush=True)
    for scene_id in filter(None, args.scenes.split(",")):  # --scenes "" with --train: the training step only
        scene = resolve_scene(scene_id, Path(args.data_dir), "cuda")
        batches = [stack_cameras(r, "cuda", torch.float32) for r in orbit_path(scene.path_spec())]
        bg = torch.zeros(2, 3, device="cuda")
        opts = RenderOptions(background=bg)
        for name in names:
            backend = default_registry().get(name)
            with torch.inference_mode():
                out = backend.render(scene.splats, batches[0], opts, bg)
                ms, peak = _frames(backend, scene.splats, batches, opts, bg, 4, args.reps)
                row = {"scene": scene_id, "renderer": name, "gaussians": len(scene.splats), "ms": ms,
                       "peak_extra_mib": peak, "pairs": out.stats.tile_keys, "visible": out.stats.visible}
                print(json.dumps(row), flush=True)
                if scene_id in args.profile.split(","):
                    ks = _kernels(backend, scene.splats, batches, opts, bg)
                    row["kernels"] = ks
                    for k, t in ks:
                        print(f"    {t:8.3f} ms  {k}", flush=True)
                    # stage times alone, on pose 0 (native only: staged backends)
                    if hasattr(backend, "preprocess"):
                        cams = batches[0]
                        st = {}
                        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        for _ in range(2):
                            torch.cuda.synchronize()
                            s.record()
                            proj = backend.preprocess(scene.splats, cams, scene.splats.sh_degree, True)
                            e.record()
                            e.synchronize()
                            st["preprocess"] = s.elapsed_time(e)
                            s.record()
                            bins = backend.sort(proj, cams)
                            e.record()
                            e.synchronize()
                            st["sort"] = s.elapsed_time(e)
                            s.record()
                            backend.blend(proj, bins, cams, opts, bg)
                            e.record()
                            e.synchronize()
                            st["blend"] = s.elapsed_time(e)
                        row["stages"] = st
                        print("    stages", json.dumps(st), flush=True)
            rows.append(row)
            del out
        del scene, batches
        torch.cuda.empty_cache()
    if args.train:
        scene = resolve_scene("guitar-sh3", Path(args.data_dir), "cuda")
        rig = next(iter(orbit_path(scene.path_spec(1920, 1080))))
        for name in names:
            ms, peak = _train(name, scene.splats, rig.head)
            row = {"scene": "guitar-sh3", "renderer": name, "train_ms_1920x1080": ms, "train_peak_mib": peak}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
