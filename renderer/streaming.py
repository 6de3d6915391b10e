"""Large scenes under a GPU memory budget: a host chunk store, a GPU chunk cache (LRU), prefetch, level of detail,
and rendering in depth slabs when the visible set does not fit the budget at once.

A scene cut into chunks with levels of detail (:mod:`renderer.lod`; on disk :class:`data.chunk_file.ChunkFile`) is
rendered by :class:`StreamingRenderer`:

1. **Visible set** (per refresh): the chunks whose bounding spheres (over all their levels) reach inside a guard
   frustum around the head (:class:`renderer.chunks.GuardFrustum`: wider than the view by ``guard_angle_deg`` and
   grown by ``guard_margin`` plus half the IPD). It is kept while the head stays inside the guard, exactly as the
   frame cache keeps its visible set, so culling never changes the image.
2. **Level of detail**: per visible chunk, the coarsest level whose geometric error, projected at the chunk's
   nearest possible distance (centre distance minus its radius and the guard margin), stays within
   ``lod_threshold_px`` pixels; ``lod_threshold_px=None`` draws level 0 only. With LOD on, if the chosen entries do
   not fit the chunk cache, the farthest chunks are coarsened further. Nothing is dropped: what does not fit is
   streamed (4).
3. **Residency**: entries live in host memory (:class:`HostChunkStore`, pinned on CUDA, read from the source on
   first use or all at once with :meth:`HostChunkStore.preload`) and are copied to a GPU chunk cache
   (:class:`GpuChunkCache`) that evicts the least recently used entries outside the current visible set, never
   holding more than its byte budget. On CUDA the copies run on a side stream; the render stream waits on each
   copy's event (no host synchronisation) and ``record_stream`` keeps the caching allocator from reusing a copy's
   memory before the render stream is done with it. Host buffers are never reused, so a copy cannot read memory
   being refilled. On the CPU the copies are synchronous (same API).
4. **Render**, in one of two ways, chosen per frame from the memory model below:

   - *one batch*: the visible entries (all in the cache) are concatenated once per refresh into one
     :class:`Splats`, rendered by :func:`renderer.render` or, with ``cache_config``, a :class:`renderer.FrameCache`;
   - *depth slabs*, when the visible set with the rasterizer's temporaries does not fit: the visible Gaussians are
     cut by their camera-space depth ``z`` into slabs ``[z_k, z_k+1)`` of at most the frame's batch capacity,
     rendered front to back and composited (``C += T C_k``, ``T *= 1 - alpha_k``). Every Gaussian is drawn in
     exactly one slab and slabs are in depth order, so the image is the one-pass render's (the rasterizer blends
     in depth order too) up to the transmittance cut-off: the one-pass render stops a pixel before the Gaussian
     that would take its transmittance under ``1e-4`` and drops everything behind it, while a slab starts again at
     ``T = 1``, so the slabs behind add what was dropped: at most the stopped pixel's transmittance, ``1e-4`` to
     ``1e-2``, only on opaque pixels (PSNR far above 40 dB). Entries come in depth order of their
     bounding spheres; the ones that do not fit in the cache beside the visible set are copied for the slab and
     freed after it (the cache keeps the nearest ones, so streaming a visible set larger than the cache does not
     thrash it), and the copies for the next slab run on the side stream while the current slab renders. Both eyes
     of a stereo rig share the depth (parallel axes); other camera sets are rendered one camera at a time. The
     frame cache is not used in this mode.
5. **Prefetch**: the next head pose is extrapolated from the last two (``prefetch_frames`` ahead) and the entries
   its guard would need are copied in the background, without evicting any entry the current frame uses.

Memory: ``gpu_budget_bytes`` is everything the renderer allocates on the device: the chunk cache
(``cache_fraction`` of it) and the frame. The frame's share is sized with the native rasterizer's measured needs
(``cuda/NOTES.md``): per (camera, Gaussian) item 48 B of projected footprints plus the larger of 20 B (depth sort)
and 16 B per (camera, tile) pair (pair sort), plus the batch's own copy of its Gaussians, the frame outputs
(colour, alpha, depth), 64 MiB of scratch (sort workspace, tile offsets) and, for slabs, the accumulators, the
streamed entries of two slabs and the selection buffers (:meth:`StreamingRenderer.batch_capacity`). Pairs per item
start at ``pairs_per_item`` and then follow what the rasterizer reported in the last frame (its maximum, with a 25%
margin). Not modelled: a :class:`FrameCache`'s own buffers (``cache_config``) and the caching allocator's rounding.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .cameras import Camera, StereoRig, as_camera_list, stack_cameras
from .chunks import GuardFrustum
from .frame_cache import CacheConfig, FrameCache, head_of, rotation_angle, view_tangents
from .lod import floats_per_gaussian
from .render import render
from .splats import SH_COEFFS_FOR_DEGREE, Splats
from .types import RenderMode, RenderOutput, RenderStats

ChunkKey = tuple[int, int]  # (chunk, level)
_SH_DEGREE_OF = {k: d for d, k in SH_COEFFS_FOR_DEGREE.items()}
_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")

# The native rasterizer's device memory per (camera, Gaussian) item and per (camera, tile) pair (cuda/NOTES.md).
PROJECTED_BYTES = 48  # means2d 8, conics 12, depth 4, opacity 4, colour 12, radii 8
DEPTH_SORT_BYTES = 20  # keys, items, order, prefix sums of the depth sort
PAIR_BYTES = 16  # the pair sort's double buffers (keys and values)
SCRATCH_BYTES = 64 << 20  # cub scratch, tile offsets and small tensors


class ChunkSource(Protocol):
    """What the streaming renderer reads: :class:`renderer.lod.ChunkedScene` (in memory) or
    :class:`data.chunk_file.ChunkFile` (on disk). Metadata are CPU tensors indexed ``[chunk, level]``."""

    num_chunks: int
    num_levels: int
    sh_coeffs: int
    counts: Tensor  # [M, L] int64
    centers: Tensor  # [M, L, 3]
    radii: Tensor  # [M, L]
    errors: Tensor  # [M, L]

    def read(self, chunk: int, level: int = 0) -> Tensor:
        """The packed entry ``[count * (11 + 3 K)]`` (float32 CPU)."""
        ...


MIB = 1 << 20


@dataclass(frozen=True, eq=False)
class StreamedScene:
    """A chunked scene to render under a GPU memory budget: what ``gscache view``/``serve``/``bench`` hold in place
    of :class:`Splats` for a chunk file (``len()`` and ``sh_degree`` as for splats; :meth:`renderer` makes the
    :class:`StreamingRenderer`).

    Attributes:
        source: the chunk source (a :class:`data.chunk_file.ChunkFile` or a :class:`renderer.lod.ChunkedScene`).
        gpu_budget_bytes: the renderer's budget; lod_threshold_px: its LOD threshold (None: level 0 only).
        path: the chunk file, when the scene is one.
    """

    source: ChunkSource
    gpu_budget_bytes: int
    lod_threshold_px: float | None = None
    path: Path | None = None

    @staticmethod
    def open(path: str | Path, gpu_budget_mib: float | None, lod_threshold_px: float | None = None) -> StreamedScene:
        """Open the chunk file ``path`` for rendering under ``gpu_budget_mib``.

        Raises:
            ValueError: no budget, a budget whose chunk cache cannot hold the largest chunk, or a malformed file
                (:class:`data.SceneFormatError`).
        """
        from data.chunk_file import open_chunk_file

        if gpu_budget_mib is None:
            raise ValueError(f"{Path(path).name}: a chunk file renders under a GPU memory budget; pass "
                             "--gpu-budget-mib MIB")
        if not gpu_budget_mib > 0:
            raise ValueError(f"--gpu-budget-mib: expected > 0, got {gpu_budget_mib}")
        scene = StreamedScene(open_chunk_file(path), int(gpu_budget_mib * MIB), lod_threshold_px, Path(path))
        scene.renderer(backend="torch", device="cpu")  # checks the budget against the largest chunk now
        return scene

    def __len__(self) -> int:
        return int(self.source.counts[:, 0].sum()) if self.source.num_chunks else 0

    @property
    def sh_degree(self) -> int:
        return _SH_DEGREE_OF[self.source.sh_coeffs]

    def frame(self) -> tuple[list[float], float]:
        """Centre and largest side of the level-0 bounding box of the means (from the chunk metadata)."""
        if self.source.num_chunks == 0:
            return [0.0, 0.0, 0.0], 1.0
        lo = self.source.aabb_min[:, 0].amin(dim=0).double()
        hi = self.source.aabb_max[:, 0].amax(dim=0).double()
        extent = float((hi - lo).max())
        return ((lo + hi) / 2).tolist(), extent if extent > 0 else 1.0

    def renderer(self, backend: str = "auto", device: torch.device | str | None = None,
                 cache_config: CacheConfig | None = None) -> StreamingRenderer:
        """A new :class:`StreamingRenderer` of the scene (raises ``ValueError`` when the budget is too small)."""
        return StreamingRenderer(self.source, self.gpu_budget_bytes, backend=backend,
                                 lod_threshold_px=self.lod_threshold_px, cache_config=cache_config, device=device)


# ----- host store ----------------------------------------------------------------------------------------------
class HostChunkStore:
    """Packed entries in host memory, read from ``source`` on first use; pinned when ``pin`` (for async copies).

    Entries are kept for the store's lifetime and never written again, so an asynchronous copy from one can never
    read memory that is being refilled.
    """

    def __init__(self, source: ChunkSource, pin: bool = False) -> None:
        self.source, self.pin = source, pin
        self._entries: dict[ChunkKey, Tensor] = {}
        self.nbytes = 0

    def get(self, key: ChunkKey) -> Tensor:
        entry = self._entries.get(key)
        if entry is None:
            entry = self.source.read(*key).contiguous()
            if self.pin:
                entry = entry.pin_memory()
            self._entries[key] = entry
            self.nbytes += entry.numel() * entry.element_size()
        return entry

    def preload(self, level: int | None = None, workers: int = 8) -> None:
        """Read entries now, so that no frame waits on the disk: every chunk at ``level``, or every entry when None.

        A chunk file (a source with ``data_span``/``read_span``) is read whole into one (pinned) buffer by
        ``workers`` threads, the entries being views of it: one pinned allocation instead of one per entry.
        """
        src = self.source
        if level is None and hasattr(src, "read_span") and not self._entries:
            start, end = src.data_span()
            buffer = torch.empty(end - start, dtype=torch.uint8, pin_memory=self.pin)
            src.read_span(buffer.numpy(), workers=workers)
            offsets, sizes = src.entry_spans()
            for i, (offset, size) in enumerate(zip(offsets.tolist(), sizes.tolist())):
                lo = offset - start
                self._entries[divmod(i, src.num_levels)] = buffer[lo:lo + size].view(torch.float32)
            self.nbytes = int(sizes.sum())
            return
        levels = range(src.num_levels) if level is None else (level,)
        for c in range(src.num_chunks):
            for lv in levels:
                self.get((c, lv))


# ----- GPU chunk cache (LRU) -----------------------------------------------------------------------------------
@dataclass(eq=False)
class CacheEntry:
    """A device copy of an entry: its data, its size, the event its copy signals (None once the render stream
    waits on it, and on the CPU), and its columns (means, quats, log-scales, opacity logits, SH) as views of the
    data (made on first use)."""

    data: Tensor
    nbytes: int
    ready: torch.cuda.Event | None = None
    columns: tuple[Tensor, ...] | None = None


class GpuChunkCache:
    """Entries resident on the device, at most ``budget_bytes`` in all, evicted least recently used first.

    ``lookup`` counts a hit (and makes the entry the most recently used) or a miss; ``insert`` evicts LRU entries
    outside the protected set until the new one fits, and raises ``ValueError`` when it cannot. The protected set
    is the one given to ``insert``/``can_fit``, or, when they get None, the cache's own (:meth:`protect`, kept with
    its resident bytes so that these checks cost O(1) per entry).
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 1:
            raise ValueError(f"budget_bytes: expected >= 1, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self.resident_bytes = 0
        self.hits = self.misses = self.evictions = 0
        self.peak_bytes = 0
        self.evicted: deque[Hashable] = deque(maxlen=100_000)  # the latest evictions, in order (tests, stats)
        self._protected: frozenset = frozenset()
        self.protected_bytes = 0  # resident bytes of the cache's own protected set

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        """Resident keys, least recently used first."""
        return list(self._entries)

    def protect(self, keys: Sequence[Hashable] | set | frozenset, add: bool = False) -> None:
        """Make ``keys`` the cache's own protected set (what the current frame needs; ``add``: add them to it):
        never evicted while protected; the resident ones become the most recently used (so that eviction finds
        its victims first)."""
        new = frozenset(keys)
        if add:
            new = new - self._protected
            self._protected = self._protected | new
        else:
            self._protected = new
            self.protected_bytes = 0
        for key in new:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.protected_bytes += entry.nbytes

    def lookup(self, key: Hashable) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def peek(self, key: Hashable) -> CacheEntry | None:
        """The entry under ``key`` without counting a hit or a miss or touching its recency."""
        return self._entries.get(key)

    def _kept_bytes(self, protected: frozenset | set | None) -> int:
        if protected is None:
            return self.protected_bytes
        return sum(e.nbytes for k, e in self._entries.items() if k in protected)

    def can_fit(self, nbytes: int, protected: frozenset | set | None = None) -> bool:
        """Whether ``nbytes`` more would fit after evicting every entry outside ``protected`` (the cache's own
        protected set when None)."""
        return self._kept_bytes(protected) + nbytes <= self.budget_bytes

    def insert(self, key: Hashable, data: Tensor, nbytes: int | None = None, ready: torch.cuda.Event | None = None,
               protected: frozenset | set | None = None) -> list[Hashable]:
        """Make ``data`` resident under ``key`` (most recently used); returns the keys evicted for it."""
        nbytes = data.numel() * data.element_size() if nbytes is None else int(nbytes)
        if nbytes > self.budget_bytes:
            raise ValueError(f"chunk {key}: {nbytes / 2**20:.2f} MiB does not fit a chunk cache of "
                             f"{self.budget_bytes / 2**20:.2f} MiB")
        if key in self._entries:
            self._remove(key)
        keep = self._protected if protected is None else protected
        if self._kept_bytes(protected) + nbytes > self.budget_bytes:
            raise ValueError(f"chunk {key}: {nbytes / 2**20:.2f} MiB does not fit the chunk cache "
                             f"({self.budget_bytes / 2**20:.2f} MiB) beside the entries this frame needs")
        victims, freed = [], 0
        if self.resident_bytes + nbytes > self.budget_bytes:
            for victim, entry in self._entries.items():  # least recently used first
                if victim in keep:
                    continue
                victims.append(victim)
                freed += entry.nbytes
                if self.resident_bytes - freed + nbytes <= self.budget_bytes:
                    break
        for victim in victims:
            self._remove(victim)
            self.evictions += 1
            self.evicted.append(victim)
        self._entries[key] = CacheEntry(data, nbytes, ready)
        self.resident_bytes += nbytes
        if key in self._protected:
            self.protected_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)
        return victims

    def _remove(self, key: Hashable) -> None:
        # No host synchronisation: a copy's memory belongs to the stream it was allocated on (stream-ordered
        # reuse), and record_stream covers the render stream once it used the entry.
        entry = self._entries.pop(key)
        self.resident_bytes -= entry.nbytes
        if key in self._protected:
            self.protected_bytes -= entry.nbytes


