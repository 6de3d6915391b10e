"""The frame cache on the torch path: exact culling, refresh rules, dynamic depth, quality against uncached."""

from __future__ import annotations

import math

import pytest
import torch

from renderer import (
    CacheConfig,
    Camera,
    FrameCache,
    PathSpec,
    Splats,
    StereoRig,
    head_path,
    intrinsics_from_fov,
    look_at,
    orbit_path,
    render,
)
from renderer.chunks import GuardFrustum, build_chunk_index


def _spread_scene(n=3000, sh_degree=0, seed=0) -> Splats:
    """Gaussians spread over a wide slab so that any one view sees only part of the scene."""
    s = Splats.random(n, sh_degree=sh_degree, seed=seed, extent=1.0)
    means = s.means * torch.tensor([6.0, 0.5, 6.0])
    return Splats(means, s.quats, s.log_scales + 0.5, s.opacity_logits, s.sh)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def _walk(frames: int, step: float = 0.004, turn_deg: float = 0.3, ipd: float = 0.0, size=(64, 48)):
    """A camera near one side of `_spread_scene`, walking and turning slowly; it sees about half the scene."""
    k = intrinsics_from_fov(*size, 45.0)
    for i in range(frames):
        yaw = math.radians(turn_deg * i)
        eye = torch.tensor([-4.0, 0.0, -5.0 + step * i], dtype=torch.float64)
        target = eye + torch.tensor([math.sin(yaw), 0.0, math.cos(yaw)], dtype=torch.float64)
        cam = Camera(look_at(eye, target, (0, -1, 0)), k, *size)
        yield StereoRig(cam, ipd) if ipd else cam


def test_cache_off_is_exactly_the_uncached_render():
    scene = _spread_scene(sh_degree=2)
    cache = FrameCache(scene, backend="torch", config=CacheConfig(enabled=False))
    for view in _walk(3, ipd=0.1):
        assert torch.equal(cache.render(view).image, render(scene, view, backend="torch").image)
    assert cache.last_stats is None


def test_guard_band_culling_gives_identical_images():
    """SH degree 0 and one camera: colours and order are then exact, so any difference would come from culling."""
    scene = _spread_scene(sh_degree=0)
    cache = FrameCache(scene, backend="torch", config=CacheConfig(chunk_size=64, error_budget=0.0, max_depth=1))
    hits = 0
    for view in _walk(12):
        out = cache.render(view, render_mode="rgb+depth")
        ref = render(scene, view, backend="torch", render_mode="rgb+depth")
        torch.testing.assert_close(out.image, ref.image, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.depth, ref.depth, atol=1e-5, rtol=0)
        assert out.stats.visible == ref.stats.visible
        hits += cache.last_stats.visible_hit
    stats = cache.last_stats
    assert hits >= 8, "the visible set should be reused while the head stays in the guard"
    assert stats.visible_count < 0.8 * len(scene), "chunk culling should drop part of this scene"


def test_culling_is_conservative_for_large_gaussians_at_the_edges():
    s = Splats.random(2000, seed=3, extent=4.0)
    scene = Splats(s.means, s.quats, s.log_scales + 1.5, s.opacity_logits + 1.0, s.sh)
    cache = FrameCache(scene, backend="torch", config=CacheConfig(chunk_size=32, error_budget=0.0, max_depth=1))
    for view in _walk(4, size=(80, 40)):
        torch.testing.assert_close(cache.render(view).image, render(scene, view, backend="torch").image,
                                   atol=1e-6, rtol=0)


def test_guard_frustum_sphere_test():
    guard = GuardFrustum(torch.eye(4), tan_left=1.0, tan_right=1.0, tan_up=0.5, tan_down=0.5, angle=0.0, margin=0.0)
    centers = torch.tensor([[0.0, 0, 5], [20.0, 0, 5], [5.5, 0, 5], [0, 0, -3], [0, 0, -0.5]])
    radii = torch.tensor([0.1, 1.0, 1.0, 1.0, 1.0])
    assert guard.sphere_mask(centers, radii).tolist() == [True, False, True, False, True]


def test_chunk_index_covers_every_gaussian_once():
    scene = _spread_scene(n=1000)
    index = build_chunk_index(scene, chunk_size=100)
    assert index.num_chunks == 10
    assert torch.equal(torch.sort(index.members(torch.ones(10, dtype=torch.bool))).values, torch.arange(1000))
    # Every Gaussian's mean lies inside its chunk's sphere.
    for chunk in range(index.num_chunks):
        members = index.order[index.starts[chunk]:index.starts[chunk + 1]]
        dist = (scene.means[members] - index.centers[chunk]).norm(dim=1)
        assert (dist <= index.radii[chunk] + 1e-5).all()
        assert (index.chunk_of[members] == chunk).all()
    # members_ascending: the same Gaussians as members, already in ascending order
    for mask in (torch.arange(10) % 3 == 0, torch.zeros(10, dtype=torch.bool), torch.ones(10, dtype=torch.bool)):
        assert torch.equal(index.members_ascending(mask), torch.sort(index.members(mask)).values)


