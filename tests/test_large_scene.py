"""Large scenes: octree partitioning, moment-matched LOD merging, the chunk file format, the LRU chunk cache,
streaming renders against full renders, prefetch, and ``gscache convert --chunks``."""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from data import SceneFormatError, open_chunk_file, save_scene, write_chunk_file
from data.chunk_file import HEADER_BYTES, TABLE_DTYPE
from gscache.cli import main
from renderer import CacheConfig, Camera, Splats, StereoRig, intrinsics_from_fov, look_at, render
from renderer.chunks import opacity_aware_reach
from renderer.lod import (
    build_chunked_scene,
    covariance_to_quat_scale,
    eigh_sym3,
    gaussian_weights,
    merge_groups,
    morton_codes,
    pack_splats,
    partition_octree,
    unpack_splats,
)
from renderer.splats import quat_to_rotmat
from renderer.streaming import GpuChunkCache, HostChunkStore, StreamingConfig, StreamingRenderer


def _slab(n=3000, sh_degree=0, seed=0) -> Splats:
    """Gaussians over a wide slab: any one view sees only part of it."""
    s = Splats.random(n, sh_degree=sh_degree, seed=seed, extent=1.0)
    return Splats(s.means * torch.tensor([6.0, 0.5, 6.0]), s.quats, s.log_scales + 0.5, s.opacity_logits, s.sh)


def _walk(frames, step=0.3, turn_deg=3.0, size=(64, 48), ipd=0.0):
    k = intrinsics_from_fov(*size, 45.0)
    for i in range(frames):
        yaw = math.radians(turn_deg * i)
        eye = torch.tensor([-4.0, 0.0, -5.0 + step * i], dtype=torch.float64)
        target = eye + torch.tensor([math.sin(yaw), 0.0, math.cos(yaw)], dtype=torch.float64)
        cam = Camera(look_at(eye, target, (0, -1, 0)), k, *size)
        yield StereoRig(cam, ipd) if ipd else cam


def _psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


@pytest.fixture(scope="module")
def slab_file(tmp_path_factory) -> tuple[Path, Splats]:
    scene = _slab(sh_degree=1)
    path = tmp_path_factory.mktemp("chunks") / "slab.gschunks"
    write_chunk_file(path, build_chunked_scene(scene, chunk_size=128, lod_levels=2))
    return path, scene


# ----- partitioning --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 7, 100, 5000])
def test_partition_covers_every_gaussian_once(chunk_size):
    s = _slab(2000)
    part = partition_octree(s.means, chunk_size)
    assert torch.equal(torch.sort(part.order).values, torch.arange(len(s)))
    counts = part.counts()
    assert int(counts.sum()) == len(s) and int(counts.min()) >= 1 and int(counts.max()) <= chunk_size
    again = partition_octree(s.means, chunk_size)  # deterministic
    assert torch.equal(part.order, again.order) and torch.equal(part.starts, again.starts)


def test_partition_of_coincident_points_and_of_nothing():
    means = torch.zeros(50, 3)
    part = partition_octree(means, 8)
    assert part.counts().tolist() == [8] * 6 + [2]
    assert partition_octree(torch.zeros(0, 3), 8).num_chunks == 0
    with pytest.raises(ValueError, match="chunk_size"):
        partition_octree(means, 0)


def test_chunks_are_compact_and_bounds_are_right():
    s = _slab(4000)
    scene = build_chunked_scene(s, chunk_size=256)
    extent = float((s.means.max(0).values - s.means.min(0).values).max())
    reach = opacity_aware_reach(scene.levels[0])
    for c in range(scene.num_chunks):
        part = scene.entry_splats(c)
        lo, hi = part.means.min(0).values, part.means.max(0).values
        assert torch.equal(scene.aabb_min[c, 0], lo) and torch.equal(scene.aabb_max[c, 0], hi)
        a, b = int(scene.level_starts[0][c]), int(scene.level_starts[0][c + 1])
        dist = (part.means.double() - scene.centers[c, 0].double()).norm(dim=1) + reach[a:b].double()
        assert float(dist.max()) <= float(scene.radii[c, 0])
        assert float((hi - lo).max()) < 0.5 * extent  # an octree cell, not a slice across the scene