# ----- the renderer --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamingConfig:
    """How the streaming renderer spends its budget.

    Attributes:
        cache_fraction: share of the GPU budget for the chunk cache; the rest is the frame's (one batch or depth
            slabs, the rasterizer's temporaries, the outputs; module docstring).
        guard_angle_deg: the guard frustum is this much wider than the view on every side.
        guard_margin: how far (world units) the head may move before the visible set is recomputed; None: half the
            median radius of a level-0 chunk.
        prefetch: copy the chunks of the predicted next pose in the background.
        prefetch_frames: how many frames ahead the pose is extrapolated from the last two.
        async_copies: on CUDA, copy on a side stream (False: synchronous copies on the render stream).
        pairs_per_item: first estimate of the (camera, tile) pairs per (camera, Gaussian) item, which sizes the
            pair sort's buffers; later frames use the last frame's measured maximum (times 1.25).
        max_batch_gaussians: the most Gaussians rendered in one pass (None: as many as the budget allows).
    """

    cache_fraction: float = 0.6
    guard_angle_deg: float = 10.0
    guard_margin: float | None = None
    prefetch: bool = True
    prefetch_frames: float = 8.0
    async_copies: bool = True
    pairs_per_item: float = 4.0
    max_batch_gaussians: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.cache_fraction < 1:
            raise ValueError(f"cache_fraction: expected a value in (0, 1), got {self.cache_fraction}")
        if not 0 <= self.guard_angle_deg < 80:
            raise ValueError(f"guard_angle_deg: expected 0..80, got {self.guard_angle_deg}")
        if self.guard_margin is not None and self.guard_margin < 0:
            raise ValueError(f"guard_margin: expected >= 0, got {self.guard_margin}")
        if self.prefetch_frames < 0:
            raise ValueError(f"prefetch_frames: expected >= 0, got {self.prefetch_frames}")
        if not self.pairs_per_item > 0:
            raise ValueError(f"pairs_per_item: expected > 0, got {self.pairs_per_item}")
        if self.max_batch_gaussians is not None and self.max_batch_gaussians < 1:
            raise ValueError(f"max_batch_gaussians: expected >= 1 or None, got {self.max_batch_gaussians}")


