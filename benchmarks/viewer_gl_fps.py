"""Viewer frame rate: the GL splat renderer (and optionally the CUDA frame sources) offscreen through EGL; and,
with ``--vs-bench``, the viewer's CUDA path against ``gscache bench`` on the same scene, poses and size.

Times what the viewer does when the camera moves: depth sort (numpy on CPU, torch on CUDA), the instanced splat
draw into a float eye buffer and the compose pass into the RGBA8 output, with ``ctx.finish()`` after each frame,
on the ``orbit`` poses of BENCHMARK.md (mono, one eye). Median, p90, p99 over ``--frames`` (>= 96 on the GPU
machine) after ``--warmup`` frames. Each row also carries ``draw_ms_median`` (the same frame redrawn without a new
sort: what an unchanged camera costs) and ``sort_ms_median``. PSNR is taken on ``--quality-frames`` poses against
the ``torch`` reference on the same device (0 to skip). Writes ``benchmarks/results/<date>-<gpu>-<what>.json``.

    python benchmarks/viewer_gl_fps.py --scenes guitar guitar-g4 --width 1920 --height 1080      # GPU machine
    python benchmarks/viewer_gl_fps.py --scenes assets/fixtures/guitar_2k.ply --width 64 --height 48 \\
        --frames 4 --warmup 1 --quality-frames 1 --out-dir /tmp/bench                            # CPU smoke test

``--vs-bench`` (issue 6: the viewer's CUDA path within 10% of the renderer's FPS; ``--width``/``--height`` are then
per eye, 2064 x 2208 for the protocol). For each scene, on the ``orbit`` poses of BENCHMARK.md:
(a) ``gscache bench``'s stereo frame of ``--renderer`` alone: server/bench.py's own case runner (both eyes as one
    batch, CUDA events around the call, ``--warmup`` + max(``--frames``, 48) frames);
(b) the viewer's frame, per ``--uploads`` (``auto``: CUDA memory that GL reads in place where the EGL context is
    on the CUDA GPU, or CUDA-GL interop with ``GSCACHE_VIEWER_SHARED=0``; ``host``: through pinned host memory):
    ``FramePipeline.render`` of the side-by-side request (2 x width by height; both eyes in one render call, written
    as the display image) + ``draw_to`` of the frame into a
    framebuffer of ``--window`` size (``gscache view``'s default window, 1280 x 800; ``0 0``: the frame's own size)
    + ``glFinish`` and a CUDA stream sync, wall clock per frame. On compute GPUs (H100/H200: few graphics units) a
    full-screen GL pass costs ~0.07 ms per megapixel, so the window's size is part of the figure.
Rows: the bench row (``renderer`` = the backend) and one ``viewer-<renderer>[-host]`` row per upload, with
``fps_ratio_vs_bench`` = viewer FPS / bench FPS, how the frame reached GL, and PSNR of the shown 8-bit frame against
the bench renderer's own stereo image on ``--quality-frames`` poses (100 dB: identical). JSON and plot as
``gscache bench`` writes them.

    python benchmarks/viewer_gl_fps.py --vs-bench --scenes guitar guitar-g4 --width 2064 --height 2208 \\
        --data-dir DATA --what viewer-vs-bench-2064x2208                                         # GPU machine
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
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
from renderer.backends import default_registry  # noqa: E402
from renderer.cameras import stack_cameras  # noqa: E402
from renderer.types import RenderOptions  # noqa: E402
from server.bench import PATH_FRAMES, BenchConfig, _run_scene_path, psnr  # noqa: E402
from server.bench_results import (  # noqa: E402
    BenchResult,
    BenchRow,
    device_name,
    git_revision,
    plot_result,
    result_stem,
)
from server.bench_scenes import resolve_scene  # noqa: E402
from viewer.gl_context import standalone_context  # noqa: E402
from viewer.gl_splats import depth_order  # noqa: E402
from viewer.interop import display_rgba8  # noqa: E402
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
    what: str | None = None
    """Last part of the file name; ``viewer-gl-fps`` (``viewer-vs-bench`` with ``--vs-bench``) when None."""
    write: bool = True
    vs_bench: bool = False
    """Compare the viewer's CUDA path with ``gscache bench`` (see the module docstring); width/height per eye."""
    window: tuple[int, int] = (1280, 800)
    """``--vs-bench``: the window the viewer's frame is drawn into (``gscache view``'s default size; the stereo pair
    is scaled into it as the app does); ``0 0``: a framebuffer of the frame's own size (2 x width by height)."""
    renderer: str = "native"
    """``--vs-bench``: the bench renderer and the viewer's frame source (``native``; ``torch`` for CPU smoke tests)."""
    uploads: tuple[str, ...] = ("auto",)
    """``--vs-bench``: the viewer source's upload modes to time (``auto``, ``host``, ``eyes``)."""
    plot: bool = True
    """``--vs-bench``: write the plot beside the JSON (needs matplotlib; skipped with a note when missing)."""
    revision: str | None = None
    """The revision recorded (``$GSCACHE_REVISION``, else git) when None."""


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
        try:
            ours = pipeline.read_eye(0)[..., :3]
        except ValueError:  # the display path of a CUDA source has no eye buffers: the shown 8-bit frame
            ours = pipeline.read_output().astype(np.float32) / 255.0
        with torch.inference_mode():
            ref = render(scene.splats, request.eye_cameras()[0], backend="torch").image[0].float().cpu().numpy()
        psnrs.append(_psnr(np.clip(ours, 0, 1), np.clip(ref, 0, 1)))
    return {"frame_ms": frame_ms, "draw_ms": draw_ms, "sort_ms": sort_ms, "psnrs": psnrs}


