"""The ``gscache`` command: one console script, a thin typed layer (tyro) over library calls.

Bad input ends with a one-line error on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro
from rich.console import Console
from rich.table import Table

from server.bench import BenchConfig, bench_main
from server.cli import Serve
from training.cli import Train
from viewer.cli import View

from .render_job import RenderConfig, RenderRun, run_render

EXIT_BAD_INPUT = 2


@dataclass
class Info:
    """Print what a scene file holds: count, SH degree, bounds, memory."""

    scene: tyro.conf.Positional[Path]
    drop_nonfinite: bool = False

    def run(self, console: Console) -> None:
        from data import scene_info

        info = scene_info(self.scene, nonfinite="drop" if self.drop_nonfinite else "error")
        table = Table(title=str(self.scene), show_header=False)
        table.add_row("format", info.format)
        table.add_row("gaussians", f"{info.count:,}")
        table.add_row("SH degree", str(info.sh_degree))
        table.add_row("bounds min", _vec(info.bounds_min))
        table.add_row("bounds max", _vec(info.bounds_max))
        table.add_row("memory (float32)", f"{info.nbytes / 2**20:.2f} MiB")
        if info.dropped:
            table.add_row("dropped (NaN/Inf)", f"{info.dropped:,}")
        console.print(table)


@dataclass
class Convert:
    """Convert a scene between formats (reads .ply, .compressed.ply, .splat, .spz; writes .ply, .splat), or with
    --chunks into a chunk file for streaming large scenes (octree chunks, optional levels of detail)."""

    src: tyro.conf.Positional[Path]
    dst: tyro.conf.Positional[Path]
    drop_nonfinite: bool = False
    chunks: bool = False
    """write a chunk file (data/chunk_file.py) for streaming under a GPU memory budget"""
    chunk_size: int = 65536
    """with --chunks: the most Gaussians per chunk"""
    lod_levels: int = 0
    """with --chunks: coarser levels of detail per chunk (each merges 4x more Gaussians by moment matching)"""

    def run(self, console: Console) -> None:
        from data import convert_scene, convert_to_chunks

        nonfinite = "drop" if self.drop_nonfinite else "error"
        if self.chunks:
            info = convert_to_chunks(self.src, self.dst, self.chunk_size, self.lod_levels, nonfinite=nonfinite)
            console.print(f"wrote {self.dst} ({info.num_gaussians:,} Gaussians in {info.num_chunks:,} chunks, "
                          f"{info.num_levels} level(s) of detail, {info.file_bytes / 2**20:.1f} MiB)")
            return
        count = convert_scene(self.src, self.dst, nonfinite=nonfinite)
        console.print(f"wrote {self.dst} ({count:,} Gaussians)")


@dataclass
class Render(RenderConfig):
    """Render a scene (orbit or given cameras) to PNG files and print frame times."""

    scene: tyro.conf.Positional[Path | None] = None

    def run(self, console: Console) -> None:
        _report(run_render(self, console), console)


@dataclass
class Demo(RenderConfig):
    """Render the bundled scene on an orbit into ./gscache-demo (no arguments needed)."""

    out: Path = Path("gscache-demo")

    def run(self, console: Console) -> None:
        console.print(f"rendering the bundled scene into {self.out}/ (credits: assets/scenes/SOURCE.md)")
        _report(run_render(self, console), console)


@dataclass(frozen=True)
class Bench(BenchConfig):
    """Run the benchmark protocol of BENCHMARK.md (scenes x paths x renderers, peers in the same run) and write the
    result JSON and plot; with --server URL, measure a running server's motion-to-photon latency instead."""

    server: str | None = None
    """URL of a running `gscache serve` (client mode: poses over /stream, latency per frame)."""
    token: str | None = None
    """With --server: the server's token (default: $GSCACHE_SERVER_TOKEN)."""
    poses: int = 120
    """With --server: measured poses."""
    rate_hz: float = 0.0
    """With --server: 0 for closed loop, else the rate poses are sent at."""

    def run(self, console: Console) -> None:
        if self.server is None:
            bench_main(self)
            return
        from server.cli import BenchClient

        BenchClient(server=self.server, token=self.token, poses=self.poses, warmup=self.warmup_frames,
                    rate_hz=self.rate_hz, path=self.paths[0], width=self.width, height=self.height,
                    mono=self.eyes == 1, fov=self.fov_x_deg,
                    out=self.out_dir / "server-latency.json").run(console)


def _vec(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _report(run: RenderRun, console: Console) -> None:
    table = Table(title=f"frame times ({run.device})")
    table.add_column("frame", justify="right")
    table.add_column("ms", justify="right")
    for i, ms in enumerate(run.frame_ms):
        table.add_row(str(i), f"{ms:.1f}")
    console.print(table)
    console.print(f"median {run.median_ms:.1f} ms per frame; wrote {len(run.files)} files")


Command = (
    Annotated[Render, tyro.conf.subcommand("render")]
    | Annotated[Demo, tyro.conf.subcommand("demo")]
    | Annotated[Info, tyro.conf.subcommand("info")]
    | Annotated[Convert, tyro.conf.subcommand("convert")]
    | Annotated[Train, tyro.conf.subcommand("train")]
    | Annotated[View, tyro.conf.subcommand("view")]
    | Annotated[Serve, tyro.conf.subcommand("serve")]
    | Annotated[Bench, tyro.conf.subcommand("bench")]
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gscache`` console script; returns the exit code."""
    command = tyro.cli(Command, args=argv, prog="gscache")  # type: ignore[arg-type]
    console = Console()
    try:
        command.run(console)
    except KeyboardInterrupt:
        Console(stderr=True).print("gscache: interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - reduced to one line below for the expected kinds
        if not _is_user_error(err):
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"gscache: error: {err}", markup=False)
        return EXIT_BAD_INPUT
    return 0


def _is_user_error(err: Exception) -> bool:
    """Errors caused by input (files, arguments, unavailable backends) rather than bugs."""
    from renderer import BackendUnavailableError

    return isinstance(err, ValueError | OSError | BackendUnavailableError)


if __name__ == "__main__":
    sys.exit(main())