# ----- LOD merging ---------------------------------------------------------------------------------------------
def test_merge_preserves_mass_mean_and_covariance():
    s = Splats.random(600, sh_degree=2, seed=4, extent=0.3)
    s = Splats(s.means, s.quats, s.log_scales, s.opacity_logits - 2.0, s.sh)  # low opacities: no clamping
    group = torch.arange(600) // 6
    merged, spread = merge_groups(s, group, 100)
    w = gaussian_weights(s)
    for g in (0, 37, 99):
        sel = group == g
        wg = w[sel] / w[sel].sum()
        mu = (wg[:, None] * s.means[sel].double()).sum(0)
        d = s.means[sel].double() - mu
        cov = (wg[:, None, None] * (s.covariances()[sel].double() + d[:, :, None] * d[:, None, :])).sum(0)
        torch.testing.assert_close(merged.means[g].double(), mu, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(merged.covariances()[g].double(), cov, atol=1e-7, rtol=1e-4)
        torch.testing.assert_close(gaussian_weights(merged.subset(slice(g, g + 1)))[0], w[sel].sum(), rtol=1e-4,
                                   atol=0)
        torch.testing.assert_close(merged.sh[g].double(), (wg[:, None, None] * s.sh[sel].double()).sum(0),
                                   atol=1e-6, rtol=1e-5)
        assert float(spread[g]) == pytest.approx(float((wg * d.square().sum(1)).sum().sqrt()), rel=1e-9)


def test_merging_one_gaussian_gives_it_back():
    s = Splats.random(50, seed=1)
    merged, spread = merge_groups(s, torch.arange(50), 50)
    torch.testing.assert_close(merged.covariances(), s.covariances(), atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(merged.opacities(), s.opacities(), atol=1e-5, rtol=1e-5)
    assert float(spread.max()) == 0.0


def test_covariance_decomposition_round_trip():
    s = Splats.random(200, seed=2)
    quats, log_scales = covariance_to_quat_scale(s.covariances().double())
    rs = quat_to_rotmat(quats) * torch.exp(log_scales)[:, None, :]
    torch.testing.assert_close(rs @ rs.transpose(1, 2), s.covariances().double(), atol=1e-9, rtol=1e-6)
    assert torch.allclose(quats.norm(dim=1), torch.ones(200, dtype=torch.float64))


def test_lod_levels_shrink_and_keep_chunk_mass():
    s = _slab(2000)
    scene = build_chunked_scene(s, chunk_size=200, lod_levels=2, lod_factor=4)
    counts = scene.counts
    assert torch.equal(counts[:, 1], (counts[:, 0] + 3) // 4) and torch.equal(counts[:, 2], (counts[:, 0] + 15) // 16)
    assert float(scene.errors[:, 0].abs().max()) == 0.0 and bool((scene.errors[:, 1:] > 0).all())
    for c in (0, scene.num_chunks - 1):
        base, coarse = scene.entry_splats(c, 0), scene.entry_splats(c, 2)
        mass = gaussian_weights(base).sum()
        if bool((coarse.opacities() < 0.99).all()):
            torch.testing.assert_close(gaussian_weights(coarse).sum(), mass, rtol=1e-4, atol=0)
        # the level's sphere contains every merged Gaussian's reach
        reach = opacity_aware_reach(coarse).double()
        dist = (coarse.means.double() - scene.centers[c, 2].double()).norm(dim=1) + reach
        assert float(dist.max()) <= float(scene.radii[c, 2])


@pytest.mark.parametrize("case", ["random", "flat", "needle", "double", "isotropic", "rank1", "zero"])
def test_closed_form_eigensolver_matches_lapack(case):
    g = torch.Generator().manual_seed(7)
    rot = quat_to_rotmat(torch.randn(4000, 4, generator=g, dtype=torch.float64))
    values = {"random": torch.exp(torch.empty(4000, 3, dtype=torch.float64).uniform_(-3, 3, generator=g)),
              "flat": torch.tensor([1e-12, 1.0, 2.0], dtype=torch.float64).expand(4000, 3),
              "needle": torch.tensor([1e-10, 2e-10, 1.0], dtype=torch.float64).expand(4000, 3),
              "double": torch.tensor([0.5, 2.0, 2.0], dtype=torch.float64).expand(4000, 3),
              "isotropic": torch.full((4000, 3), 3.0, dtype=torch.float64),
              "rank1": torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64).expand(4000, 3),
              "zero": torch.zeros(4000, 3, dtype=torch.float64)}[case]
    cov = rot @ torch.diag_embed(values) @ rot.transpose(1, 2)
    cov = (cov + cov.transpose(1, 2)) / 2
    vals, vecs = eigh_sym3(torch.stack([cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2], cov[:, 0, 1], cov[:, 0, 2],
                                        cov[:, 1, 2]], 1))
    norm = cov.abs().amax(dim=(1, 2)).clamp_min(1e-300)[:, None]
    assert float(((vals - torch.linalg.eigvalsh(cov)).abs() / norm).max()) < 1e-13
    back = vecs @ torch.diag_embed(vals) @ vecs.transpose(1, 2)
    assert float(((back - cov).abs().amax(dim=(1, 2)) / norm[:, 0]).max()) < 1e-13
    torch.testing.assert_close(vecs.transpose(1, 2) @ vecs, torch.eye(3, dtype=torch.float64).expand(4000, 3, 3),
                               atol=1e-13, rtol=0)


def test_levels_merged_level_by_level_equal_merging_the_originals():
    """Level l is built from level l - 1 (moments carried in float64): the same Gaussians as merging the runs of
    4^l originals at once."""
    s = Splats.random(3000, sh_degree=1, seed=3, extent=2.0)
    scene = build_chunked_scene(s, chunk_size=700, lod_levels=3, lod_factor=4)
    base, starts = scene.levels[0], scene.level_starts[0]
    counts = starts[1:] - starts[:-1]
    chunk_of = torch.repeat_interleave(torch.arange(len(counts)), counts)
    for level in (1, 2, 3):
        f = 4**level
        runs = (counts + f - 1) // f
        first = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(runs, 0)])
        group = first[chunk_of] + (torch.arange(len(base)) - starts[chunk_of]) // f
        ref, spread = merge_groups(base, group, int(first[-1]))
        got = scene.levels[level]
        torch.testing.assert_close(got.means, ref.means, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got.covariances(), ref.covariances(), atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(got.opacities(), ref.opacities(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.sh, ref.sh, atol=1e-6, rtol=1e-6)
        rms = torch.stack([spread[first[c]:first[c + 1]].square().mean().sqrt() for c in range(len(counts))])
        torch.testing.assert_close(scene.errors[:, level].double(), rms, atol=1e-6, rtol=1e-5)


def test_build_is_the_same_in_any_blocks_and_on_any_threads():
    s = _slab(5000, sh_degree=1)
    ref = build_chunked_scene(s, chunk_size=300, lod_levels=2, block_gaussians=10**9, workers=1)
    for block, workers in ((1, 1), (1000, 3), (2500, 2)):
        got = build_chunked_scene(s, chunk_size=300, lod_levels=2, block_gaussians=block, workers=workers)
        for a, b in zip(ref.levels, got.levels):
            for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
                assert torch.equal(getattr(a, name), getattr(b, name)), (block, workers, name)
        for name in ("aabb_min", "aabb_max", "centers", "radii", "errors"):
            assert torch.equal(getattr(ref, name), getattr(got, name)), (block, workers, name)
    with pytest.raises(ValueError, match="block_gaussians"):
        build_chunked_scene(s, block_gaussians=0)


def test_morton_codes_interleave_the_quantised_axes():
    p = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    top = 2**21 - 1
    codes = morton_codes(p, block=2).tolist()
    assert codes[0] == 0 and codes[1] == 2**63 - 1
    assert codes[2] == sum(1 << (3 * b) for b in range(21)) and codes[3] == codes[2] << 1 and codes[4] == codes[2] << 2
    q = torch.tensor([[top // 2, 5, 17]], dtype=torch.float64) / top
    one = morton_codes(torch.cat([q, torch.zeros(1, 3), torch.ones(1, 3)]))[0]
    expect = sum(((v >> b) & 1) << (3 * b + axis) for axis, v in enumerate((top // 2, 5, 17)) for b in range(21))
    assert int(one) == expect


# ----- chunk file ----------------------------------------------------------------------------------------------
def test_pack_unpack_is_exact():
    s = Splats.random(33, sh_degree=3, seed=5)
    back = unpack_splats(pack_splats(s), 33, 16)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert torch.equal(getattr(back, name), getattr(s, name))


def test_chunk_file_round_trip_is_bit_exact(slab_file):
    path, scene = slab_file
    built = build_chunked_scene(scene, chunk_size=128, lod_levels=2)
    cf = open_chunk_file(path)
    cf.verify()
    assert (cf.num_chunks, cf.num_levels, cf.sh_coeffs, cf.num_gaussians) == (built.num_chunks, 3, 4, len(scene))
    assert torch.equal(cf.counts, built.counts)
    for name in ("aabb_min", "aabb_max", "centers", "radii", "errors"):
        assert torch.equal(getattr(cf, name), getattr(built, name)), name
    for c in range(cf.num_chunks):
        for level in range(3):
            assert torch.equal(cf.read(c, level), built.read(c, level))
    full = cf.load_level(0)
    order = torch.argsort(full.means[:, 0] * 1e6 + full.means[:, 2])
    ref_order = torch.argsort(scene.means[:, 0] * 1e6 + scene.means[:, 2])
    assert torch.equal(full.sh[order], scene.sh[ref_order])


def test_parallel_writer_is_byte_identical(slab_file, tmp_path):
    path, scene = slab_file
    built = build_chunked_scene(scene, chunk_size=128, lod_levels=2)
    for workers, fsync in ((1, True), (5, False)):
        out = tmp_path / f"w{workers}.gschunks"
        info = write_chunk_file(out, built, fsync=fsync, workers=workers)
        assert out.read_bytes() == path.read_bytes() and info.file_bytes == path.stat().st_size
    cf = open_chunk_file(path)
    start, end = cf.data_span()
    buf = np.empty(end - start, dtype=np.uint8)
    cf.read_span(buf, workers=3, piece_bytes=4096)
    offsets, sizes = cf.entry_spans()
    for i in (0, 11, len(offsets) - 1):
        lo = int(offsets[i]) - start
        assert np.array_equal(buf[lo:lo + int(sizes[i])].view("<f4"), cf.read(*divmod(i, cf.num_levels)).numpy())
    with pytest.raises(ValueError, match="uint8 array"):
        cf.read_span(np.empty(3, dtype=np.uint8))


def _corrupt(src: Path, dst: Path, edit) -> Path:
    data = bytearray(src.read_bytes())
    dst.write_bytes(bytes(edit(data)))
    return dst


def test_truncated_file_is_detected(slab_file, tmp_path):
    path, _ = slab_file
    size = path.stat().st_size
    for keep in (4, HEADER_BYTES - 1, HEADER_BYTES + 1000, size - 10):
        bad = _corrupt(path, tmp_path / f"t{keep}.gschunks", lambda d, k=keep: d[:k])
        with pytest.raises(SceneFormatError, match=r"t\d+\.gschunks: truncated"):
            open_chunk_file(bad)


def test_truncated_data_names_the_chunk(slab_file, tmp_path):
    """A file cut inside the data but with the table kept (e.g. a partial copy of the table moved): the first
    entry that runs past the end is named."""
    path, _ = slab_file
    cf = open_chunk_file(path)
    last = int(cf.table["offset"][-1])
    head = bytearray(path.read_bytes()[:HEADER_BYTES])
    table = cf.table.tobytes()
    fields = list(struct.unpack("<8sIIIIIIQQQII", bytes(head)))
    fields[8], fields[10] = HEADER_BYTES, zlib.crc32(table)  # the table right after the header
    raw = struct.pack("<8sIIIIIIQQQII", *fields)
    raw = raw[:-4] + struct.pack("<I", zlib.crc32(raw[:-4]))
    body = path.read_bytes()[HEADER_BYTES + len(table):last]
    bad = tmp_path / "cut.gschunks"
    bad.write_bytes(raw + table + body)
    with pytest.raises(SceneFormatError, match=r"cut\.gschunks: truncated: chunk \d+ \(level \d\)"):
        open_chunk_file(bad)


def test_flipped_byte_is_detected_by_checksums(slab_file, tmp_path):
    path, _ = slab_file
    cf = open_chunk_file(path)
    offset = int(cf.table["offset"][5 * cf.num_levels + 1]) + 17  # chunk 5, level 1

    def flip(at):
        def edit(d):
            d[at] ^= 0x40
            return d
        return edit

    bad = _corrupt(path, tmp_path / "data.gschunks", flip(offset))
    opened = open_chunk_file(bad)  # the table is fine: opening works, reading chunk 5 fails
    opened.read(4, 1)
    with pytest.raises(SceneFormatError, match=r"data\.gschunks: chunk 5 \(level 1\): checksum mismatch"):
        opened.read(5, 1)
    with pytest.raises(SceneFormatError, match="chunk 5 .level 1.: checksum"):
        open_chunk_file(bad).verify()
    table_at = struct.unpack_from("<Q", path.read_bytes(), 40)[0]
    bad = _corrupt(path, tmp_path / "table.gschunks", flip(table_at + TABLE_DTYPE.itemsize * 3 + 20))
    with pytest.raises(SceneFormatError, match="table checksum mismatch"):
        open_chunk_file(bad)
    bad = _corrupt(path, tmp_path / "head.gschunks", flip(20))
    with pytest.raises(SceneFormatError, match="header checksum mismatch"):
        open_chunk_file(bad)


def test_wrong_magic_and_other_version(slab_file, tmp_path):
    path, _ = slab_file

    def magic(d):
        d[:8] = b"NOTCHUNK"
        return d

    with pytest.raises(SceneFormatError, match="magic.gschunks: not a gscache chunk file"):
        open_chunk_file(_corrupt(path, tmp_path / "magic.gschunks", magic))

    def version(d):
        d[8:12] = struct.pack("<I", 2)
        return d

    with pytest.raises(SceneFormatError, match="chunk file version 2, this gscache reads version 1"):
        open_chunk_file(_corrupt(path, tmp_path / "v2.gschunks", version))
    with pytest.raises(SceneFormatError, match="missing.gschunks: file not found"):
        open_chunk_file(tmp_path / "missing.gschunks")


def test_write_is_atomic(tmp_path):
    with pytest.raises(SceneFormatError, match="does not exist"):
        write_chunk_file(tmp_path / "nope" / "x.gschunks", build_chunked_scene(_slab(100), 32))
    assert list(tmp_path.iterdir()) == []


# ----- LRU cache -----------------------------------------------------------------------------------------------
def test_lru_hits_evictions_and_budget():
    cache = GpuChunkCache(budget_bytes=400)
    blob = torch.zeros(25)  # 100 bytes
    for key in "abcd":
        assert cache.lookup(key) is None
        cache.insert(key, blob)
    assert cache.lookup("a") is not None and cache.lookup("c") is not None  # order now b, d, a, c
    assert cache.insert("e", blob) == ["b"]
    assert cache.insert("f", torch.zeros(50), protected={"d"}) == ["a", "c"]  # d is protected: a and c go
    assert cache.keys() == ["d", "e", "f"] and cache.resident_bytes == 400
    assert (cache.hits, cache.misses, cache.evictions) == (2, 4, 3)
    assert cache.peak_bytes <= cache.budget_bytes
    with pytest.raises(ValueError, match="does not fit a chunk cache"):
        cache.insert("huge", torch.zeros(101))
    with pytest.raises(ValueError, match="beside the entries this frame needs"):
        cache.insert("g", blob, protected={"d", "e", "f"})
    assert cache.keys() == ["d", "e", "f"]


def test_budget_smaller_than_a_chunk_is_a_clear_error(slab_file):
    path, _ = slab_file
    cf = open_chunk_file(path)
    with pytest.raises(ValueError, match="smaller than the largest chunk"):
        StreamingRenderer(cf, gpu_budget_bytes=cf.info.largest_entry_bytes, backend="torch", device="cpu")


# ----- streaming renders ---------------------------------------------------------------------------------------
def _streamer(path, chunks_in_cache, frame_mib=2.0, **kw) -> StreamingRenderer:
    """A CPU streamer whose chunk cache holds about ``chunks_in_cache`` of the largest chunk, with ``frame_mib`` MiB
    of the budget for the frame beside it."""
    cf = open_chunk_file(path)
    cache = cf.info.largest_entry_bytes * chunks_in_cache
    budget = cache + int(frame_mib * 2**20)
    config = replace(kw.pop("config", None) or StreamingConfig(), cache_fraction=(cache + 0.5) / budget)
    return StreamingRenderer(cf, gpu_budget_bytes=budget, backend="torch", config=config, device="cpu", **kw)


def test_streaming_with_lod_off_equals_the_full_render_under_evictions(slab_file):
    path, scene = slab_file
    streamer = _streamer(path, 20)  # about the largest visible set: turning makes it evict
    refreshes = 0
    for view in _walk(12, step=0.2, turn_deg=-10.0, ipd=0.2):
        out = streamer.render(view, render_mode="rgb+depth")
        ref = render(scene, view, backend="torch", render_mode="rgb+depth")
        torch.testing.assert_close(out.image, ref.image, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.depth, ref.depth, atol=1e-5, rtol=0)
        stats = streamer.last_stats
        assert stats.dropped_chunks == 0 and stats.levels_used[1:] == (0, 0) and stats.batches == 1
        assert stats.resident_bytes <= stats.cache_budget_bytes
        assert streamer.cache.peak_bytes <= stats.cache_budget_bytes
        assert out.projected is None
        refreshes += stats.refreshed
    assert stats.visible_chunks < open_chunk_file(path).num_chunks
    assert stats.evictions > 0 and stats.hits > 0 and refreshes >= 3


@pytest.mark.parametrize("mode", ["rgb", "rgb+depth", "alpha"])
def test_depth_slabs_equal_the_full_render(slab_file, mode):
    """A frame share too small for the visible set: the frame is drawn in depth slabs, composited front to back,
    and is the one-pass image up to what the one-pass render leaves behind a pixel it stops (< 1e-2, PSNR >> 40)."""
    path, scene = slab_file
    streamer = _streamer(path, 40, config=StreamingConfig(max_batch_gaussians=300))
    bg = torch.tensor([0.2, 0.4, 0.6])
    for view in _walk(3, step=0.3, turn_deg=-8.0, ipd=0.2):
        out = streamer.render(view, background=bg, render_mode=mode)
        ref = render(scene, view, backend="torch", background=bg, render_mode=mode)
        stats = streamer.last_stats
        assert stats.batches > 3 and stats.dropped_chunks == 0 and stats.frame_streamed_bytes == 0
        assert stats.visible_gaussians > 3 * 300 and stats.assembled_bytes <= 300 * 4 * (11 + 3 * 4)
        torch.testing.assert_close(out.alpha, ref.alpha, atol=1e-2, rtol=0)
        assert _psnr(out.alpha, ref.alpha) > 60
        if mode != "alpha":
            assert out.image.shape == ref.image.shape
            torch.testing.assert_close(out.image, ref.image, atol=1e-2, rtol=0)
            assert _psnr(out.image, ref.image) > 60
        if mode == "rgb+depth":
            hit = ref.alpha > 0.05
            torch.testing.assert_close(out.depth[hit], ref.depth[hit], atol=1e-3, rtol=1e-4)
        assert sum(out.stats.visible) > 0 and out.stats.tile_keys > 0


def test_visible_set_larger_than_the_cache_is_streamed_without_thrashing(slab_file):
    """The cache keeps the nearest visible entries; the others are copied for their slab and freed, every frame,
    instead of evicting one another (an LRU over a cyclic scan would miss on every entry)."""
    path, scene = slab_file
    streamer = _streamer(path, 6, config=StreamingConfig(max_batch_gaussians=400, prefetch=False))
    view = next(_walk(1, ipd=0.2))
    first = streamer.render(view)
    stats = streamer.last_stats
    assert stats.frame_streamed_bytes > 0 and stats.batches > 1
    assert stats.resident_entries < stats.visible_chunks and stats.resident_bytes <= stats.cache_budget_bytes
    assert _psnr(first.image, render(scene, view, backend="torch").image) > 60
    cached = set(streamer.cache.keys())
    misses, evictions = stats.misses, stats.evictions
    again = streamer.render(view)
    assert torch.equal(again.image, first.image)
    stats = streamer.last_stats
    assert set(streamer.cache.keys()) == cached and stats.evictions == evictions  # nothing thrashed
    assert stats.hits >= len(cached) and stats.misses - misses == stats.visible_chunks - len(cached)


def test_cameras_that_do_not_share_depth_are_sliced_one_at_a_time(slab_file):
    path, scene = slab_file
    streamer = _streamer(path, 40, config=StreamingConfig(max_batch_gaussians=300))
    a, b = list(_walk(2, turn_deg=20.0))
    out = streamer.render([a, b.with_pose(b.world_to_camera)])  # two orientations
    ref = render(scene, [a, b], backend="torch")
    assert out.image.shape == ref.image.shape and len(out.stats.visible) == 2
    assert _psnr(out.image, ref.image) > 60


def test_batch_capacity_follows_the_budget_and_the_measured_pairs(slab_file):
    path, _ = slab_file
    streamer = _streamer(path, 40, frame_mib=1.0)
    single, multi = streamer.batch_capacity(2, 64, 48)
    frame = streamer.gpu_budget_bytes - streamer.cache.budget_bytes
    outputs = 2 * 64 * 48 * 4 * 4
    per_pass = 4 * (11 + 3 * 4) + 2 * (48 + 16 * 4.0)  # pairs_per_item 4 to start with
    assert single == int((frame - outputs) // per_pass) and 0 < multi < single
    streamer.render(next(_walk(1, ipd=0.2)))
    measured = streamer.last_stats.pairs_per_item
    assert measured > 0 and measured != 4.0  # the next frame is sized with what the rasterizer reported
    with pytest.raises(ValueError, match="too little for 2 x 4000x4000 outputs"):
        streamer.batch_capacity(2, 4000, 4000)


def test_streaming_through_the_frame_cache(slab_file):
    path, scene = slab_file
    streamer = _streamer(path, 40, cache_config=CacheConfig(chunk_size=64, error_budget=0.0, max_depth=1))
    for view in _walk(4):
        out = streamer.render(view, sh_degree=0)
        ref = render(scene, view, backend="torch", sh_degree=0)
        assert _psnr(out.image, ref.image) >= 60
        assert out.stats.cache is not None


def test_lod_on_draws_coarser_levels_far_away_and_stays_close(slab_file):
    path, scene = slab_file
    streamer = _streamer(path, 40, lod_threshold_px=8.0)
    psnrs = []
    for view in _walk(3, size=(96, 72)):
        out = streamer.render(view)
        psnrs.append(_psnr(out.image, render(scene, view, backend="torch").image))
    stats = streamer.last_stats
    assert stats.levels_used[0] > 0 and sum(stats.levels_used[1:]) > 0
    assert stats.visible_gaussians < sum(int(n) for n in open_chunk_file(path).counts[:, 0])
    assert min(psnrs) > 20


def test_tight_budget_coarsens_far_chunks_with_lod_and_streams_without(slab_file):
    path, scene = slab_file
    lod = _streamer(path, 6, lod_threshold_px=0.0)  # threshold 0: level 0 unless the budget forces coarser
    view = next(_walk(1))
    lod.render(view)
    assert lod.last_stats.dropped_chunks == 0 and sum(lod.last_stats.levels_used[1:]) > 0
    assert lod.last_stats.frame_streamed_bytes == 0  # coarsened to fit the cache
    plain = _streamer(path, 6)
    out = plain.render(view)
    stats = plain.last_stats
    assert stats.dropped_chunks == 0 and stats.frame_streamed_bytes > 0 and stats.levels_used[1:] == (0, 0)
    assert stats.resident_bytes <= stats.cache_budget_bytes
    assert _psnr(out.image, render(scene, view, backend="torch").image) > 60


def test_prefetch_requests_chunks_ahead_of_motion(slab_file):
    path, _ = slab_file
    streamer = _streamer(path, 60, config=StreamingConfig(prefetch_frames=10))
    k = intrinsics_from_fov(64, 48, 45.0)

    def strafe(i):  # looking along +z, moving along +x: new chunks come in from the right
        eye = torch.tensor([-5.0 + 0.3 * i, 0.0, -5.0], dtype=torch.float64)
        return Camera(look_at(eye, eye + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), (0, -1, 0)), k, 64, 48)

    streamer.render(strafe(0))
    assert streamer.last_prefetch == []  # one pose: no motion to extrapolate yet
    streamer.render(strafe(1))
    predicted, _ = streamer.predicted_pose()
    assert float(predicted[0]) == pytest.approx(-5.0 + 0.3 + 0.3 * 10)
    fetched = streamer.last_prefetch
    drawn = [c for c, _ in streamer._visible.keys]
    assert fetched and not set(fetched) & set(streamer._visible.keys)
    centers = open_chunk_file(path).centers[:, 0]
    assert float(centers[[c for c, _ in fetched], 0].mean()) > float(centers[drawn, 0].mean())
    hits_before, misses_before = streamer.cache.hits, streamer.cache.misses
    for i in range(2, 14):
        streamer.render(strafe(i))
    assert streamer.cache.hits > hits_before
    assert streamer.cache.misses - misses_before < len(fetched)  # most chunks came in before they were needed


def test_host_store_preloads_a_chunk_file_in_one_read(slab_file, tmp_path):
    path, _ = slab_file
    cf = open_chunk_file(path)
    store = HostChunkStore(cf)
    store.preload(workers=3)
    assert len(store._entries) == cf.num_chunks * cf.num_levels
    for key in ((0, 0), (cf.num_chunks - 1, 2), (3, 1)):
        assert torch.equal(store.get(key), cf.read(*key))
    assert store.nbytes == sum(cf.entry_bytes(c, lv) for c in range(cf.num_chunks) for lv in range(cf.num_levels))
    shared = StreamingRenderer(cf, gpu_budget_bytes=2**22, backend="torch", device="cpu", host=store)
    assert shared.host is store
    with pytest.raises(ValueError, match="HostChunkStore of this chunk_file"):
        StreamingRenderer(open_chunk_file(path), gpu_budget_bytes=2**22, backend="torch", device="cpu", host=store)
    offset = int(cf.table["offset"][7]) + 5  # chunk 2, level 1
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    bad = tmp_path / "bad.gschunks"
    bad.write_bytes(bytes(data))
    with pytest.raises(SceneFormatError, match=r"bad\.gschunks: chunk 2 \(level 1\): checksum mismatch"):
        HostChunkStore(open_chunk_file(bad)).preload()


@pytest.mark.gpu
def test_streaming_on_cuda_stays_within_the_budget_and_equals_the_full_render(slab_file):
    """Async copies on the side stream, transients, slabs and the LRU on a GPU: the image equals the full render
    and the peak of allocated memory stays within the budget (+10%)."""
    path, scene = slab_file
    cf = open_chunk_file(path)
    cache = cf.info.largest_entry_bytes * 6
    budget = cache + (8 << 20) + (64 << 20)
    device = torch.device("cuda")
    full = scene.to(device)
    views = list(_walk(6, step=0.3, turn_deg=-8.0, ipd=0.2, size=(320, 240)))
    refs = [render(full, v, backend="native").image.cpu() for v in views]
    del full
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    streamer = StreamingRenderer(cf, budget, backend="native", device=device,
                                 config=StreamingConfig(cache_fraction=cache / budget, max_batch_gaussians=500))
    for view, ref in zip(views, refs):
        out = streamer.render(view)
        assert _psnr(out.image.cpu(), ref) > 50
        del out
    torch.cuda.synchronize()
    assert streamer.last_stats.batches > 1 and streamer.last_stats.frame_streamed_bytes > 0
    assert torch.cuda.max_memory_allocated() - base <= 1.1 * budget


# ----- the command line ----------------------------------------------------------------------------------------
def test_convert_chunks_end_to_end(tmp_path, capsys):
    src = tmp_path / "scene.ply"
    scene = _slab(1500, sh_degree=1)
    save_scene(src, scene)
    dst = tmp_path / "scene.gschunks"
    code = main(["convert", str(src), str(dst), "--chunks", "--chunk-size", "100", "--lod-levels", "2"])
    assert code == 0
    assert "chunks" in capsys.readouterr().out
    cf = open_chunk_file(dst)
    cf.verify()
    assert cf.num_gaussians == 1500 and cf.num_levels == 3 and cf.sh_coeffs == 4
    assert int(cf.counts[:, 0].max()) <= 100
    assert not list(tmp_path.glob(".*tmp"))
    code = main(["convert", str(src), str(tmp_path / "bad.gschunks"), "--chunks", "--chunk-size", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "chunk_size" in err and "Traceback" not in err
    bad = tmp_path / "broken.gschunks"
    bad.write_bytes(dst.read_bytes()[:100])
    with pytest.raises(SceneFormatError, match="broken.gschunks: truncated"):
        open_chunk_file(bad)


@pytest.mark.gpu
def test_build_on_cuda_matches_the_cpu_build():
    s = _slab(20000, sh_degree=1)
    cpu = build_chunked_scene(s, chunk_size=700, lod_levels=3, workers=1)
    gpu = build_chunked_scene(s, chunk_size=700, lod_levels=3, device="cuda", block_gaussians=3000)
    assert torch.equal(cpu.levels[0].sh, gpu.levels[0].sh)  # level 0 is gathered on the CPU either way
    for a, b in zip(cpu.levels, gpu.levels):
        torch.testing.assert_close(b.means, a.means, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(b.covariances(), a.covariances(), atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(b.opacities(), a.opacities(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.sh, a.sh, atol=1e-6, rtol=1e-6)
    for name in ("aabb_min", "aabb_max", "centers", "radii", "errors"):
        torch.testing.assert_close(getattr(gpu, name), getattr(cpu, name), atol=1e-5, rtol=1e-5)
    assert [torch.equal(x, y) for x, y in zip(cpu.level_starts, gpu.level_starts)] == [True] * 4