@dataclass(frozen=True)
class StreamingStats:
    """What the streaming renderer did for one frame, and its running totals.

    Attributes:
        frame: frames rendered so far, this one included.
        refreshed: the visible set was recomputed this frame.
        visible_chunks, visible_gaussians: the chunks drawn and their Gaussians (at the chosen levels).
        levels_used: chunks drawn at each level ``(level 0, level 1, ...)``.
        dropped_chunks: visible chunks left out (always 0: what does not fit is streamed in depth slabs).
        resident_bytes, resident_entries: what the GPU chunk cache holds; cache_budget_bytes: its budget.
        assembled_bytes: the concatenated visible set (one batch) or the largest slab.
        hits, misses, evictions, bytes_copied: totals of the chunk cache (copies include prefetches and streamed
            entries).
        frame_bytes_copied: bytes copied host -> device since the previous frame.
        frame_streamed_bytes: of those, entries copied for one slab and freed after it (not cached).
        prefetched: entries whose copy the prefetch started after this frame.
        assemble_ms: wall time of residency + concatenation at a refresh (0 without a refresh and for slabs).
        batches: render passes this frame (1: one batch; more: depth slabs).
        batch_capacity: the most Gaussians one pass could take this frame (from the budget).
        pairs_per_item: the estimate the next frame is sized with.
    """

    frame: int
    refreshed: bool
    visible_chunks: int
    visible_gaussians: int
    levels_used: tuple[int, ...]
    dropped_chunks: int
    resident_bytes: int
    resident_entries: int
    cache_budget_bytes: int
    assembled_bytes: int
    hits: int
    misses: int
    evictions: int
    bytes_copied: int
    frame_bytes_copied: int
    prefetched: int
    assemble_ms: float
    batches: int = 1
    batch_capacity: int = 0
    frame_streamed_bytes: int = 0
    pairs_per_item: float = 0.0


