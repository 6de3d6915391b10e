"""What showing a CUDA frame in GL costs per frame: the viewer's display overhead split into its parts.

Companion of ``viewer_gl_fps.py --vs-bench`` (issue 6: the viewer's CUDA path within 10% of the renderer's FPS).
On the ``orbit`` poses of BENCHMARK.md (stereo, ``--width`` x ``--height`` per eye), each variant is issued back to
back for ``--frames`` frames with one synchronisation at the end (the sustained frame period, as the viewer's loop
runs), in an EGL context on the CUDA GPU:

- ``renderer``: the bench's stereo render call alone (cameras stacked once);
- ``viewer_render``: the viewer's native frame source (eye geometry uploaded per frame), no display;
- ``interop_write``: + the display kernel into the registered RGBA8 output texture (CUDA-GL map/unmap), no GL draw;
- ``shared_write``: + the display kernel into CUDA memory that GL imported once (``viewer/gl_shared.py``), no draw;
- ``interop_write_window_size``: + the same into a window-sized texture from window-sized eyes instead (what a
  window-sized present would pay for the exchange);
- ``gl_draw_only``: + a window-sized GL draw per frame that reads no CUDA output (GL's share alone);
- ``gl_switch_only``: + a GL clear of one pixel and a flush per frame (what any GL work between two CUDA frames
  costs: the GPU switches between the GL and the CUDA context);
- ``shared_draw_1px``: + the shared write and its draw into a one-pixel viewport (the exchange without the fill);
- ``viewer_frame``: the viewer's whole frame, ``FramePipeline.render`` + ``draw_to`` the window (what
  ``--vs-bench`` times): the frame through the shared memory, the window showing the newest finished frame;
- ``viewer_frame_newest``: the same, the window waiting for the newest frame (``draw_to(..., newest=True)``);
- ``viewer_frame_interop``: the same through CUDA-GL interop (``GSCACHE_VIEWER_SHARED=0``: the path before the
  shared memory);
- ``viewer_frame_present_every_4th``: rendering every frame, displaying every 4th (how the exchange amortises);
- ``viewer_render_synced``: the viewer's native frame source, the host waiting for each frame (baseline of the next);
- ``gl_switch_idle``: + the one-pixel clear and flush issued while the CUDA stream is idle (the switch with nothing
  of CUDA's to preempt);
- ``viewer_frame_draw_first``: the window drawn (newest finished frame) before the next frame is issued;
- ``viewer_frame_synced_draw``: the host waits for each frame, then draws it and flushes (GL runs while CUDA idles);
- ``viewer_frame_paced_144hz`` / ``_240hz``: every frame rendered, the window drawn at most 144 / 240 times a second
  (a display's refresh: frames between two presents are rendered in full but not shown).

Rows carry ``delta_ms`` against ``renderer``. JSON and plot in ``--out-dir``.

    python benchmarks/viewer_overhead.py --scenes guitar guitar-g4 guitar-g8 --data-dir DATA   # GPU machine, EGL
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.result_files import write_result_files  # noqa: E402


def sustained_ms(fn, frames: int, finish) -> float:
    """Mean period of ``fn(i)`` issued back to back (8 warm-up calls, one ``finish`` before and after)."""
    for i in range(8):
        fn(i)
    finish()
    start = time.perf_counter()
    for i in range(frames):
        fn(i)
    finish()
    return (time.perf_counter() - start) * 1e3 / frames


def measure_scene(ctx, scene, args) -> dict[str, float]:
    """Sustained ms per frame of every variant (see the module doc) for one scene."""
    from renderer import orbit_path
    from renderer.backends import default_registry
    from renderer.cameras import stack_cameras
    from renderer.native import load_native
    from renderer.types import RenderOptions
    from server.bench import PATH_FRAMES
    from viewer.gl_shared import SHARED_ENV, SharedDisplay
    from viewer.interop import GLImage
    from viewer.pipeline import FramePipeline, FrameRequest, ViewSpec

    device = scene.splats.device
    spec = scene.path_spec(args.width, args.height, 90.0)
    rigs = list(orbit_path(spec, frames=PATH_FRAMES["orbit"]))
    backend = default_registry().resolve("native", device)
    batches = [stack_cameras(r, device, torch.float32) for r in rigs]
    background = torch.zeros(2, 3, device=device)
    options = RenderOptions(background=background)

    def request(i: int) -> FrameRequest:
        head = rigs[i % len(rigs)].head
        return FrameRequest(ViewSpec(head.world_to_camera, 90.0, head.near, head.far), 2 * args.width, args.height,
                            stereo="side-by-side", ipd=rigs[i % len(rigs)].ipd)

    def finish() -> None:
        ctx.finish()
        torch.cuda.synchronize(device)

    pipeline = FramePipeline(ctx, "native", upload="auto")
    pipeline.set_scene(scene.splats)
    source = pipeline.source
    interop_pipeline = FramePipeline(ctx, "native", upload="auto")
    interop_pipeline.set_scene(scene.splats)
    with mock.patch.dict(os.environ, {SHARED_ENV: "0"}):
        interop_pipeline.render(request(0))  # decides its upload path once: interop
    assert interop_pipeline.source.upload_path == "interop", interop_pipeline.source.upload_note
    settings = request(0).settings
    geometry = [request(i).eye_geometry() for i in range(len(rigs))]
    win_w, win_h = args.window
    window = ctx.framebuffer(color_attachments=[ctx.texture((win_w, win_h), 4)])
    full = ctx.texture((2 * args.width, args.height), 4)
    small = ctx.texture((win_w, win_h), 4)
    full_image, small_image = GLImage(full, device), GLImage(small, device)
    shared = SharedDisplay(ctx, 2 * args.width, args.height, device)
    small_eyes = torch.rand(2, win_h, win_w // 2, 3, device=device)
    ops = load_native(device)

    def draw(texture) -> None:
        window.use()
        window.viewport = (0, 0, win_w, win_h)
        pipeline._draw_texture(texture, flip=True)

    def render(i: int):
        return source._render(geometry[i % len(geometry)], settings)

    def bench_render(i: int) -> None:
        with torch.inference_mode():
            backend.render(scene.splats, batches[i % len(batches)], options, background)

    def write(i: int) -> None:
        full_image.write(render(i).image, None, None, "rgb", "side-by-side")

    def write_shared(i: int) -> None:
        shared.write(render(i).image, None, None, "rgb", "side-by-side")

    def write_small(i: int) -> None:
        render(i)
        small_image.write(small_eyes, None, None, "rgb", "side-by-side")

    def draw_only(i: int) -> None:
        ops.display_pack(render(i).image, None, None, 0, 1, [0.0, 0.0], [1.0, 1.0])
        draw(small)

    def switch_only(i: int) -> None:
        render(i)
        window.use()
        window.viewport = (0, 0, 1, 1)
        ctx.clear(0.0, 0.0, 0.0, 1.0, viewport=(0, 0, 1, 1))
        shared._gl.glFlush()

    def shared_draw_1px(i: int) -> None:
        write_shared(i)
        shared.draw(window, (0, 0, 1, 1), flip=True, newest=False)

    def viewer_frame(i: int) -> None:
        pipeline.render(request(i), finish=False)
        pipeline.draw_to(window, (0, 0, win_w, win_h))

    def viewer_frame_newest(i: int) -> None:
        pipeline.render(request(i), finish=False)
        pipeline.draw_to(window, (0, 0, win_w, win_h), newest=True)

    def viewer_frame_interop(i: int) -> None:
        interop_pipeline.render(request(i), finish=False)
        interop_pipeline.draw_to(window, (0, 0, win_w, win_h))

    def every_4th(i: int) -> None:
        if i % 4:
            render(i)
        else:
            viewer_frame(i)

    def render_synced(i: int) -> None:
        render(i)
        torch.cuda.synchronize(device)

    def switch_idle(i: int) -> None:
        render_synced(i)
        window.use()
        ctx.clear(0.0, 0.0, 0.0, 1.0, viewport=(0, 0, 1, 1))
        shared._gl.glFlush()

    def draw_first(i: int) -> None:
        pipeline.draw_to(window, (0, 0, win_w, win_h))
        pipeline.render(request(i), finish=False)

    def synced_draw(i: int) -> None:
        pipeline.render(request(i), finish=False)
        source.synchronize()
        pipeline.draw_to(window, (0, 0, win_w, win_h), newest=True)
        shared._gl.glFlush()

    def paced(hz: float):
        last = [-1.0]

        def frame(i: int) -> None:
            pipeline.render(request(i), finish=False)
            now = time.perf_counter()
            if now - last[0] >= 1.0 / hz:
                pipeline.draw_to(window, (0, 0, win_w, win_h))
                last[0] = now
        return frame

    variants = {"renderer": bench_render, "viewer_render": render, "interop_write": write,
                "interop_write_window_size": write_small, "shared_write": write_shared, "gl_draw_only": draw_only,
                "gl_switch_only": switch_only, "shared_draw_1px": shared_draw_1px,
                "viewer_frame": viewer_frame, "viewer_frame_newest": viewer_frame_newest,
                "viewer_frame_interop": viewer_frame_interop, "viewer_frame_present_every_4th": every_4th,
                "viewer_render_synced": render_synced, "gl_switch_idle": switch_idle,
                "viewer_frame_draw_first": draw_first, "viewer_frame_synced_draw": synced_draw,
                "viewer_frame_paced_144hz": paced(144.0), "viewer_frame_paced_240hz": paced(240.0)}
    if args.variants:
        unknown = sorted(set(args.variants) - set(variants))
        if unknown:
            raise SystemExit(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(variants)}")
        variants = {k: v for k, v in variants.items() if k == "renderer" or k in args.variants}
    try:
        out = {name: sustained_ms(fn, args.frames, finish) for name, fn in variants.items()}
        assert pipeline.source.upload_path == "shared", pipeline.source.upload_note
    finally:
        full_image.release()
        small_image.release()
        shared.release()
        pipeline.release()
        interop_pipeline.release()
        for res in (window, full, small):
            res.release()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["guitar", "guitar-g4", "guitar-g8"])
    parser.add_argument("--width", type=int, default=2064)
    parser.add_argument("--height", type=int, default=2208)
    parser.add_argument("--window", type=int, nargs=2, default=(1280, 800))
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--variants", nargs="*", default=None, help="only these (and renderer); default: all")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--revision", default=None)
    args = parser.parse_args(argv)

    from server.bench_results import device_name
    from server.bench_scenes import resolve_scene
    from viewer.gl_context import standalone_context

    if not torch.cuda.is_available():
        raise SystemExit("viewer_overhead.py needs a CUDA GPU (and EGL on it)")
    device = torch.device("cuda", torch.cuda.current_device())
    ctx = standalone_context("egl")
    rows = []
    try:
        for scene_id in args.scenes:
            scene = resolve_scene(scene_id, args.data_dir, device)
            times = measure_scene(ctx, scene, args)
            for variant, ms in times.items():
                rows.append({"scene": scene.id, "gaussians": len(scene.splats), "path": "orbit", "eyes": 2,
                             "width": args.width, "height": args.height, "variant": variant,
                             "sustained_ms": round(ms, 4), "delta_ms": round(ms - times["renderer"], 4),
                             "window": list(args.window), "frames": args.frames})
                print(f"{scene.id:10s} {variant:32s} {ms:7.3f} ms  ({ms - times['renderer']:+.3f})", flush=True)
            del scene
            torch.cuda.empty_cache()
        renderer_name = ctx.info.get("GL_RENDERER", "unknown")
    finally:
        ctx.release()
    gpu = device_name(device)
    write_result_files(args.out_dir, "viewer-overhead",
                       "python benchmarks/viewer_overhead.py " + " ".join(argv or sys.argv[1:]), args.revision, gpu,
                       rows, lambda png: plot(png, rows, gpu), gl_renderer=renderer_name)
    return 0


def plot(path: Path, rows: list[dict], gpu: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = list(dict.fromkeys(r["scene"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "renderer"))
    fig, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / len(variants)
    for k, variant in enumerate(variants):
        values = [next(r["delta_ms"] for r in rows if r["scene"] == s and r["variant"] == variant) for s in scenes]
        bars = ax.bar([i + k * width for i in range(len(scenes))], values, width, label=variant)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(scenes))], scenes)
    ax.set_ylabel("ms per frame over the renderer alone")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"viewer display overhead, stereo {rows[0]['width']}x{rows[0]['height']} per eye ({gpu})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