def run(config: GLBenchConfig) -> dict:
    """Run every (scene, source) case; returns the result object (and writes it when ``config.write``)."""
    if config.vs_bench:
        return run_vs_bench(config)
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
    return _write(config, device, rows, config.what or "viewer-gl-fps", plot=False)


def _revision(config: GLBenchConfig) -> str:
    return config.revision or os.environ.get("GSCACHE_REVISION") or git_revision()


def _write(config: GLBenchConfig, device: torch.device, rows: list[dict], what: str, plot: bool,
           quiet: bool = False) -> dict:
    """The result object (``BENCHMARK.md``'s file shape, rows with extra keys); written when ``config.write``."""
    result = BenchResult(command="python " + " ".join(sys.argv), revision=_revision(config), gpu=device_name(device),
                         date=dt.date.today().isoformat(), rows=())
    out = result.to_json()
    out["rows"] = rows
    if config.write:
        config.out_dir.mkdir(parents=True, exist_ok=True)
        path = config.out_dir / f"{result_stem(result, what)}.json"
        path.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
        if not quiet:
            print(f"wrote {path}")
        if plot:
            try:
                plot_result(BenchResult.from_json(out), path.with_suffix(".png"))
                print(f"wrote {path.with_suffix('.png')}")
            except ImportError as err:
                print(f"no plot ({err}); redraw it with server.bench_results.replot({str(path)!r})")
    return out