@dataclass
class _Visible:
    guard: GuardFrustum
    position: Tensor  # [3] float64
    rotation: Tensor  # [3, 3] float64
    keys: tuple[ChunkKey, ...]
    gaussians: int
    nbytes: int
    splats: Splats | None = None  # the concatenated set (one-batch mode)
    frame_cache: FrameCache | None = None


@dataclass
class _PoolEntry:
    key: ChunkKey
    entry: CacheEntry
    zhi: float
    count: int


@dataclass
class _FrameWork:
    """What the current frame did (for its stats)."""

    batches: int = 0
    largest_batch: int = 0
    streamed_bytes: int = 0
    max_pairs_per_item: float = 0.0
    capacity: int = 0


class StreamingRenderer:
    """Renders a chunked scene of any size under a GPU memory budget (see the module docstring).

    Args:
        chunk_file: the chunk source (``data.open_chunk_file(path)`` or a :class:`renderer.lod.ChunkedScene`).
        gpu_budget_bytes: the GPU memory the renderer may use (chunk cache + frame: module docstring).
        backend: the rasterizer, as for :func:`renderer.render`.
        lod_threshold_px: screen-space error allowed for coarser levels, in pixels; None draws level 0 only.
        cache_config: render the visible set through a :class:`FrameCache` with this config (None: plain render;
            one-batch frames only).
        config: :class:`StreamingConfig`.
        device: where to render; CUDA when available, else the CPU, when None.
        host: a :class:`HostChunkStore` of ``chunk_file`` to share (e.g. preloaded); a new one when None.

    Raises:
        ValueError: the cache's share of the budget is smaller than the largest level-0 chunk.
    """

    def __init__(self, chunk_file: ChunkSource, gpu_budget_bytes: int, backend: str = "auto",
                 lod_threshold_px: float | None = None, cache_config: CacheConfig | None = None,
                 config: StreamingConfig | None = None, device: torch.device | str | None = None,
                 host: HostChunkStore | None = None) -> None:
        self.source = chunk_file
        self.config = config or StreamingConfig()
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.backend, self.cache_config = backend, cache_config
        if lod_threshold_px is not None and not lod_threshold_px >= 0:
            raise ValueError(f"lod_threshold_px: expected >= 0 or None, got {lod_threshold_px}")
        self.lod_threshold_px = lod_threshold_px
        self._bytes_per = floats_per_gaussian(chunk_file.sh_coeffs) * 4
        self._max_field_bytes = 4 * max(4, 3 * chunk_file.sh_coeffs)
        self.entry_bytes = chunk_file.counts.to(torch.int64) * self._bytes_per  # [M, L]
        self._counts = chunk_file.counts.to(torch.int64)
        cache_bytes = int(gpu_budget_bytes * self.config.cache_fraction)
        largest = int(self.entry_bytes[:, 0].max()) if chunk_file.num_chunks else 0
        if cache_bytes < largest:
            raise ValueError(
                f"gpu budget: {gpu_budget_bytes / 2**20:.1f} MiB gives the chunk cache {cache_bytes / 2**20:.2f} MiB "
                f"({self.config.cache_fraction:g} of it), smaller than the largest chunk ({largest / 2**20:.2f} MiB); "
                "raise the budget or convert with a smaller --chunk-size")
        self.gpu_budget_bytes = int(gpu_budget_bytes)
        self.cache = GpuChunkCache(cache_bytes)
        cuda = self.device.type == "cuda"
        if host is not None and host.source is not chunk_file:
            raise ValueError("host: expected a HostChunkStore of this chunk_file")
        self.host = host if host is not None else HostChunkStore(chunk_file, pin=cuda)
        self._side = torch.cuda.Stream(self.device) if cuda and self.config.async_copies else None
        self._init_geometry()
        self._visible: _Visible | None = None
        self._history: list[tuple[Tensor, Tensor]] = []
        self.bytes_copied = 0
        self._copied_at_last_frame = 0
        self._frames = 0
        self._focal = 1.0
        self._pairs_per_item = self.config.pairs_per_item
        self.last_prefetch: list[ChunkKey] = []
        self.last_stats: StreamingStats | None = None

    def _init_geometry(self) -> None:
        src = self.source
        centers = src.centers.to(torch.float64)  # [M, L, 3]
        self.centers = centers[:, 0] if src.num_chunks else centers.new_zeros((0, 3))
        offsets = (centers - self.centers[:, None]).norm(dim=-1) if src.num_chunks else centers.new_zeros((0, 1))
        self.cull_radii = (offsets + src.radii.to(torch.float64)).max(dim=1).values if src.num_chunks else \
            centers.new_zeros(0)
        self.errors = src.errors.to(torch.float64)
        self._entry_centers = centers  # [M, L, 3]
        self._entry_radii = src.radii.to(torch.float64)  # [M, L]
        margin = self.config.guard_margin
        if margin is None:
            margin = 0.5 * float(src.radii[:, 0].median()) if src.num_chunks else 0.0
        self.guard_margin = margin

    @property
    def sh_degree(self) -> int:
        return _SH_DEGREE_OF[self.source.sh_coeffs]

    # ----- one frame ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render(self, view: Camera | StereoRig | Sequence[Camera], background: Tensor | Sequence[float] | None = None,
               render_mode: RenderMode = "rgb", sh_degree: int | None = None) -> RenderOutput:
        """Render one frame of ``view``; what the streaming did is in :attr:`last_stats`.

        The output carries no ``projected`` (its per-Gaussian buffers are freed before this returns).
        """
        head, ipd = head_of(view)
        cams = stack_cameras(view, "cpu", torch.float64)
        tangents = view_tangents(cams)
        pos, rot = _pose(head)
        self._focal = float(cams.Ks[:, :2, :2].abs().max())
        refreshed, assemble_ms = False, 0.0
        single, multi = self.batch_capacity(len(cams), cams.width, cams.height, render_mode)
        if self._visible is None or not self._inside_guard(self._visible, pos, rot, tangents):
            start = time.perf_counter()
            self._refresh(head, ipd, tangents, pos, rot, self._focal, single)
            refreshed, assemble_ms = True, (time.perf_counter() - start) * 1e3
        visible = self._visible
        work = _FrameWork()
        if self._fits_one_batch(visible, single):
            work.capacity = single
            if visible.splats is None:
                self._assemble_visible(visible)
            out = self._render_one(visible, view, background, render_mode, sh_degree, work)
        else:
            visible.splats = visible.frame_cache = None  # free the concatenated set before streaming slabs
            work.capacity = multi
            out = self._render_slabs(visible, view, cams, multi, background, render_mode, sh_degree, work)
        if work.max_pairs_per_item > 0:
            self._pairs_per_item = 1.25 * work.max_pairs_per_item
        self._history = [*self._history[-1:], (pos, rot)]
        self.last_prefetch = self._prefetch(ipd, tangents) if self.config.prefetch else []
        self._frames += 1
        self.last_stats = self._stats(refreshed, assemble_ms, work)
        return out

    def _inside_guard(self, visible: _Visible, pos: Tensor, rot: Tensor, tangents: dict[str, float]) -> bool:
        moved = float((pos - visible.position).norm())
        turned = rotation_angle(rot, visible.rotation)
        if moved > self.guard_margin or turned > visible.guard.angle:
            return False
        return all(tangents[k] <= getattr(visible.guard, k) + 1e-9 for k in tangents)

    # ----- memory model ---------------------------------------------------------------------------------------------
    def batch_capacity(self, cameras: int, width: int, height: int, render_mode: RenderMode = "rgb") -> tuple[int, int]:
        """The most Gaussians one render pass may take within the frame's share of the budget: ``(one batch,
        depth slabs)`` (module docstring; uses the current pairs-per-item estimate).

        Raises:
            ValueError: the frame's share cannot hold the outputs and a pass over the largest chunk.
        """
        channels = {"rgb": 4, "depth": 2, "rgb+depth": 5, "alpha": 1}.get(render_mode, 5)
        outputs = cameras * width * height * channels * 4
        scratch = SCRATCH_BYTES if self.device.type == "cuda" else 0
        frame = self.gpu_budget_bytes - self.cache.budget_bytes - scratch
        per_item = PROJECTED_BYTES + max(DEPTH_SORT_BYTES, PAIR_BYTES * self._pairs_per_item)
        per_pass = self._bytes_per + cameras * per_item  # the pass's copy of its Gaussians + the rasterizer's
        selection = 2 * (5 + self._max_field_bytes) + 8 + self._bytes_per  # depth, mask, one column; index, copy
        single = int((frame - outputs) // per_pass)
        multi = int((frame - 2 * outputs) // (2 * self._bytes_per + max(per_pass, selection)))
        if self.config.max_batch_gaussians is not None:
            single = min(single, self.config.max_batch_gaussians)
            multi = min(multi, self.config.max_batch_gaussians)
        largest = int(self._counts[:, 0].max()) if self.source.num_chunks else 0
        if multi < max(1, largest):
            raise ValueError(
                f"gpu budget: {self.gpu_budget_bytes / 2**20:.1f} MiB leaves the frame "
                f"{frame / 2**20:.1f} MiB beside the chunk cache ({self.config.cache_fraction:g} of it), too little "
                f"for {cameras} x {width}x{height} outputs and one pass over the largest chunk ({largest} Gaussians);"
                " raise the budget, lower cache_fraction or convert with a smaller --chunk-size")
        return single, multi

    def _fits_one_batch(self, visible: _Visible, capacity: int) -> bool:
        return visible.gaussians <= capacity and visible.nbytes <= self.cache.budget_bytes

    # ----- visible set, levels, residency ---------------------------------------------------------------------------
    def _guard(self, w2c: Tensor, ipd: float, tangents: dict[str, float]) -> GuardFrustum:
        return GuardFrustum(world_to_camera=w2c.to(torch.float64), **tangents,
                            angle=math.radians(self.config.guard_angle_deg), margin=self.guard_margin + ipd / 2)

    def _plan(self, guard: GuardFrustum, pos: Tensor, focal: float) -> list[ChunkKey]:
        """The entries to draw from ``guard`` (chunk, level), nearest first. With LOD on, the farthest chunks are
        coarsened until the entries fit the chunk cache (or are at their coarsest)."""
        if self.source.num_chunks == 0:
            return []
        ids = torch.nonzero(guard.sphere_mask(self.centers, self.cull_radii), as_tuple=True)[0]
        dist = (self.centers[ids] - pos).norm(dim=1)
        near = (dist - self.cull_radii[ids] - guard.margin).clamp_min(1e-6)
        levels = self._choose_levels(ids, near, focal)
        order = torch.argsort(dist, stable=True)
        ids, levels = ids[order], levels[order]
        if self.lod_threshold_px is not None and self.source.num_levels > 1:
            levels = self._coarsen_to_fit(ids, levels)
        return list(zip(ids.tolist(), levels.tolist()))

    def _coarsen_to_fit(self, ids: Tensor, levels: Tensor) -> Tensor:
        """Coarsen the farthest chunks (the last of ``ids``) level by level until the entries fit the cache."""
        sizes = self.entry_bytes[ids, levels].tolist()
        lv, total, cap = levels.tolist(), sum(sizes), self.cache.budget_bytes
        coarsest = self.source.num_levels - 1
        for i in reversed(range(len(lv))):  # farthest first
            if total <= cap:
                break
            while total > cap and lv[i] < coarsest:
                lv[i] += 1
                new = int(self.entry_bytes[ids[i], lv[i]])
                total, sizes[i] = total - sizes[i] + new, new
        return torch.tensor(lv, dtype=torch.int64)

    def _choose_levels(self, ids: Tensor, near: Tensor, focal: float) -> Tensor:
        """Per chunk, the coarsest level whose projected error (pixels at distance ``near``) is within the
        threshold, every finer level being within it too."""
        if self.lod_threshold_px is None or self.source.num_levels == 1:
            return torch.zeros(ids.numel(), dtype=torch.int64)
        px = self.errors[ids] * focal / near[:, None]  # [V, L]
        ok = torch.cumprod((px <= self.lod_threshold_px).to(torch.int64), dim=1)
        return (ok.sum(dim=1) - 1).clamp_min(0)

    def _refresh(self, head: Camera, ipd: float, tangents: dict[str, float], pos: Tensor, rot: Tensor,
                 focal: float, capacity: int) -> None:
        guard = self._guard(head.world_to_camera, ipd, tangents)
        keys = self._plan(guard, pos, focal)
        self._visible = None  # release the previous visible set before building the next
        self.cache.protect(keys)
        gaussians = sum(int(self._counts[key]) for key in keys)
        nbytes = gaussians * self._bytes_per
        visible = _Visible(guard, pos, rot, tuple(keys), gaussians, nbytes)
        if self._fits_one_batch(visible, capacity):
            self._assemble_visible(visible)
        self._visible = visible

    def _resident(self, key: ChunkKey) -> CacheEntry:
        """The cached device copy of ``key``: a hit, or a copy made now (the key must fit beside the protected set)."""
        entry = self.cache.lookup(key)
        return entry if entry is not None else self._insert_copy(key)

    def _insert_copy(self, key: ChunkKey) -> CacheEntry:
        entry = self._copy(key)
        self.cache.insert(key, entry.data, entry.nbytes, entry.ready)
        return self.cache.peek(key)

    def _fetch(self, key: ChunkKey, work: _FrameWork) -> CacheEntry:
        """A device copy of ``key`` for a slab: cached when it fits beside the protected set, else a transient copy
        (freed when the slabs are done with it)."""
        entry = self.cache.lookup(key)
        if entry is not None:
            return entry
        nbytes = int(self.entry_bytes[key])
        if self.cache.can_fit(nbytes):
            return self._insert_copy(key)
        work.streamed_bytes += nbytes
        return self._copy(key)

    def _copy(self, key: ChunkKey) -> CacheEntry:
        """Copy ``key`` host -> device (asynchronously on the side stream on CUDA); the copy's event in ``ready``."""
        host = self.host.get(key)
        nbytes = host.numel() * host.element_size()
        ready = None
        if self.device.type != "cuda":
            data = host  # the host is the device: the entry is resident as it is
        elif self._side is None:
            data = host.to(self.device, non_blocking=True)
        else:
            # Allocated on the side stream: the caching allocator reuses its memory only in that stream's order
            # (after the copy), and record_stream in _ready covers the render stream's use.
            with torch.cuda.stream(self._side):
                data = torch.empty_like(host, device=self.device)
                data.copy_(host, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(self._side)
        self.bytes_copied += nbytes
        return CacheEntry(data, nbytes, ready)

    def _ready(self, entry: CacheEntry) -> CacheEntry:
        """Let the render stream use ``entry``: wait on its copy (on the device, no host sync) and record the use."""
        if entry.ready is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(entry.ready)
            entry.data.record_stream(main)
            entry.ready = None
        return entry

    def _views(self, key: ChunkKey, entry: CacheEntry) -> tuple[Tensor, ...]:
        """The entry's columns as views (``unpack_splats``'s layout, without building a :class:`Splats`)."""
        if entry.columns is None:
            n, k = int(self._counts[key]), self.source.sh_coeffs
            if entry.data.numel() != n * floats_per_gaussian(k):
                raise ValueError(f"chunk {key}: expected {n * floats_per_gaussian(k)} floats, got {entry.data.numel()}")
            means, quats, scales, opacity, sh = torch.split(entry.data, (3 * n, 4 * n, 3 * n, n, 3 * k * n))
            entry.columns = (means.view(n, 3), quats.view(n, 4), scales.view(n, 3), opacity, sh.view(n, k, 3))
        return entry.columns

    def _concat(self, parts: list[tuple[ChunkKey, CacheEntry]]) -> Splats:
        if not parts:
            return Splats.random(0, sh_degree=self.sh_degree, device=self.device)
        views = [self._views(key, entry) for key, entry in parts]
        return Splats(*(torch.cat([v[f] for v in views]) for f in range(len(_FIELDS))))

    def _assemble_visible(self, visible: _Visible) -> None:
        """Make every visible entry resident and concatenate them (one-batch mode)."""
        parts = [(key, self._ready(self._resident(key))) for key in visible.keys]
        visible.splats = self._concat(parts)
        if self.cache_config is not None and self.cache_config.enabled:
            visible.frame_cache = FrameCache(visible.splats, backend=self.backend, config=self.cache_config)

    def _measure(self, out: RenderOutput, cameras: int, gaussians: int, work: _FrameWork) -> None:
        work.batches += 1
        work.largest_batch = max(work.largest_batch, gaussians)
        if gaussians:
            work.max_pairs_per_item = max(work.max_pairs_per_item, out.stats.tile_keys / (cameras * gaussians))

    # ----- one batch ------------------------------------------------------------------------------------------------
    def _render_one(self, visible: _Visible, view: Camera | StereoRig | Sequence[Camera],
                    background: Tensor | Sequence[float] | None, render_mode: RenderMode, sh_degree: int | None,
                    work: _FrameWork) -> RenderOutput:
        if visible.frame_cache is not None:
            out = visible.frame_cache.render(view, background=background, render_mode=render_mode,
                                             sh_degree=sh_degree)
        else:
            out = render(visible.splats, view, backend=self.backend, sh_degree=sh_degree, background=background,
                         render_mode=render_mode)
        self._measure(out, len(as_camera_list(view)), visible.gaussians, work)
        return replace(out, projected=None)

    # ----- depth slabs ----------------------------------------------------------------------------------------------
    def _render_slabs(self, visible: _Visible, view: Camera | StereoRig | Sequence[Camera], cams, capacity: int,
                      background: Tensor | Sequence[float] | None, render_mode: RenderMode, sh_degree: int | None,
                      work: _FrameWork) -> RenderOutput:
        """Render ``visible`` in depth slabs of at most ``capacity`` Gaussians (module docstring)."""
        depth_rows = cams.viewmats[:, 2, :]  # [C, 4]: camera-space z = row . (x, y, z, 1)
        scale = float(depth_rows.abs().max()) + 1.0
        if bool(((depth_rows - depth_rows[:1]).abs() <= 1e-12 * scale).all()):
            return self._render_slabs_at(visible, view, depth_rows[0], len(cams), cams.width, cams.height, capacity,
                                         background, render_mode, sh_degree, work)
        outs = [self._render_slabs_at(visible, cam, cam.world_to_camera.to(torch.float64)[2], 1, cams.width,
                                      cams.height, capacity, background, render_mode, sh_degree, work)
                for cam in as_camera_list(view)]  # cameras that do not share depth: one at a time

        def cat(name: str) -> Tensor | None:
            parts = [getattr(o, name) for o in outs]
            return None if parts[0] is None else torch.cat(parts)

        stats = RenderStats(visible=[v for o in outs for v in o.stats.visible],
                            tile_keys=sum(o.stats.tile_keys for o in outs))
        return RenderOutput(image=cat("image"), alpha=cat("alpha"), depth=cat("depth"), stats=stats)

    def _render_slabs_at(self, visible: _Visible, view: Camera | StereoRig | Sequence[Camera], depth_row: Tensor,
                         cameras: int, width: int, height: int, capacity: int,
                         background: Tensor | Sequence[float] | None, render_mode: RenderMode,
                         sh_degree: int | None, work: _FrameWork) -> RenderOutput:
        """Slabs for cameras sharing the depth ``depth_row . (x, y, z, 1)`` (``depth_row [4]``, float64)."""
        keys = list(visible.keys)
        queue = _SlabQueue.build(keys, self._entry_centers, self._entry_radii, self._counts, depth_row)
        comp = _Composite(cameras, height, width, render_mode, self.device)
        row = [float(v) for v in depth_row.to(torch.float32)]
        ready: list[_PoolEntry] = []  # on the device, the render stream waited on their copies
        pending: list[_PoolEntry] = []  # copies issued, to be drawn from the next slab on

        def issue(limit: int, force: bool = False) -> None:  # the next entries in depth order, up to `limit`
            while queue.has_next() and (force or queue.pool + queue.next_count() <= limit):
                key, zhi, count = queue.pop()
                pending.append(_PoolEntry(key, self._fetch(key, work), zhi, count))
                force = False

        # The pool holds at most two slabs' worth: what the current slab draws from and the next slab's copies,
        # which run on the side stream while the current slab renders.
        issue(capacity, force=True)
        near = -math.inf
        while True:
            for item in pending:
                self._ready(item.entry)
            ready.extend(pending)
            pending.clear()
            frontier = queue.frontier()
            if near >= frontier:  # nothing can be drawn before the next entry comes in
                issue(2 * capacity, force=True)
                continue
            issue(2 * capacity)
            near = self._draw_slab(ready, near, frontier, capacity, view, row, comp, cameras, render_mode,
                                   sh_degree, work)
            queue.pool -= sum(item.count for item in ready if item.zhi < near)
            ready = [item for item in ready if item.zhi >= near]  # the others are behind us: freed if streamed
            if near == math.inf:
                break
        return comp.output(background, RenderStats(visible=comp.visible or [0] * cameras, tile_keys=comp.tile_keys))

    def _draw_slab(self, ready: list[_PoolEntry], near: float, frontier: float, capacity: int,
                   view: Camera | StereoRig | Sequence[Camera], row: list[float], comp: _Composite, cameras: int,
                   render_mode: RenderMode, sh_degree: int | None, work: _FrameWork) -> float:
        """Render the Gaussians of ``ready`` with depth in ``[near, end)``, at most ``capacity`` of them, where
        ``end <= frontier`` (no entry still to come reaches before ``frontier``); returns ``end``."""
        if not ready:
            return frontier
        views = [self._views(item.key, item.entry) for item in ready]
        means = torch.cat([v[0] for v in views])  # [P, 3]
        # the same element-wise expression for a Gaussian in every slab, so that it falls in exactly one
        z = means[:, 0] * row[0] + means[:, 1] * row[1] + means[:, 2] * row[2] + row[3]
        inside = (z >= near) & (z < frontier)
        count = int(inside.sum())
        end = frontier
        if count > capacity:
            # the (capacity + 1)-th smallest depth (a sort: CUDA's kthvalue runs one thread block per row)
            kth = float(torch.sort(z[inside]).values[capacity])
            end = kth if kth > near else float(np.nextafter(np.float32(kth), np.float32(np.inf)))
            inside = (z >= near) & (z < end)
        index = torch.nonzero(inside).squeeze(1)
        n = int(index.numel())
        del z, inside
        if n:
            fields = [means.index_select(0, index)]
            del means
            for f in range(1, len(_FIELDS)):
                fields.append(torch.cat([v[f] for v in views]).index_select(0, index))
            batch = Splats(*fields)
            del fields, index
            out = render(batch, view, backend=self.backend, sh_degree=sh_degree, render_mode=render_mode)
            del batch
            comp.add(out)
            self._measure(out, cameras, n, work)
        return end

    # ----- prefetch -------------------------------------------------------------------------------------------------
    def predicted_pose(self) -> tuple[Tensor, Tensor] | None:
        """The head pose ``prefetch_frames`` ahead, extrapolated from the last two: ``(position [3], world-to-camera
        rotation [3, 3])`` (float64), or None before two frames."""
        if len(self._history) < 2:
            return None
        (p0, r0), (p1, r1) = self._history
        k = self.config.prefetch_frames
        delta = r1 @ r0.T  # per-frame rotation (world-to-camera, left-multiplied)
        steps = max(0, int(round(k)))
        rot = torch.linalg.matrix_power(delta, steps) @ r1
        return p1 + k * (p1 - p0), rot

    def _prefetch(self, ipd: float, tangents: dict[str, float]) -> list[ChunkKey]:
        predicted = self.predicted_pose()
        if predicted is None or self._visible is None:
            return []
        pos, rot = predicted
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :3], w2c[:3, 3] = rot, -rot @ pos
        keys = self._plan(self._guard(w2c, ipd, tangents), pos, self._focal)
        started = []
        for key in keys:
            if key in self.cache:
                continue
            if not self.cache.can_fit(int(self.entry_bytes[key])):
                break
            self.cache.protect([key], add=True)  # not evicted by the prefetches after it (until the next refresh)
            self._insert_copy(key)
            started.append(key)
        return started

    def _stats(self, refreshed: bool, assemble_ms: float, work: _FrameWork) -> StreamingStats:
        visible = self._visible
        levels = [0] * self.source.num_levels
        for _, lv in visible.keys:
            levels[lv] += 1
        frame_bytes = self.bytes_copied - self._copied_at_last_frame
        self._copied_at_last_frame = self.bytes_copied
        assembled = visible.splats.nbytes() if visible.splats is not None else work.largest_batch * self._bytes_per
        return StreamingStats(
            frame=self._frames, refreshed=refreshed, visible_chunks=len(visible.keys),
            visible_gaussians=visible.gaussians, levels_used=tuple(levels), dropped_chunks=0,
            resident_bytes=self.cache.resident_bytes, resident_entries=len(self.cache),
            cache_budget_bytes=self.cache.budget_bytes, assembled_bytes=assembled,
            hits=self.cache.hits, misses=self.cache.misses, evictions=self.cache.evictions,
            bytes_copied=self.bytes_copied, frame_bytes_copied=frame_bytes, prefetched=len(self.last_prefetch),
            assemble_ms=assemble_ms, batches=work.batches, batch_capacity=work.capacity,
            frame_streamed_bytes=work.streamed_bytes, pairs_per_item=self._pairs_per_item)


class _SlabQueue:
    """The entries of a frame in order of the near end of their depth ranges (bounding sphere along the depth
    axis, widened by a rounding margin), and how many Gaussians of them are on the device (``pool``)."""

    def __init__(self, keys: list[ChunkKey], zlo: list[float], zhi: list[float], counts: list[int]) -> None:
        self.keys, self.zlo, self.zhi, self.counts = keys, zlo, zhi, counts
        self.next = 0
        self.pool = 0

    @staticmethod
    def build(keys: list[ChunkKey], centers: Tensor, radii: Tensor, counts: Tensor, depth_row: Tensor) -> _SlabQueue:
        if not keys:
            return _SlabQueue([], [], [], [])
        idx = torch.tensor(keys, dtype=torch.int64)  # [E, 2]
        c, r = centers[idx[:, 0], idx[:, 1]], radii[idx[:, 0], idx[:, 1]]  # [E, 3], [E]
        z = c @ depth_row[:3] + depth_row[3]
        margin = 1e-5 * (1 + z.abs() + r)  # covers float32 depths and float32 slab boundaries
        zlo, zhi = z - r - margin, z + r + margin
        order = torch.argsort(zlo, stable=True).tolist()
        n = counts[idx[:, 0], idx[:, 1]].tolist()
        zlo_l, zhi_l = zlo.tolist(), zhi.tolist()
        return _SlabQueue([keys[i] for i in order], [zlo_l[i] for i in order], [zhi_l[i] for i in order],
                          [n[i] for i in order])

    def has_next(self) -> bool:
        return self.next < len(self.keys)

    def next_count(self) -> int:
        return self.counts[self.next]

    def frontier(self) -> float:
        """No Gaussian of an entry still to come has a depth below this."""
        return self.zlo[self.next] if self.has_next() else math.inf

    def pop(self) -> tuple[ChunkKey, float, int]:
        i = self.next
        self.next += 1
        self.pool += self.counts[i]
        return self.keys[i], self.zhi[i], self.counts[i]


class _Composite:
    """Front-to-back compositing of slab renders made on a black background: ``C += T C_k``, ``D += T D_k a_k``,
    ``T *= 1 - a_k``; the background is added with the final ``T``."""

    def __init__(self, cameras: int, height: int, width: int, render_mode: RenderMode, device: torch.device) -> None:
        shape = (cameras, height, width)
        self.trans = torch.ones(*shape, 1, device=device)
        self.color = torch.zeros(*shape, 3, device=device) if render_mode in ("rgb", "rgb+depth") else None
        self.depth = torch.zeros(*shape, 1, device=device) if render_mode in ("depth", "rgb+depth") else None
        self.visible: list[int] = []
        self.tile_keys = 0

    def add(self, out: RenderOutput) -> None:
        self.tile_keys += int(out.stats.tile_keys)
        self.visible = [a + b for a, b in zip(self.visible, out.stats.visible)] if self.visible else \
            list(out.stats.visible)
        if self.color is not None:
            self.color.addcmul_(self.trans, out.image)
        if self.depth is not None:
            self.depth.addcmul_(self.trans, out.depth * out.alpha)
        self.trans.addcmul_(self.trans, out.alpha, value=-1.0)

    def output(self, background: Tensor | Sequence[float] | None, stats: RenderStats) -> RenderOutput:
        alpha = 1.0 - self.trans
        image = self.color
        if image is not None and background is not None:
            bg = torch.as_tensor(background, dtype=image.dtype, device=image.device)
            if bg.shape not in ((3,), (image.shape[0], 3)):
                raise ValueError(f"background: expected shape [3] or [{image.shape[0]}, 3], got {list(bg.shape)}")
            image.addcmul_(self.trans, bg.reshape(-1, 1, 1, 3))
        depth = None
        if self.depth is not None:
            depth = torch.where(alpha > 0, self.depth / alpha.clamp_min(1e-10), torch.zeros_like(alpha))
        return RenderOutput(image=image, alpha=alpha, depth=depth, stats=stats)


def _pose(cam: Camera) -> tuple[Tensor, Tensor]:
    """Camera position ``[3]`` and world-to-camera rotation ``[3, 3]`` (float64)."""
    w2c = cam.world_to_camera.to(torch.float64)
    return -(w2c[:3, :3].T @ w2c[:3, 3]), w2c[:3, :3]
