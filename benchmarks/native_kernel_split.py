"""Where an uncached ``native`` stereo frame spends its GPU time, kernel by kernel, on a BENCHMARK.md path.

The frame cache (issue 4) may reuse, across eyes and frames, only the visible set, the colours and the depth order;
each eye keeps its own footprints, tile binning, tile sort and blend. This measures how much of a frame those
reusable parts are, which bounds what the cache can gain over uncached ``native`` (Amdahl: removing a share ``s``
of the frame gains at most ``1 / (1 - s)``).

For each scene: the visible Gaussians per eye and the tile pairs on a few poses, then the PyTorch profiler's CUDA
time per kernel over ``--frames`` poses spread over the path, grouped:

- ``blend``: the per-pixel blend (per eye; not reusable);
- ``preprocess``: projection, 2D covariances, colours (the footprints are per eye; colours are reusable);
- ``tile_binning``: the ellipse-tile tests that count and emit the (tile, Gaussian) pairs (per eye);
- ``depth_order``: the depth keys, the depth radix sort's share and the order copy (reusable);
- ``tile_sort_other``: the tile-key radix sort's share, scans, offsets, memsets (per eye).

The op's two radix sorts (the depth sort of the ``C x N`` items over 32 bits, the tile sort of the pairs over the
tile bits) run the same cub kernels. The depth sort's share is estimated by timing a radix sort of ``C x N`` 32-bit
keys alone (``torch.sort`` of int32 keys runs cub's radix sort, with int64 indices where the op carries int32: if
anything it overstates the reusable share); the rest of the radix time is counted as the tile sort.

    python benchmarks/native_kernel_split.py --scenes guitar-g8 guitar-g12 --path head --data-dir DATA
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.result_files import write_result_files  # noqa: E402

GROUPS = ("blend", "preprocess", "tile_binning", "depth_order", "tile_sort_other")
REUSABLE = ("depth_order",)


def kernel_group(name: str) -> str:
    """The group of a CUDA kernel (or copy) by its name (see the module doc)."""
    if "blend_forward" in name:
        return "blend"
    if "preprocess_forward" in name:
        return "preprocess"
    if "bin_kernel" in name:
        return "tile_binning"
    if "depth_keys" in name or "Memcpy DtoD" in name:
        return "depth_order"
    if "RadixSort" in name:
        return "radix_sorts"
    return "tile_sort_other"


def split_frames(backend, splats, batches, options, background) -> dict[str, float]:
    """CUDA ms per frame of each kernel group over ``batches`` (one stereo frame each)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for cams in batches:
            backend.render(splats, cams, options, background)
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", None)
        if device_us is None:
            device_us = event.cuda_time_total
        if device_us:
            group = kernel_group(event.key)
            totals[group] = totals.get(group, 0.0) + device_us / 1e3 / len(batches)
    return totals


