"""Viewer frame rate: the GL splat renderer (and optionally the CUDA frame sources) offscreen through EGL.

Times what the viewer does when the camera moves: depth sort (numpy on CPU, torch on CUDA), the instanced splat
draw into a float eye buffer and the compose pass into the RGBA8 output, with ``ctx.finish()`` after each frame,
on the ``orbit`` poses of BENCHMARK.md (mono, one eye). Median, p90, p99 over ``--frames`` (>= 96 on the GPU
machine) after ``--warmup`` frames. Each row also carries ``draw_ms_median`` (the same frame redrawn without a new
sort: what an unchanged camera costs) and ``sort_ms_median``. PSNR is taken on ``--quality-frames`` poses against
the ``torch`` reference on the same device (0 to skip). Writes ``benchmarks/results/<date>-<gpu>-<what>.json``.

    python benchmarks/viewer_gl_fps.py --scenes guitar guitar-g4 --width 1920 --height 1080      # GPU machine
    python benchmarks/viewer_gl_fps.py --scenes assets/fixtures/guitar_2k.ply --width 64 --height 48 \\
        --frames 4 --warmup 1 --quality-frames 1 --out-dir /tmp/bench                            # CPU smoke test
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from renderer import orbit_path, render  # noqa: E402
from server.bench_results import BenchResult, BenchRow, device_name, git_revision, result_stem  # noqa: E402
from server.bench_scenes import resolve_scene  # noqa: E402
from viewer.gl_context import standalone_context  # noqa: E402
from viewer.gl_splats import depth_order  # noqa: E402
from viewer.pipeline import FramePipeline, FrameRequest, ViewSpec  # noqa: E402


@dataclass
class GLBenchConfig:
    """Viewer frame-rate benchmark (see the module docstring)."""

    scenes: tuple[str, ...] = ("guitar", "guitar-g4")
    """Scene ids of BENCHMARK.md (``guitar``, ``guitar-g4``, ``playbot``, ``...-sh3``) or scene file paths."""
    data_dir: Path | None = None
    sources: tuple[str, ...] = ("gl",)
    """Frame sources to time: gl, and on CUDA native / torch (through the texture upload path)."""
    width: int = 1920
    height: int = 1080
    fov_x_deg: float = 90.0
    frames: int = 96
    warmup: int = 8
    quality_frames: int = 4
    gl: str = "egl"
    out_dir: Path = field(default_factory=lambda: ROOT / "benchmarks" / "results")
    what: str = "viewer-gl-fps"
    write: bool = True


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def time_source(pipeline: FramePipeline, scene, config: GLBenchConfig) -> dict:
    """Time one frame source over the orbit; returns the row's numbers."""
    spec = scene.path_spec(config.width, config.height, config.fov_x_deg)
    rigs = list(orbit_path(spec, frames=48))
    frame_ms, draw_ms, sort_ms = [], [], []
    for i in range(config.warmup + config.frames):
        head = rigs[i % len(rigs)].head
        request = FrameRequest(ViewSpec(head.world_to_camera, config.fov_x_deg, head.near, head.far),
                               config.width, config.height)
        start = time.perf_counter()
        pipeline.render(request)  # sorts (synchronously) for the new pose, draws, composes, finishes
        total = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        pipeline.render(request)  # same pose: no new sort
        again = (time.perf_counter() - start) * 1e3
        if i >= config.warmup:
            frame_ms.append(total)
            draw_ms.append(again)
            if pipeline.backend == "gl":
                means = scene.splats.means.detach()
                means = means if means.is_cuda else means.cpu().numpy()
                start = time.perf_counter()
                depth_order(means, head.world_to_camera.cpu().numpy(), head.near, head.far)
                sort_ms.append((time.perf_counter() - start) * 1e3)
    psnrs = []
    for i in range(min(config.quality_frames, len(rigs))):
        head = rigs[i * len(rigs) // max(config.quality_frames, 1)].head
        request = FrameRequest(ViewSpec(head.world_to_camera, config.fov_x_deg, head.near, head.far),
                               config.width, config.height)
        pipeline.render(request)
        ours = pipeline.read_eye(0)[..., :3]
        with torch.inference_mode():
            ref = render(scene.splats, request.eye_cameras()[0], backend="torch").image[0].float().cpu().numpy()
        psnrs.append(_psnr(np.clip(ours, 0, 1), np.clip(ref, 0, 1)))
    return {"frame_ms": frame_ms, "draw_ms": draw_ms, "sort_ms": sort_ms, "psnrs": psnrs}


def run(config: GLBenchConfig) -> dict:
    """Run every (scene, source) case; returns the result object (and writes it when ``config.write``)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = standalone_context(config.gl)
    rows = []
    try:
        for scene_id in config.scenes:
            scene = resolve_scene(scene_id, config.data_dir, device)
            for source in config.sources:
                pipeline = FramePipeline(ctx, source)
                try:
                    pipeline.set_scene(scene.splats)
                    numbers = time_source(pipeline, scene, config)
                finally:
                    pipeline.release()
                rows.append(_row(scene, source, config, numbers, ctx))
                print(f"{scene_id} {source}: {rows[-1]['ms_median']:.2f} ms median, {rows[-1]['fps']:.1f} FPS "
                      f"(draw only {rows[-1]['draw_ms_median']:.2f} ms)", flush=True)
    finally:
        ctx.release()
    result = BenchResult(command="python " + " ".join(sys.argv), revision=git_revision(), gpu=device_name(device),
                         date=dt.date.today().isoformat(), rows=())
    out = result.to_json()
    out["rows"] = rows
    if config.write:
        config.out_dir.mkdir(parents=True, exist_ok=True)
        path = config.out_dir / f"{result_stem(result, config.what)}.json"
        path.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
        print(f"wrote {path}")
    return out


def _row(scene, source: str, config: GLBenchConfig, numbers: dict, ctx) -> dict:
    frame_ms, psnrs = numbers["frame_ms"], numbers["psnrs"]
    median = statistics.median(frame_ms)
    row = BenchRow(scene=scene.id, gaussians=len(scene.splats), sh_degree=scene.splats.sh_degree, path="orbit",
                   eyes=1, width=config.width, height=config.height, renderer=f"viewer-{source}", gpus=1,
                   frames=len(frame_ms), ms_median=round(median, 4), ms_p90=round(_percentile(frame_ms, 90), 4),
                   ms_p99=round(_percentile(frame_ms, 99), 4), fps=round(1000.0 / median, 2), peak_extra_mib=None,
                   psnr_min=round(min(psnrs), 3) if psnrs else None,
                   psnr_mean=round(statistics.fmean(psnrs), 3) if psnrs else None,
                   reference="torch" if psnrs else None).to_json()
    row["draw_ms_median"] = round(statistics.median(numbers["draw_ms"]), 4)
    row["sort_ms_median"] = round(statistics.median(numbers["sort_ms"]), 4) if numbers["sort_ms"] else None
    row["gl_renderer"] = ctx.info.get("GL_RENDERER", "unknown")
    row["fov_x_deg"] = config.fov_x_deg
    return row


def main() -> int:
    import tyro

    run(tyro.cli(GLBenchConfig))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