# ----- --vs-bench: the viewer's CUDA path against gscache bench --------------------------------------------------
def run_vs_bench(config: GLBenchConfig) -> dict:
    """(a) ``gscache bench``'s stereo case of ``config.renderer`` and (b) the viewer's side-by-side frame per
    upload mode, for every scene (see the module docstring); returns the result (written when ``config.write``)."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    bench = BenchConfig(scenes=tuple(config.scenes), paths=("orbit",), renderers=(config.renderer,), quality=False,
                        width=config.width, height=config.height, eyes=2, fov_x_deg=config.fov_x_deg,
                        warmup_frames=config.warmup, timed_frames=config.frames, device=str(device),
                        data_dir=config.data_dir, plot=False, progress=False)
    backends = {config.renderer: default_registry().resolve(config.renderer, device)}
    ctx = standalone_context(config.gl)
    rows: list[dict] = []
    try:
        for scene_id in config.scenes:
            scene = resolve_scene(scene_id, config.data_dir, device)
            with torch.inference_mode():
                [bench_row] = _run_scene_path(bench, scene, "orbit", backends, lambda: None, lambda _: None)
            rows.append(bench_row.to_json())
            print(f"{scene_id} bench {config.renderer}: {bench_row.ms_median:.3f} ms median, {bench_row.fps:.1f} FPS",
                  flush=True)
            on_cuda = device.type == "cuda"
            alone_ms = renderer_sustained_ms(scene, config, bench.frames_for("orbit")) if on_cuda else None
            for upload in config.uploads:
                numbers = time_viewer_stereo(ctx, scene, config, upload, bench.frames_for("orbit"))
                row = _viewer_row(scene, config, upload, numbers, bench_row, ctx)
                if alone_ms is not None:
                    row["renderer_sustained_ms"] = round(alone_ms, 4)
                    row["sustained_ratio_vs_renderer"] = round(alone_ms / numbers["sustained_ms"], 4)
                rows.append(row)
                print(f"{scene_id} {row['renderer']} ({row['upload']}): {row['ms_median']:.3f} ms median, "
                      f"{row['fps']:.1f} FPS = {row['fps_ratio_vs_bench']:.3f} x bench; sustained "
                      f"{row['sustained_ms']:.3f} ms = {row['sustained_fps_ratio_vs_bench']:.3f} x bench, "
                      f"{row.get('sustained_ratio_vs_renderer')} x the renderer alone sustained "
                      f"({row.get('renderer_sustained_ms')} ms); draw {row['draw_ms_median']:.3f} ms, "
                      f"finish+sync {row['finish_ms_median']:.3f} ms"
                      + (f" [{row['upload_note']}]" if row["upload_note"] else ""), flush=True)
            del scene
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if scene_id != config.scenes[-1]:  # a run cut short by a time limit keeps the scenes done so far
                _write(config, device, rows, config.what or "viewer-vs-bench", plot=False, quiet=True)
    finally:
        ctx.release()
    return _write(config, device, rows, config.what or "viewer-vs-bench", plot=config.plot)


def time_viewer_stereo(ctx, scene, config: GLBenchConfig, upload: str, frames: int) -> dict:
    """The viewer's side-by-side frame on the bench's orbit poses (same order: warm-up on the last poses, then
    from pose 0, cycling): render + draw into a window-sized framebuffer + glFinish + CUDA sync, wall clock."""
    spec = scene.path_spec(config.width, config.height, config.fov_x_deg)
    rigs = list(orbit_path(spec, frames=PATH_FRAMES["orbit"]))
    out_w, out_h = 2 * config.width, config.height
    win_w, win_h = window_size(config)
    pipeline = FramePipeline(ctx, config.renderer, upload=upload)
    window = ctx.framebuffer(color_attachments=[ctx.texture((win_w, win_h), 4)])  # stands in for the window
    source = pipeline.source
    sync = getattr(source, "synchronize", lambda: None)

    def request(i: int) -> FrameRequest:
        head = rigs[i % len(rigs)].head
        return FrameRequest(ViewSpec(head.world_to_camera, config.fov_x_deg, head.near, head.far), out_w, out_h,
                            stereo="side-by-side", ipd=rigs[i % len(rigs)].ipd)

    frame_ms, queued_ms, draw_ms, finish_ms = [], [], [], []
    try:
        pipeline.set_scene(scene.splats)
        for i in range(-config.warmup, frames):  # the poses are the input; the request is built in the frame
            start = time.perf_counter()
            pipeline.render(request(i), finish=False)
            queued = time.perf_counter()
            pipeline.draw_to(window, (0, 0, win_w, win_h), newest=True)  # this frame, whole
            drawn = time.perf_counter()
            ctx.finish()
            sync()
            end = time.perf_counter()
            if i >= 0:
                frame_ms.append((end - start) * 1e3)
                queued_ms.append((queued - start) * 1e3)
                draw_ms.append((drawn - queued) * 1e3)
                finish_ms.append((end - drawn) * 1e3)
        # Sustained: frames issued back to back as the viewer's loop issues them (no glFinish per frame; CUDA and GL
        # are ordered by the shared memory's event and fences, or by the interop map/unmap; the window shows the
        # newest finished frame), one finish at the end: the mean frame period.
        ctx.finish()
        sync()
        start = time.perf_counter()
        for i in range(frames):
            pipeline.render(request(i), finish=False)
            pipeline.draw_to(window, (0, 0, win_w, win_h))
        ctx.finish()
        sync()
        sustained_ms = (time.perf_counter() - start) * 1e3 / frames
        psnrs = _viewer_quality(pipeline, scene, rigs, config, request)
        path, note = getattr(source, "upload_path", None), getattr(source, "upload_note", "")
    finally:
        window.release()
        pipeline.release()
    return {"frame_ms": frame_ms, "queued_ms": queued_ms, "draw_ms": draw_ms, "finish_ms": finish_ms,
            "sustained_ms": sustained_ms, "psnrs": psnrs, "upload": path, "note": note}


def window_size(config: GLBenchConfig) -> tuple[int, int]:
    """The window the viewer's frame is drawn into: ``config.window``, or the frame's own size for ``0 0``."""
    w, h = config.window
    return (2 * config.width, config.height) if w <= 0 or h <= 0 else (int(w), int(h))


def renderer_sustained_ms(scene, config: GLBenchConfig, frames: int) -> float:
    """The renderer alone (the bench's stereo ``render`` call, no display) issued back to back on the same poses,
    one synchronisation at the end: the mean frame period, to set beside the viewer's sustained period."""
    device = scene.splats.device
    backend = default_registry().resolve(config.renderer, device)
    spec = scene.path_spec(config.width, config.height, config.fov_x_deg)
    batches = [stack_cameras(r, device, scene.splats.dtype) for r in orbit_path(spec, frames=PATH_FRAMES["orbit"])]
    background = torch.zeros(2, 3, device=device, dtype=scene.splats.dtype)
    options = RenderOptions(background=background)
    with torch.inference_mode():
        for i in range(config.warmup):
            backend.render(scene.splats, batches[i % len(batches)], options, background)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for i in range(frames):
            backend.render(scene.splats, batches[i % len(batches)], options, background)
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3 / frames


def _viewer_quality(pipeline: FramePipeline, scene, rigs, config: GLBenchConfig, request) -> list[float]:
    """PSNR of the shown frame (8 bits) against the bench renderer's stereo image of the same pose, as 8 bits."""
    if config.quality_frames <= 0:
        return []
    device = scene.splats.device
    backend = default_registry().resolve(config.renderer, device)
    background = torch.zeros(2, 3, device=device, dtype=scene.splats.dtype)
    scores = []
    for q in range(min(config.quality_frames, len(rigs))):
        i = q * len(rigs) // config.quality_frames
        pipeline.render(request(i))
        shown = torch.from_numpy(pipeline.read_output()).float() / 255.0
        with torch.inference_mode():
            cams = stack_cameras(rigs[i], device, scene.splats.dtype)
            image = backend.render(scene.splats, cams, RenderOptions(background=background), background).image
            ref = display_rgba8(image, None, None, "rgb", "side-by-side")[..., :3].cpu().float() / 255.0
        scores.append(psnr(shown[None], ref[None]))
    return scores


def _viewer_row(scene, config: GLBenchConfig, upload: str, numbers: dict, bench_row: BenchRow, ctx) -> dict:
    frame_ms, psnrs = numbers["frame_ms"], numbers["psnrs"]
    median = statistics.median(frame_ms)
    name = f"viewer-{config.renderer}" + ("" if upload == "auto" else f"-{upload}")
    row = BenchRow(scene=scene.id, gaussians=len(scene.splats), sh_degree=scene.splats.sh_degree, path="orbit",
                   eyes=2, width=config.width, height=config.height, renderer=name, gpus=1, frames=len(frame_ms),
                   ms_median=round(median, 4), ms_p90=round(_percentile(frame_ms, 90), 4),
                   ms_p99=round(_percentile(frame_ms, 99), 4), fps=round(1000.0 / median, 3), peak_extra_mib=None,
                   psnr_min=round(min(psnrs), 3) if psnrs else None,
                   psnr_mean=round(statistics.fmean(psnrs), 3) if psnrs else None,
                   reference=config.renderer if psnrs else None).to_json()
    row["fps_ratio_vs_bench"] = round(row["fps"] / bench_row.fps, 4)
    row["bench_ms_median"] = bench_row.ms_median
    row["upload"] = numbers["upload"]
    row["upload_note"] = numbers["note"]
    row["queued_ms_median"] = round(statistics.median(numbers["queued_ms"]), 4)
    row["draw_ms_median"] = round(statistics.median(numbers["draw_ms"]), 4)
    row["finish_ms_median"] = round(statistics.median(numbers["finish_ms"]), 4)
    row["sustained_ms"] = round(numbers["sustained_ms"], 4)
    row["sustained_fps"] = round(1000.0 / numbers["sustained_ms"], 3)
    row["sustained_fps_ratio_vs_bench"] = round(row["sustained_fps"] / bench_row.fps, 4)
    row["output_size"] = [2 * config.width, config.height]
    row["window"] = list(window_size(config))
    row["gl_renderer"] = ctx.info.get("GL_RENDERER", "unknown")
    row["fov_x_deg"] = config.fov_x_deg
    return row


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