def depth_sort_share(n_items: int, device: torch.device, repeats: int = 5) -> float:
    """ms of a cub radix sort of ``n_items`` (32-bit key, 32-bit value) pairs over all 32 bits: what the depth sort
    of the frame's ``C * N`` items costs (``torch.sort`` of int32 keys with indices runs cub's radix sort)."""
    keys = torch.randint(0, 2**31 - 1, (n_items,), device=device, dtype=torch.int32)
    torch.sort(keys)
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        torch.sort(keys)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["guitar-g8", "guitar-g12"])
    parser.add_argument("--path", default="head", choices=("head", "orbit"))
    parser.add_argument("--frames", type=int, default=10, help="poses profiled, spread over the path")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--revision", default=None)
    args = parser.parse_args(argv)

    from renderer import head_path, orbit_path
    from renderer.backends import default_registry
    from renderer.cameras import stack_cameras
    from renderer.types import RenderOptions
    from server.bench import PATH_FRAMES
    from server.bench_results import device_name
    from server.bench_scenes import resolve_scene

    if not torch.cuda.is_available():
        raise SystemExit("native_kernel_split.py needs a CUDA GPU")
    device = torch.device("cuda", torch.cuda.current_device())
    backend = default_registry().resolve("native", device)
    background = torch.zeros(2, 3, device=device)
    options = RenderOptions(background=background)
    rows = []
    for scene_id in args.scenes:
        scene = resolve_scene(scene_id, args.data_dir, device)
        spec = scene.path_spec(2064, 2208, 90.0)
        make = head_path if args.path == "head" else orbit_path
        rigs = list(make(spec, frames=PATH_FRAMES[args.path]))
        picks = [round(i * (len(rigs) - 1) / max(args.frames - 1, 1)) for i in range(args.frames)]
        batches = [stack_cameras(rigs[i], device, scene.splats.dtype) for i in picks]
        with torch.inference_mode():
            for cams in batches[:3]:  # warm-up: allocator, cub temp storage
                backend.render(scene.splats, cams, options, background)
            outs = [backend.render(scene.splats, cams, options, background).stats for cams in batches]
        groups = split_frames(backend, scene.splats, batches, options, background)
        n = len(scene.splats)
        depth_sort_ms = depth_sort_share(2 * n, device)
        radix = groups.pop("radix_sorts", 0.0)
        groups["depth_order"] = groups.get("depth_order", 0.0) + min(depth_sort_ms, radix)
        groups["tile_sort_other"] = groups.get("tile_sort_other", 0.0) + max(radix - depth_sort_ms, 0.0)
        total = sum(groups.values())
        reusable = sum(groups.get(g, 0.0) for g in REUSABLE)
        visible = [v / n for s in outs for v in s.visible]
        row = {"scene": scene.id, "gaussians": n, "path": args.path, "eyes": 2, "width": 2064, "height": 2208,
               "renderer": "native", "frames": len(batches), "ms_per_frame": round(total, 4),
               **{f"{g}_ms": round(groups.get(g, 0.0), 4) for g in GROUPS},
               "reusable_share": round(reusable / total, 4),
               "max_cache_speedup": round(total / (total - reusable), 4),
               "visible_fraction_min": round(min(visible), 4), "visible_fraction_mean": round(
                   statistics.fmean(visible), 4),
               "tile_pairs_mean": round(statistics.fmean(s.tile_keys for s in outs)),
               "depth_sort_ms_estimate": round(depth_sort_ms, 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del scene
        torch.cuda.empty_cache()
    gpu = device_name(device)
    write_result_files(args.out_dir, f"native-kernel-split-{args.path}",
                       "python benchmarks/native_kernel_split.py " + " ".join(argv or sys.argv[1:]), args.revision,
                       gpu, rows, lambda png: plot(png, rows, gpu, args.path),
                       note="CUDA time per stereo frame by kernel group (PyTorch profiler); depth_order includes a cub "
                            "radix sort of 2N 32-bit pairs timed alone (the op's depth sort), the rest of the radix "
                            "time is the tile sort; max_cache_speedup = 1 / (1 - reusable_share)")
    return 0


def plot(path: Path, rows: list[dict], gpu: str, which: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = {"blend": "tab:blue", "preprocess": "tab:green", "tile_binning": "tab:purple",
              "depth_order": "tab:orange", "tile_sort_other": "tab:gray"}
    for y, row in enumerate(rows):
        left = 0.0
        for g in GROUPS:
            width = row[f"{g}_ms"]
            ax.barh(y, width, left=left, color=colors[g], label=g if y == 0 else None)
            left += width
        ax.text(left + 0.05, y, f"{row['ms_per_frame']:.2f} ms; cache can skip {100 * row['reusable_share']:.0f}% "
                                f"(<= {row['max_cache_speedup']:.2f}x)", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["scene"] for r in rows])
    ax.set_xlabel("GPU ms per stereo frame (2 x 2064x2208)")
    ax.set_xlim(0, max(r["ms_per_frame"] for r in rows) * 1.6)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"uncached native, {which} path, kernel groups ({gpu}); orange: what the frame cache can reuse",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
