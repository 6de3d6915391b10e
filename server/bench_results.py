"""Benchmark results in the ``BENCHMARK.md`` file shape: rows, the run's metadata, the JSON file and its plot."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

_REPO_ROOT = Path(__file__).resolve().parents[1]
PEER_PREFIX = "gsplat"  # renderers whose name starts with this are the peer, drawn dashed


@dataclass(frozen=True)
class BenchRow:
    """One timed case: a renderer on one scene and path. Field order is the ``BENCHMARK.md`` schema's.

    Attributes:
        scene, gaussians, sh_degree: the scene id, its Gaussian count and SH degree.
        path: ``orbit`` or ``head``; eyes: cameras per frame (2: stereo); width, height: per eye.
        renderer: the backend that was timed; gpus: GPUs used.
        frames: timed frames; ms_median, ms_p90, ms_p99: frame time; fps: 1000 / ms_median.
        peak_extra_mib: peak GPU memory above what was resident when the case began (None on CPU).
        psnr_min, psnr_mean: PSNR over the path's frames against ``reference`` (None where none).
        principal_offset: principal point offset of the left eye in pixels; written only when not (0, 0).
    """

    scene: str
    gaussians: int
    sh_degree: int
    path: str
    eyes: int
    width: int
    height: int
    renderer: str
    gpus: int
    frames: int
    ms_median: float
    ms_p90: float
    ms_p99: float
    fps: float
    peak_extra_mib: float | None
    psnr_min: float | None
    psnr_mean: float | None
    reference: str | None
    principal_offset: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        if self.principal_offset is None:
            del row["principal_offset"]
        else:
            row["principal_offset"] = list(self.principal_offset)
        return row

    @staticmethod
    def from_json(row: dict[str, Any]) -> BenchRow:
        known = {f.name for f in fields(BenchRow)}
        values = {k: v for k, v in row.items() if k in known}
        if values.get("principal_offset") is not None:
            values["principal_offset"] = tuple(values["principal_offset"])
        return BenchRow(**values)


@dataclass(frozen=True)
class BenchResult:
    """A whole benchmark run.

    Attributes:
        command: the command line that made it; revision: git sha of HEAD (``-dirty`` when the tree was);
        gpu: the device model (the CPU model for CPU runs); date: ISO date; rows: one per timed case.
    """

    command: str
    revision: str
    gpu: str
    date: str
    rows: tuple[BenchRow, ...]

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "revision": self.revision, "gpu": self.gpu, "date": self.date,
                "rows": [row.to_json() for row in self.rows]}

    @staticmethod
    def from_json(obj: dict[str, Any]) -> BenchResult:
        return BenchResult(obj["command"], obj["revision"], obj["gpu"], obj["date"],
                           tuple(BenchRow.from_json(r) for r in obj["rows"]))


@dataclass(frozen=True)
class ResultFiles:
    """Where a result was written: the JSON and the plot beside it (same stem)."""

    json_path: Path
    plot_path: Path | None


def git_revision(root: Path = _REPO_ROOT) -> str:
    """``git rev-parse HEAD`` of ``root``, with ``-dirty`` when files differ from it; ``unknown`` without git.
    ``GSCACHE_REVISION`` in the environment names it instead (a copy of the tree without ``.git``, e.g. on a GPU
    machine)."""
    named = os.environ.get("GSCACHE_REVISION", "").strip()
    if named:
        return named
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if status else sha


def device_name(device: torch.device) -> str:
    """The GPU model (``torch.cuda.get_device_name``) or, on CPU, the CPU model from ``/proc/cpuinfo``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def slug(text: str) -> str:
    """Lower-case ``text`` with every run of other characters than letters and digits turned into ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def result_stem(result: BenchResult, what: str) -> str:
    """``<date>-<gpu-slug>-<what>``, the file name of a result without its extension."""
    return f"{result.date}-{slug(result.gpu)}-{slug(what)}"


def write_result(result: BenchResult, out_dir: Path, what: str, plot: bool = True) -> ResultFiles:
    """Write ``<out_dir>/<date>-<gpu>-<what>.json`` and, if ``plot``, the ``.png`` beside it (overwriting)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result_stem(result, what)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
    plot_path = None
    if plot:
        plot_path = out_dir / f"{stem}.png"
        plot_result(result, plot_path)
    return ResultFiles(json_path, plot_path)


def plot_result(result: BenchResult, path: Path) -> None:
    """FPS against Gaussians (log x), one panel per path, one line per renderer and SH degree.

    Each renderer keeps one colour, each SH degree one marker; our renderers are drawn solid and the peer (gsplat)
    dashed, so that each figure sits beside the peer's. Points are labelled with their scene.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = sorted({row.path for row in result.rows})
    renderers = list(dict.fromkeys(row.renderer for row in result.rows))
    colours = {name: f"C{i}" for i, name in enumerate(renderers)}
    markers = {0: "o", 1: "D", 2: "s", 3: "^"}
    fig, axes = plt.subplots(1, len(paths), figsize=(7.0 * len(paths), 5.0), squeeze=False)
    for ax, path_name in zip(axes[0], paths):
        rows = [row for row in result.rows if row.path == path_name]
        for renderer in renderers:
            for sh_degree in sorted({r.sh_degree for r in rows if r.renderer == renderer}):
                line = sorted((r.gaussians, r.fps, r.scene) for r in rows
                              if (r.renderer, r.sh_degree) == (renderer, sh_degree))
                xs, ys, _ = zip(*line)
                ax.plot(xs, ys, "--" if renderer.startswith(PEER_PREFIX) else "-", color=colours[renderer],
                        marker=markers.get(sh_degree, "o"), label=f"{renderer} (SH {sh_degree})")
        for gaussians, fps, scene in {(r.gaussians, r.fps, r.scene) for r in rows if r.renderer == renderers[0]}:
            ax.annotate(scene, (gaussians, fps), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        ax.set_xscale("log")
        ax.set_xlabel("Gaussians")
        ax.set_ylabel("FPS (1000 / median frame ms)")
        first = rows[0]
        eyes = "stereo, per eye" if first.eyes == 2 else "mono"
        ax.set_title(f"{path_name}: {eyes} {first.width}x{first.height}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{result.gpu} - {result.revision[:12]} - {result.date}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(json_path: Path) -> Path:
    """Redraw the plot of a written result from its JSON; returns the ``.png`` path beside it."""
    json_path = Path(json_path)
    result = BenchResult.from_json(json.loads(json_path.read_text()))
    plot_path = json_path.with_suffix(".png")
    plot_result(result, plot_path)
    return plot_path