def test_moving_past_thresholds_refreshes():
    scene = _spread_scene(sh_degree=1)
    config = CacheConfig(chunk_size=64, guard_margin=0.02, guard_angle_deg=5.0, error_budget=1.0, max_depth=100,
                         dynamic_depth=False)
    cache = FrameCache(scene, backend="torch", config=config)
    k = intrinsics_from_fov(48, 32, 70)
    base = torch.tensor([0.0, 0.0, -5.0])

    def at(offset, yaw_deg=0.0):
        eye = base + torch.tensor(offset)
        yaw = math.radians(yaw_deg)
        return Camera(look_at(eye, eye + torch.tensor([math.sin(yaw), 0, math.cos(yaw)]), (0, -1, 0)), k, 48, 32)

    cache.render(at([0.0, 0.0, 0.0]))
    cache.render(at([0.01, 0.0, 0.0]))
    assert cache.last_stats.visible_hit and cache.last_stats.shading_hit
    cache.render(at([0.5, 0.0, 0.0]))  # moved farther than guard_margin * extent
    assert not cache.last_stats.visible_hit and not cache.last_stats.shading_hit
    cache.render(at([0.5, 0.0, 0.0], yaw_deg=3.0))
    assert cache.last_stats.visible_hit
    cache.render(at([0.5, 0.0, 0.0], yaw_deg=9.0))  # turned past the guard angle
    assert not cache.last_stats.visible_hit
    assert cache.last_stats.visible_refreshes == 3
    cache.invalidate()
    cache.render(at([0.5, 0.0, 0.0], yaw_deg=9.0))
    assert not cache.last_stats.visible_hit and cache.last_stats.visible_refreshes == 4


def test_cache_depth_limits_reuse_and_adapts_to_motion():
    scene = _spread_scene(sh_degree=1)
    fixed = FrameCache(scene, backend="torch", config=CacheConfig(chunk_size=64, error_budget=10.0, max_depth=3,
                                                                   dynamic_depth=False))
    ages = [fixed.render(view).stats.cache.age for view in _walk(7, step=0.0, turn_deg=0.0)]
    assert ages == [1, 2, 3, 1, 2, 3, 1]

    def depth_after(step, turn):
        cache = FrameCache(scene, backend="torch", config=CacheConfig(chunk_size=64, error_budget=0.02,
                                                                       max_depth=16))
        for view in _walk(10, step=step, turn_deg=turn):
            cache.render(view)
        return cache.last_stats.depth

    slow, fast = depth_after(0.001, 0.05), depth_after(0.02, 1.0)
    assert slow > fast >= 1


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_quality_against_uncached_on_the_benchmark_paths(sh_degree):
    """Every frame >= 40 dB and mean >= 45 dB against the uncached render, on `head` and on `orbit`."""
    scene = Splats.random(1500, sh_degree=sh_degree, seed=4, extent=1.0)
    spec = PathSpec(center=(0.0, 0.0, 0.0), extent=2.0, width=40, height=32, fov_x_deg=90)
    for name, rigs in (("head", list(head_path(spec, frames=20))), ("orbit", list(orbit_path(spec, frames=4)))):
        cache = FrameCache(scene, backend="torch", config=CacheConfig(chunk_size=64))
        psnrs = [_psnr(cache.render(rig).image, render(scene, rig, backend="torch").image) for rig in rigs]
        assert min(psnrs) >= 40 and sum(min(p, 100) for p in psnrs) / len(psnrs) >= 45, (name, psnrs)
        stats = cache.last_stats
        if name == "head":
            assert stats.shading_refreshes < len(rigs), "the head path should reuse shading"
        else:
            assert stats.shading_refreshes == len(rigs), "7.5 degree steps must refresh every frame"


def test_stats_and_bad_arguments():
    scene = _spread_scene(n=300)
    cache = FrameCache(scene, backend="torch")
    out = cache.render(next(_walk(1, ipd=0.05)))
    stats = out.stats.cache
    assert stats.frames == 1 and stats.visible_refreshes == 1 and stats.shading_refreshes == 1
    assert stats.cull_ms >= 0 and stats.eyes_ms > 0 and out.image.shape[0] == 2
    with pytest.raises(ValueError, match="render_mode"):
        cache.render(next(_walk(1)), render_mode="x")
    with pytest.raises(ValueError, match="chunk_size and max_depth must be >= 1"):
        CacheConfig(chunk_size=0)


@pytest.mark.gpu
def test_native_cache_culls_exactly_and_holds_quality_on_cuda():
    scene = _spread_scene(sh_degree=0).to("cuda")
    exact = FrameCache(scene, backend="native", config=CacheConfig(chunk_size=64, error_budget=0.0, max_depth=1))
    for view in _walk(6):
        torch.testing.assert_close(exact.render(view).image, render(scene, view, backend="native").image,
                                   atol=1e-5, rtol=0)
    assert exact.covariances is None  # native builds covariances in registers
    sh3 = Splats.random(4000, sh_degree=3, seed=8, extent=1.0).to("cuda")
    spec = PathSpec(center=(0.0, 0.0, 0.0), extent=2.0, width=256, height=256, fov_x_deg=90)
    cache = FrameCache(sh3, backend="native")
    rigs = list(head_path(spec, frames=60))
    psnrs = [_psnr(cache.render(rig).image, render(sh3, rig, backend="native").image) for rig in rigs]
    assert min(psnrs) >= 40 and sum(min(p, 100) for p in psnrs) / len(psnrs) >= 45
    assert cache.last_stats.shading_refreshes < len(rigs)
