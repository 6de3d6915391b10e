"""Result files of ``bench --server`` runs: BENCHMARK.md's file shape (one row per case) and a plot beside it.

A row holds the case (scene, path, size, clients, mode), the figures of all clients together (``fps``: frames
received per second end to end, ``mtp_ms_p50/p90/p99``: motion-to-photon over every measured frame, ``errors``) and
each client's own in ``per_client``. ``renderer`` is ``<backend>-server-stream`` (what was timed: the whole path from
pose to frame, through the server).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bench_results import slug

if TYPE_CHECKING:
    from .client import StreamRun

FPS_TARGET = 90.0  # issue 7's end-to-end target, drawn on the plot


def _percentiles(values: list[float], prefix: str) -> dict[str, float | None]:
    if not values:
        return {f"{prefix}_{q}": None for q in ("p50", "p90", "p99", "mean", "max")}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {f"{prefix}_p50": round(float(p50), 3), f"{prefix}_p90": round(float(p90), 3),
            f"{prefix}_p99": round(float(p99), 3), f"{prefix}_mean": round(float(a.mean()), 3),
            f"{prefix}_max": round(float(a.max()), 3)}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.median(present)), 3) if present else None


def stream_row(run: StreamRun) -> dict[str, Any]:
    """The BENCHMARK.md result row of one case."""
    config, loaded, health = run.config, run.loaded, run.health
    errors: dict[str, int] = {}
    for client in run.clients:
        for kind, count in client.errors_by_kind.items():
            errors[kind] = errors.get(kind, 0) + count
    poses_sent = sum(c.poses_sent for c in run.clients)
    device = str(health.get("device", "unknown"))
    per_client = [{
        "client": c.client, "frames": c.frames_received, "poses_sent": c.poses_sent, "poses_dropped": c.poses_dropped,
        "fps": c.frames_per_s, "wall_s": c.wall_s,
        "mtp_ms_p50": None if c.motion_to_photon is None else c.motion_to_photon.median_ms,
        "mtp_ms_p99": None if c.motion_to_photon is None else c.motion_to_photon.p99_ms,
        "errors": c.errors, "errors_by_kind": c.errors_by_kind,
    } for c in run.clients]
    fps_each = [c.frames_per_s for c in run.clients]
    return {
        "scene": loaded["name"], "gaussians": loaded.get("gaussians"), "sh_degree": loaded.get("sh_degree"),
        "path": config.path, "eyes": 2 if config.stereo else 1, "width": config.width, "height": config.height,
        "renderer": f"{health.get('backend', 'unknown')}-server-stream", "gpus": 1 if device.startswith("cuda") else 0,
        "device": device, "format": config.format, "quality": config.quality, "clients": config.clients,
        "mode": config.mode, "pose_rate_hz": config.rate_hz, "warmup_poses": config.warmup,
        "frames": run.frames, "poses_sent": poses_sent, "poses_dropped": poses_sent - run.frames,
        "wall_s": run.wall_s, "fps": round(run.frames / run.wall_s, 3) if run.wall_s > 0 else 0.0,
        "fps_per_client_min": round(min(fps_each), 3), "fps_per_client_median": round(float(np.median(fps_each)), 3),
        **_percentiles([v for values in run.latencies_ms for v in values], "mtp_ms"),
        "server_render_ms_median": _median([c.server_render_ms_median for c in run.clients]),
        "server_encode_ms_median": _median([c.server_encode_ms_median for c in run.clients]),
        "frame_bytes_median": _median([c.frame_bytes_median for c in run.clients]),
        "errors": run.errors, "errors_by_kind": dict(sorted(errors.items())),
        "per_client": per_client,
        "reference": None, "psnr_min": None, "psnr_mean": None,
    }


def stream_result(runs: list[StreamRun], command: str, revision: str) -> dict[str, Any]:
    """The result file's object: ``{"command", "revision", "gpu", "date", "rows": [...]}``."""
    health = runs[0].health
    gpu = str(health.get("device_name") or health.get("device", "unknown"))
    return {"command": command, "revision": revision, "gpu": gpu, "date": datetime.date.today().isoformat(),
            "rows": [run.row() for run in runs]}


def write_stream_result(runs: list[StreamRun], out_dir: Path, what: str, command: str, revision: str,
                        plot: bool = True) -> tuple[Path, Path | None]:
    """Write ``<out_dir>/<date>-<gpu>-<what>.json`` and (when matplotlib imports) the ``.png`` beside it."""
    result = stream_result(runs, command, revision)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date']}-{slug(result['gpu'])}-{slug(what)}"
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    plot_path = None
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return json_path, None
        plot_path = json_path.with_suffix(".png")
        plot_stream_result(result, runs, plot_path)
    return json_path, plot_path


def _case_label(row: dict[str, Any]) -> str:
    rate = f"{row['pose_rate_hz']:g} Hz" if row["mode"] == "paced" else "closed loop"
    return f"{row['clients']} client{'s' if row['clients'] > 1 else ''}, {rate}"


def plot_stream_result(result: dict[str, Any], runs: list[StreamRun], path: Path) -> None:
    """Left: motion-to-photon histogram of each case (p50 solid, p99 dashed). Right: frames/s of each case, all
    clients together and the slowest client, beside the 90 frames/s target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13.0, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    everything = [v for run in runs for values in run.latencies_ms for v in values if v > 0]
    if everything:
        bins = np.geomspace(min(everything) * 0.9, max(everything) * 1.1, 50)
        for i, (run, row) in enumerate(zip(runs, rows)):
            values = [v for values in run.latencies_ms for v in values]
            if not values:
                continue
            colour = f"C{i}"
            left.hist(values, bins=bins, alpha=0.5, color=colour,
                      label=f"{_case_label(row)}: p50 {row['mtp_ms_p50']:.1f} ms, p99 {row['mtp_ms_p99']:.1f} ms "
                            f"(n={len(values)}, errors {row['errors']})")
            left.axvline(row["mtp_ms_p50"], color=colour, linewidth=1.2)
            left.axvline(row["mtp_ms_p99"], color=colour, linewidth=1.2, linestyle="--")
        left.set_xscale("log")
        left.legend(fontsize="x-small")
    left.set_xlabel("motion-to-photon ms (client clock: pose sent -> its frame received)")
    left.set_ylabel("frames")
    left.grid(True, which="both", alpha=0.3)
    labels = [_case_label(row) for row in rows]
    x = np.arange(len(rows))
    right.bar(x - 0.2, [row["fps"] for row in rows], width=0.4, label="all clients together")
    right.bar(x + 0.2, [row["fps_per_client_min"] for row in rows], width=0.4, label="slowest client")
    right.axhline(FPS_TARGET, color="k", linestyle=":", linewidth=1.0, label=f"{FPS_TARGET:g} frames/s")
    for xi, row in zip(x, rows):
        right.annotate(f"{row['fps']:.0f}", (xi - 0.2, row["fps"]), ha="center", va="bottom", fontsize="small")
    right.set_xticks(x, labels, fontsize="small", rotation=10)
    right.set_ylabel("frames/s received (end to end)")
    right.legend(fontsize="x-small")
    right.grid(True, axis="y", alpha=0.3)
    first = rows[0]
    eyes = "stereo" if first["eyes"] == 2 else "mono"
    fig.suptitle(f"{first['scene']} ({first['gaussians']:,} Gaussians), {first['path']} path, {eyes} "
                 f"{first['width']}x{first['height']} per eye, {first['format']} q{first['quality']}, "
                 f"{first['renderer']} - {result['gpu']} - {result['revision'][:12]} - {result['date']}",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
