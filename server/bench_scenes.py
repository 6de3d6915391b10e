"""The benchmark scenes of ``BENCHMARK.md``: ids like ``guitar``, ``playbot``, ``guitar-g8`` or ``guitar-g8-sh3``.

An id is ``<base>[-g<G>][-sh3]``:
- ``<base>`` is a scene file in the data directory (``guitar`` -> ``guitar.ply``, ``playbot`` -> ``playbot_lod3.ply``)
  or a path to any scene file that ``data.load_scene`` reads (``.ply``, ``.compressed.ply``, ``.splat``, ``.spz``);
- ``-g<G>`` tiles it G x G on the x-z plane (:func:`tile_scene`);
- ``-sh3`` adds seeded SH degree 3 coefficients (:func:`add_sh3`), after tiling, so that copies differ.

A path to a chunk file (``.gschunks``, ``gscache convert --chunks``) is a scene too (no ``-g``/``-sh3``): it is
not loaded whole (``splats`` is None unless asked for); the streaming renderers read it chunk by chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from data import load_scene, open_chunk_file
from data.chunk_file import is_chunk_file
from renderer.lod import build_chunked_scene
from renderer.paths import PathSpec
from renderer.splats import SH_COEFFS_FOR_DEGREE, Splats

SH_DEGREE_OF = {k: d for d, k in SH_COEFFS_FOR_DEGREE.items()}

BASE_SCENE_FILES: dict[str, str] = {"guitar": "guitar.ply", "playbot": "playbot_lod3.ply"}
_ID_PATTERN = re.compile(r"^(?P<base>.+?)(?:-g(?P<grid>\d+))?(?P<sh3>-sh3)?$")
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SceneId:
    """A parsed scene id.

    Attributes:
        base: the base scene's name (a key of ``BASE_SCENE_FILES``) or a path to a scene file.
        grid: copies per side (1: not tiled).
        sh3: whether SH degree 3 coefficients are added.
    """

    base: str
    grid: int = 1
    sh3: bool = False


@dataclass(frozen=True)
class BenchScene:
    """A resolved benchmark scene.

    Attributes:
        id: the scene id it was made from.
        splats: the Gaussians (on the device asked for); None for a chunk file loaded without them.
        center: centre of the scene (all copies) ``(x, y, z)``.
        extent: largest extent of one copy (bounding box of the means).
        grid: copies per side.
        chunks: the chunk file of a ``.gschunks`` scene (else None: :meth:`chunked` builds the chunks).
        device: where the scene renders.
    """

    id: str
    splats: Splats | None
    center: tuple[float, float, float]
    extent: float
    grid: int
    chunks: object | None = None  # data.ChunkFile
    device: torch.device | None = None

    @property
    def gaussians(self) -> int:
        return len(self.splats) if self.splats is not None else int(self.chunks.num_gaussians)

    @property
    def sh_degree(self) -> int:
        return self.splats.sh_degree if self.splats is not None else SH_DEGREE_OF[self.chunks.sh_coeffs]

    def chunked(self, chunk_size: int = 65536, lod_levels: int = 0):  # -> ChunkFile | ChunkedScene
        """The chunk source of the scene: its chunk file, or its splats cut into chunks (in memory)."""
        if self.chunks is not None:
            return self.chunks
        return build_chunked_scene(self.splats, chunk_size, lod_levels, device=self.splats.device)

    def path_spec(self, width: int = 2064, height: int = 2208, fov_x_deg: float = 90.0,
                  principal_offset: tuple[float, float] = (0.0, 0.0)) -> PathSpec:
        """The :class:`PathSpec` the ``orbit`` and ``head`` paths need for this scene."""
        return PathSpec(center=self.center, extent=self.extent, grid=self.grid, width=width, height=height,
                        fov_x_deg=fov_x_deg, principal_offset=principal_offset)


def parse_scene_id(scene_id: str) -> SceneId:
    """Split ``<base>[-g<G>][-sh3]`` into a :class:`SceneId`; raise ``ValueError`` on a malformed id."""
    match = _ID_PATTERN.match(scene_id)
    if not scene_id or match is None:
        raise ValueError(f"scene: expected '<base>[-g<G>][-sh3]' such as 'guitar-g8-sh3', got {scene_id!r}")
    grid = int(match["grid"]) if match["grid"] else 1
    if grid < 1:
        raise ValueError(f"scene {scene_id!r}: grid must be >= 1, got {grid}")
    return SceneId(base=match["base"], grid=grid, sh3=match["sh3"] is not None)


def default_data_dir() -> Path:
    """``../shared/data/playcanvas_splats`` beside the repository root (may not exist on this machine)."""
    return (_REPO_ROOT.parent / "shared" / "data" / "playcanvas_splats").resolve()


def scene_file(base: str, data_dir: Path | None) -> Path:
    """The scene file of a base scene name or path; raise ``FileNotFoundError`` naming the missing file."""
    if base in BASE_SCENE_FILES:
        folder = default_data_dir() if data_dir is None else Path(data_dir)
        path = folder / BASE_SCENE_FILES[base]
        hint = "pass --data-dir with the folder that holds it"
    else:
        path = Path(base)
        hint = f"known scene names: {', '.join(BASE_SCENE_FILES)}; other scenes are given as a path to a scene file"
    if not path.is_file():
        raise FileNotFoundError(f"scene {base!r}: file {path} not found; {hint}")
    return path


def resolve_scene(scene_id: str, data_dir: Path | None = None, device: torch.device | str = "cpu",
                  sh_seed: int = 0, sh_sigma: float = 0.15, load_chunk_splats: bool = True) -> BenchScene:
    """Load, tile and colour the scene named ``scene_id`` onto ``device`` (see the module docstring).

    A chunk file's Gaussians are loaded (level 0, onto ``device``) only when ``load_chunk_splats``.
    """
    if is_chunk_file(scene_id):
        return _chunk_file_scene(scene_id, torch.device(device), load_chunk_splats)
    parsed = parse_scene_id(scene_id)
    base = load_scene(scene_file(parsed.base, data_dir)).to(device)
    lo, hi = base.bounds()
    extent = float((hi - lo).max())
    if not extent > 0:
        raise ValueError(f"scene {scene_id!r}: the means span no volume (bounding box {lo.tolist()}..{hi.tolist()})")
    splats = tile_scene(base, parsed.grid) if parsed.grid > 1 else base
    if parsed.sh3:
        splats = add_sh3(splats, seed=sh_seed, sigma=sh_sigma)
    lo, hi = splats.bounds()
    center = tuple(float(v) for v in (lo + hi) / 2)
    return BenchScene(id=scene_id, splats=splats, center=center, extent=extent, grid=parsed.grid,  # type: ignore[arg-type]
                      device=splats.device)


def _chunk_file_scene(path: str, device: torch.device, load_splats: bool) -> BenchScene:
    from renderer.streaming import StreamedScene

    chunks = open_chunk_file(path)
    center, extent = StreamedScene(chunks, 1).frame()
    splats = chunks.load_level(0).to(device) if load_splats else None
    return BenchScene(id=path, splats=splats, center=tuple(center), extent=extent, grid=1, chunks=chunks,
                      device=device)


def tile_scene(splats: Splats, grid: int) -> Splats:
    """``grid`` x ``grid`` copies of ``splats`` on the x-z plane (the ground of a y-down scene), grid centred.

    Copies are ``1.1 x`` the largest extent of one copy apart (bounding box of the means); the grid's centre is the
    original's position, so a scene centred at the origin stays centred. Copy ``(i, j)`` is shifted by
    ``((i - (G - 1) / 2) s, 0, (j - (G - 1) / 2) s)``; rows are ordered copy by copy.

    Returns:
        :class:`Splats` with ``G * G * N`` Gaussians, on the input's device.
    """
    if grid < 1:
        raise ValueError(f"grid: expected >= 1, got {grid}")
    lo, hi = splats.bounds()
    spacing = 1.1 * float((hi - lo).max())
    steps = (torch.arange(grid, dtype=torch.float64) - (grid - 1) / 2) * spacing  # [G]
    gi, gj = torch.meshgrid(steps, steps, indexing="ij")
    offsets = torch.stack([gi.reshape(-1), torch.zeros(grid * grid, dtype=torch.float64), gj.reshape(-1)], -1)
    offsets = offsets.to(splats.device, splats.dtype)  # [G*G, 3]
    copies = grid * grid
    means = (splats.means[None] + offsets[:, None, :]).reshape(-1, 3)
    return Splats(
        means=means,
        quats=splats.quats.repeat(copies, 1),
        log_scales=splats.log_scales.repeat(copies, 1),
        opacity_logits=splats.opacity_logits.repeat(copies),
        sh=splats.sh.repeat(copies, 1, 1),
    )


def add_sh3(splats: Splats, seed: int = 0, sigma: float = 0.15) -> Splats:
    """The scene with SH degree 3: its DC term kept, the 15 higher coefficients drawn from ``N(0, sigma^2)``.

    The draw uses a CPU generator seeded with ``seed``, so it is the same on every device. Existing higher-order
    coefficients are replaced.

    Returns:
        :class:`Splats` with ``sh`` ``[N, 16, 3]``.
    """
    if not sigma >= 0:
        raise ValueError(f"sigma: expected >= 0, got {sigma}")
    generator = torch.Generator().manual_seed(seed)
    k = SH_COEFFS_FOR_DEGREE[3]
    rest = torch.randn((len(splats), k - 1, 3), generator=generator, dtype=torch.float32) * sigma
    sh = torch.cat([splats.sh[:, :1], rest.to(splats.device, splats.dtype)], dim=1)
    return Splats(splats.means, splats.quats, splats.log_scales, splats.opacity_logits, sh.contiguous())
