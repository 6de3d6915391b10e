"""Large scenes under a GPU memory budget: a host chunk store, a GPU chunk cache (LRU), prefetch, level of detail.

A scene cut into chunks with levels of detail (:mod:`renderer.lod`; on disk :class:`data.chunk_file.ChunkFile`) is
rendered by :class:`StreamingRenderer`:

1. **Visible set** (per refresh): the chunks whose bounding spheres (over all their levels) reach inside a guard
   frustum around the head (:class:`renderer.chunks.GuardFrustum`: wider than the view by ``guard_angle_deg`` and
   grown by ``guard_margin`` plus half the IPD). It is kept while the head stays inside the guard, exactly as the
   frame cache keeps its visible set, so culling never changes the image.
2. **Level of detail**: per visible chunk, the coarsest level whose geometric error, projected at the chunk's
   nearest possible distance (centre distance minus its radius and the guard margin), stays within
   ``lod_threshold_px`` pixels; ``lod_threshold_px=None`` draws level 0 only. If the chosen entries do not fit the
   cache, the farthest chunks are coarsened further (LOD on) and then, as a last resort, the farthest are dropped
   (``StreamingStats.dropped_chunks`` says how many).
3. **Residency**: entries live in host memory (:class:`HostChunkStore`, pinned on CUDA, read from the source on
   first use) and are copied to a GPU chunk cache (:class:`GpuChunkCache`) that evicts the least recently used
   entries not needed by the current frame, never holding more than its byte budget. On CUDA the copies run on a
   side stream and the render stream waits on their events; on the CPU they are synchronous (same API).
4. **Render**: the resident visible entries are concatenated into one :class:`Splats`, rendered by
   :func:`renderer.render` or, with ``cache_config``, a :class:`renderer.FrameCache` over it.
5. **Prefetch**: the next head pose is extrapolated from the last two (``prefetch_frames`` ahead) and the entries
   its guard would need are copied in the background, without evicting any entry the current frame uses.

Memory: ``gpu_budget_bytes`` is split between the chunk cache (``cache_fraction`` of it) and the frame: the
concatenated visible set (at most the cache's size) and the rasterizer's scratch. The visible set is capped at the
cache's size, so cache plus visible set stay within ``2 * cache_fraction`` of the budget; the rest is left to the
rasterizer.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .cameras import Camera, StereoRig, stack_cameras
from .chunks import GuardFrustum
from .frame_cache import CacheConfig, FrameCache, head_of, rotation_angle, view_tangents
from .lod import floats_per_gaussian, unpack_splats
from .render import render
from .splats import SH_COEFFS_FOR_DEGREE, Splats
from .types import RenderMode, RenderOutput

ChunkKey = tuple[int, int]  # (chunk, level)
_SH_DEGREE_OF = {k: d for d, k in SH_COEFFS_FOR_DEGREE.items()}


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


# ----- host store ----------------------------------------------------------------------------------------------
class HostChunkStore:
    """Packed entries in host memory, read from ``source`` on first use; pinned when ``pin`` (for async copies)."""

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

    def preload(self, level: int = 0) -> None:
        """Read every chunk of ``level`` now (so that no frame waits on the disk)."""
        for c in range(self.source.num_chunks):
            self.get((c, level))


# ----- GPU chunk cache (LRU) -----------------------------------------------------------------------------------
@dataclass
class CacheEntry:
    """A resident entry: its data, its size, and the event its copy signals (None once waited on or on CPU)."""

    data: Tensor
    nbytes: int
    ready: torch.cuda.Event | None = None


class GpuChunkCache:
    """Entries resident on the device, at most ``budget_bytes`` in all, evicted least recently used first.

    ``lookup`` counts a hit (and makes the entry the most recently used) or a miss; ``insert`` evicts LRU entries
    outside ``protected`` until the new one fits, and raises ``ValueError`` when it cannot.
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 1:
            raise ValueError(f"budget_bytes: expected >= 1, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self.resident_bytes = 0
        self.hits = self.misses = self.evictions = 0
        self.peak_bytes = 0
        self.evicted: list[Hashable] = []  # every eviction, in order (tests and stats read it)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        """Resident keys, least recently used first."""
        return list(self._entries)

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

    def can_fit(self, nbytes: int, protected: frozenset | set = frozenset()) -> bool:
        """Whether ``nbytes`` more would fit after evicting every entry outside ``protected``."""
        kept = sum(e.nbytes for k, e in self._entries.items() if k in protected)
        return kept + nbytes <= self.budget_bytes

    def insert(self, key: Hashable, data: Tensor, nbytes: int | None = None, ready: torch.cuda.Event | None = None,
               protected: frozenset | set = frozenset()) -> list[Hashable]:
        """Make ``data`` resident under ``key`` (most recently used); returns the keys evicted for it."""
        nbytes = data.numel() * data.element_size() if nbytes is None else int(nbytes)
        if nbytes > self.budget_bytes:
            raise ValueError(f"chunk {key}: {nbytes / 2**20:.2f} MiB does not fit a chunk cache of "
                             f"{self.budget_bytes / 2**20:.2f} MiB")
        if key in self._entries:
            self._remove(key)
        if not self.can_fit(nbytes, protected):
            raise ValueError(f"chunk {key}: {nbytes / 2**20:.2f} MiB does not fit the chunk cache "
                             f"({self.budget_bytes / 2**20:.2f} MiB) beside the entries this frame needs")
        evicted = []
        for victim in list(self._entries):
            if self.resident_bytes + nbytes <= self.budget_bytes:
                break
            if victim not in protected:
                self._remove(victim)
                self.evictions += 1
                self.evicted.append(victim)
                evicted.append(victim)
        self._entries[key] = CacheEntry(data, nbytes, ready)
        self.resident_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)
        return evicted

    def _remove(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        if entry.ready is not None:
            entry.ready.synchronize()  # never free memory a copy may still be writing
        self.resident_bytes -= entry.nbytes


# ----- the renderer --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamingConfig:
    """How the streaming renderer spends its budget.

    Attributes:
        cache_fraction: share of the GPU budget for the chunk cache (the visible set is capped at the same size;
            the rest is left to the rasterizer's scratch).
        guard_angle_deg: the guard frustum is this much wider than the view on every side.
        guard_margin: how far (world units) the head may move before the visible set is recomputed; None: half the
            median radius of a level-0 chunk.
        prefetch: copy the chunks of the predicted next pose in the background.
        prefetch_frames: how many frames ahead the pose is extrapolated from the last two.
        async_copies: on CUDA, copy on a side stream (False: synchronous copies on the render stream).
    """

    cache_fraction: float = 0.4
    guard_angle_deg: float = 10.0
    guard_margin: float | None = None
    prefetch: bool = True
    prefetch_frames: float = 8.0
    async_copies: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.cache_fraction <= 1:
            raise ValueError(f"cache_fraction: expected a value in (0, 1], got {self.cache_fraction}")
        if not 0 <= self.guard_angle_deg < 80:
            raise ValueError(f"guard_angle_deg: expected 0..80, got {self.guard_angle_deg}")
        if self.guard_margin is not None and self.guard_margin < 0:
            raise ValueError(f"guard_margin: expected >= 0, got {self.guard_margin}")
        if self.prefetch_frames < 0:
            raise ValueError(f"prefetch_frames: expected >= 0, got {self.prefetch_frames}")


@dataclass(frozen=True)
class StreamingStats:
    """What the streaming renderer did for one frame, and its running totals.

    Attributes:
        frame: frames rendered so far, this one included.
        refreshed: the visible set was recomputed this frame.
        visible_chunks, visible_gaussians: the chunks drawn and their Gaussians (at the chosen levels).
        levels_used: chunks drawn at each level ``(level 0, level 1, ...)``.
        dropped_chunks: visible chunks left out because even their coarsest levels did not fit the cache.
        resident_bytes, resident_entries: what the GPU chunk cache holds; cache_budget_bytes: its budget.
        assembled_bytes: the concatenated visible set.
        hits, misses, evictions, bytes_copied: totals of the chunk cache (copies include prefetches).
        frame_bytes_copied: bytes copied host -> device since the previous frame.
        prefetched: entries whose copy the prefetch started after this frame.
        assemble_ms: wall time of residency + concatenation (0 without a refresh).
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


@dataclass(frozen=True)
class _Visible:
    guard: GuardFrustum
    position: Tensor  # [3] float64
    rotation: Tensor  # [3, 3] float64
    keys: tuple[ChunkKey, ...]
    dropped: int
    splats: Splats
    frame_cache: FrameCache | None


class StreamingRenderer:
    """Renders a chunked scene of any size under a GPU memory budget (see the module docstring).

    Args:
        chunk_file: the chunk source (``data.open_chunk_file(path)`` or a :class:`renderer.lod.ChunkedScene`).
        gpu_budget_bytes: the GPU memory the renderer may use (chunk cache + visible set + scratch).
        backend: the rasterizer, as for :func:`renderer.render`.
        lod_threshold_px: screen-space error allowed for coarser levels, in pixels; None draws level 0 only.
        cache_config: render the visible set through a :class:`FrameCache` with this config (None: plain render).
        config: :class:`StreamingConfig`.
        device: where to render; CUDA when available, else the CPU, when None.

    Raises:
        ValueError: the cache's share of the budget is smaller than the largest level-0 chunk.
    """

    def __init__(self, chunk_file: ChunkSource, gpu_budget_bytes: int, backend: str = "auto",
                 lod_threshold_px: float | None = None, cache_config: CacheConfig | None = None,
                 config: StreamingConfig | None = None, device: torch.device | str | None = None) -> None:
        self.source = chunk_file
        self.config = config or StreamingConfig()
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backend, self.cache_config = backend, cache_config
        if lod_threshold_px is not None and not lod_threshold_px >= 0:
            raise ValueError(f"lod_threshold_px: expected >= 0 or None, got {lod_threshold_px}")
        self.lod_threshold_px = lod_threshold_px
        self._bytes_per = floats_per_gaussian(chunk_file.sh_coeffs) * 4
        self.entry_bytes = chunk_file.counts.to(torch.int64) * self._bytes_per  # [M, L]
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
        self.host = HostChunkStore(chunk_file, pin=cuda)
        self._side = torch.cuda.Stream(self.device) if cuda and self.config.async_copies else None
        self._init_geometry()
        self._visible: _Visible | None = None
        self._history: list[tuple[Tensor, Tensor]] = []
        self.bytes_copied = 0
        self._copied_at_last_frame = 0
        self._frames = 0
        self._focal = 1.0
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
        """Render one frame of ``view``; what the streaming did is in :attr:`last_stats`."""
        head, ipd = head_of(view)
        cams = stack_cameras(view, "cpu", torch.float64)
        tangents = view_tangents(cams)
        pos, rot = _pose(head)
        self._focal = float(cams.Ks[:, :2, :2].abs().max())
        refreshed, assemble_ms = False, 0.0
        if self._visible is None or not self._inside_guard(self._visible, pos, rot, tangents):
            start = time.perf_counter()
            self._refresh(head, ipd, tangents, pos, rot, self._focal)
            refreshed, assemble_ms = True, (time.perf_counter() - start) * 1e3
        visible = self._visible
        if visible.frame_cache is not None:
            out = visible.frame_cache.render(view, background=background, render_mode=render_mode,
                                             sh_degree=sh_degree)
        else:
            out = render(visible.splats, view, backend=self.backend, sh_degree=sh_degree, background=background,
                         render_mode=render_mode)
        self._history = [*self._history[-1:], (pos, rot)]
        self.last_prefetch = self._prefetch(ipd, tangents) if self.config.prefetch else []
        self._frames += 1
        self.last_stats = self._stats(refreshed, assemble_ms)
        return out

    def _inside_guard(self, visible: _Visible, pos: Tensor, rot: Tensor, tangents: dict[str, float]) -> bool:
        moved = float((pos - visible.position).norm())
        turned = rotation_angle(rot, visible.rotation)
        if moved > self.guard_margin or turned > visible.guard.angle:
            return False
        return all(tangents[k] <= getattr(visible.guard, k) + 1e-9 for k in tangents)

    # ----- visible set, levels, residency ---------------------------------------------------------------------------
    def _guard(self, w2c: Tensor, ipd: float, tangents: dict[str, float]) -> GuardFrustum:
        return GuardFrustum(world_to_camera=w2c.to(torch.float64), **tangents,
                            angle=math.radians(self.config.guard_angle_deg), margin=self.guard_margin + ipd / 2)

    def _plan(self, guard: GuardFrustum, pos: Tensor, focal: float) -> tuple[list[ChunkKey], int]:
        """The entries to draw from ``guard`` (chunk, level), nearest first, and how many chunks were dropped."""
        if self.source.num_chunks == 0:
            return [], 0
        ids = torch.nonzero(guard.sphere_mask(self.centers, self.cull_radii), as_tuple=True)[0]
        dist = (self.centers[ids] - pos).norm(dim=1)
        near = (dist - self.cull_radii[ids] - guard.margin).clamp_min(1e-6)
        levels = self._choose_levels(ids, near, focal)
        order = torch.argsort(dist, stable=True)
        ids, levels = ids[order].tolist(), levels[order].tolist()
        sizes = [int(self.entry_bytes[c, lv]) for c, lv in zip(ids, levels)]
        total, cap = sum(sizes), self.cache.budget_bytes
        coarsest = self.source.num_levels - 1 if self.lod_threshold_px is not None else 0
        for i in reversed(range(len(ids))):  # farthest first: coarsen, then drop
            while total > cap and levels[i] < coarsest:
                levels[i] += 1
                new = int(self.entry_bytes[ids[i], levels[i]])
                total, sizes[i] = total - sizes[i] + new, new
        dropped = 0
        while total > cap:
            total -= sizes.pop()
            ids.pop()
            levels.pop()
            dropped += 1
        return list(zip(ids, levels)), dropped

    def _choose_levels(self, ids: Tensor, near: Tensor, focal: float) -> Tensor:
        """Per chunk, the coarsest level whose projected error (pixels at distance ``near``) is within the
        threshold, every finer level being within it too."""
        if self.lod_threshold_px is None or self.source.num_levels == 1:
            return torch.zeros(ids.numel(), dtype=torch.int64)
        px = self.errors[ids] * focal / near[:, None]  # [V, L]
        ok = torch.cumprod((px <= self.lod_threshold_px).to(torch.int64), dim=1)
        return (ok.sum(dim=1) - 1).clamp_min(0)

    def _refresh(self, head: Camera, ipd: float, tangents: dict[str, float], pos: Tensor, rot: Tensor,
                 focal: float) -> None:
        guard = self._guard(head.world_to_camera, ipd, tangents)
        keys, dropped = self._plan(guard, pos, focal)
        self._visible = None  # release the previous visible set before building the next
        protected = set(keys)
        parts = [self._resident(key, protected) for key in keys]
        splats = self._assemble(keys, parts)
        frame_cache = None
        if self.cache_config is not None and self.cache_config.enabled:
            frame_cache = FrameCache(splats, backend=self.backend, config=self.cache_config)
        self._visible = _Visible(guard, pos, rot, tuple(keys), dropped, splats, frame_cache)

    def _resident(self, key: ChunkKey, protected: set[ChunkKey]) -> Tensor:
        """The device copy of ``key``: a cache hit (waiting for its copy) or a copy made now."""
        entry = self.cache.lookup(key)
        if entry is None:
            entry = self._copy_in(key, protected)
        if entry.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(entry.ready)
            entry.data.record_stream(torch.cuda.current_stream(self.device))
            entry.ready = None
        return entry.data

    def _copy_in(self, key: ChunkKey, protected: set[ChunkKey]) -> CacheEntry:
        """Copy ``key`` host -> device (asynchronously on the side stream on CUDA) and insert it in the cache."""
        host = self.host.get(key)
        nbytes = host.numel() * host.element_size()
        ready = None
        if self.device.type != "cuda":
            data = host  # the host is the device: the entry is resident as it is
        elif self._side is None:
            data = host.to(self.device, non_blocking=True)
        else:
            main = torch.cuda.current_stream(self.device)
            self._side.wait_stream(main)  # memory freed by the render stream is reusable by the copy
            with torch.cuda.stream(self._side):
                data = torch.empty_like(host, device=self.device)
                data.copy_(host, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(self._side)
        self.cache.insert(key, data, nbytes, ready, protected)
        self.bytes_copied += nbytes
        return self.cache.peek(key)

    def _assemble(self, keys: list[ChunkKey], parts: list[Tensor]) -> Splats:
        k = self.source.sh_coeffs
        views = [unpack_splats(p, int(self.source.counts[c, lv]), k) for (c, lv), p in zip(keys, parts)]
        if not views:
            return Splats.random(0, sh_degree=self.sh_degree, device=self.device)
        fields = ("means", "quats", "log_scales", "opacity_logits", "sh")
        return Splats(*(torch.cat([getattr(v, f) for v in views]) for f in fields))

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
        keys, _ = self._plan(self._guard(w2c, ipd, tangents), pos, self._focal)
        protected = set(self._visible.keys)
        started = []
        for key in keys:
            if key in self.cache:
                continue
            if not self.cache.can_fit(int(self.entry_bytes[key]), protected):
                break
            self._copy_in(key, protected)
            protected.add(key)
            started.append(key)
        return started

    def _stats(self, refreshed: bool, assemble_ms: float) -> StreamingStats:
        visible = self._visible
        levels = [0] * self.source.num_levels
        for _, lv in visible.keys:
            levels[lv] += 1
        frame_bytes = self.bytes_copied - self._copied_at_last_frame
        self._copied_at_last_frame = self.bytes_copied
        return StreamingStats(
            frame=self._frames, refreshed=refreshed, visible_chunks=len(visible.keys),
            visible_gaussians=len(visible.splats), levels_used=tuple(levels), dropped_chunks=visible.dropped,
            resident_bytes=self.cache.resident_bytes, resident_entries=len(self.cache),
            cache_budget_bytes=self.cache.budget_bytes, assembled_bytes=visible.splats.nbytes(),
            hits=self.cache.hits, misses=self.cache.misses, evictions=self.cache.evictions,
            bytes_copied=self.bytes_copied, frame_bytes_copied=frame_bytes, prefetched=len(self.last_prefetch),
            assemble_ms=assemble_ms)


def _pose(cam: Camera) -> tuple[Tensor, Tensor]:
    """Camera position ``[3]`` and world-to-camera rotation ``[3, 3]`` (float64)."""
    w2c = cam.world_to_camera.to(torch.float64)
    return -(w2c[:3, :3].T @ w2c[:3, 3]), w2c[:3, :3]
