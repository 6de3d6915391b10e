"""The torch reference backend: analytic images, a brute-force float64 renderer, gradients, modes and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from renderer import Camera, Splats, StereoRig, intrinsics_from_fov, look_at, render
from tests._bruteforce import render_bruteforce


def _camera(width=64, height=48, fov=60.0, cx=None, cy=None, eye=(0.0, 0.0, -3.0), dtype=torch.float64):
    k = intrinsics_from_fov(width, height, fov, cx, cy)
    return Camera(look_at(eye, (0, 0, 0), (0, -1, 0)).to(dtype), k.to(dtype), width, height)


def _single(mean, scale, opacity, rgb, dtype=torch.float64) -> Splats:
    sh = torch.tensor([[[(c - 0.5) / 0.28209479177387814 for c in rgb]]], dtype=dtype)
    return Splats.from_activated(torch.tensor([mean], dtype=dtype), torch.tensor([[1.0, 0, 0, 0]], dtype=dtype),
                                 torch.tensor([[scale] * 3], dtype=dtype), torch.tensor([opacity], dtype=dtype), sh)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else -10 * math.log10(mse)


@pytest.mark.parametrize("principal", [(None, None), (20.5, 30.0)])
def test_single_isotropic_gaussian_matches_closed_form(principal):
    """A sphere-like Gaussian at depth z on the optical axis projects to variance (f s / z)^2 + 0.3."""
    cx, cy = principal
    cam = Camera(torch.eye(4, dtype=torch.float64), intrinsics_from_fov(64, 48, 60.0, cx, cy), 64, 48)
    z, s, o, rgb = 4.0, 0.05, 0.8, (0.9, 0.4, 0.2)
    splats = _single((0.0, 0.0, z), s, o, rgb)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    out = render(splats, cam, backend="torch", background=bg, render_mode="rgb+depth")
    var = (cam.fx * s / z) ** 2 + 0.3
    ys, xs = np.mgrid[0:48, 0:64] + 0.5
    r2 = (xs - cam.cx) ** 2 + (ys - cam.cy) ** 2
    alpha = np.minimum(0.99, o * np.exp(-0.5 * r2 / var))
    alpha = np.where(alpha >= 1 / 255, alpha, 0.0)
    expected = alpha[..., None] * np.array(rgb) + (1 - alpha[..., None]) * bg.numpy()
    np.testing.assert_allclose(out.image[0].numpy(), expected, atol=1e-9)
    np.testing.assert_allclose(out.alpha[0, ..., 0].numpy(), alpha, atol=1e-9)
    hit = alpha > 0
    np.testing.assert_allclose(out.depth[0, ..., 0].numpy()[hit], z, rtol=1e-9)
    assert (out.depth[0, ..., 0].numpy()[~hit] == 0).all()
    # The brightest pixel sits at the principal point.
    peak = np.unravel_index(out.alpha[0, ..., 0].numpy().argmax(), (48, 64))
    assert abs(peak[1] + 0.5 - cam.cx) <= 0.5 and abs(peak[0] + 0.5 - cam.cy) <= 0.5


def test_opaque_front_gaussian_hides_the_one_behind():
    front = _single((0.0, 0.0, 0.0), 0.5, 0.999, (1.0, 0.0, 0.0))
    back = _single((0.0, 0.0, 1.0), 0.5, 0.999, (0.0, 1.0, 0.0))
    both = Splats(*(torch.cat([a, b]) for a, b in zip(
        (front.means, front.quats, front.log_scales, front.opacity_logits, front.sh),
        (back.means, back.quats, back.log_scales, back.opacity_logits, back.sh))))
    centre = render(both, _camera(), backend="torch").image[0, 24, 32]
    # alpha 0.99 from the front, then 0.99 of the remaining 1% from the back one.
    np.testing.assert_allclose(centre.numpy(), [0.99, 0.0099, 0.0], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_matches_bruteforce_float64_renderer(seed, sh_degree):
    splats = Splats.random(60, sh_degree=sh_degree, seed=seed, dtype=torch.float64)
    cam = _camera(width=72, height=56, cx=30.0, cy=31.0, eye=(0.3, -0.4, -3.0))
    bg = (0.2, 0.5, 0.7)
    out = render(splats, cam, backend="torch", background=bg)
    ref_image, ref_alpha = render_bruteforce(splats, cam, bg)
    np.testing.assert_allclose(out.image[0].numpy(), ref_image, atol=1e-6)
    np.testing.assert_allclose(out.alpha[0, ..., 0].numpy(), ref_alpha, atol=1e-6)
    assert out.stats.visible[0] > 30


def test_matches_bruteforce_with_large_gaussians_outside_the_view():
    """Centres outside the 1.3x frustum, footprints reaching in: exercises the clamped Jacobian and near culling."""
    splats = Splats.random(80, sh_degree=1, seed=11, extent=4.0, dtype=torch.float64)
    splats = Splats(splats.means, splats.quats, splats.log_scales + 2.0, splats.opacity_logits, splats.sh)
    cam = _camera(width=40, height=32, fov=40.0, cx=15.0, cy=18.0, eye=(0.0, 0.0, -2.5))
    p_cam = splats.means @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
    outside = (p_cam[:, 2] > 0) & ((p_cam[:, 0] / p_cam[:, 2]).abs() > 1.3 * 20 / cam.fx)
    assert outside.sum() > 10 and (p_cam[:, 2] < 0).sum() > 5
    out = render(splats, cam, backend="torch")
    ref_image, ref_alpha = render_bruteforce(splats, cam)
    np.testing.assert_allclose(out.image[0].numpy(), ref_image, atol=1e-6)
    np.testing.assert_allclose(out.alpha[0, ..., 0].numpy(), ref_alpha, atol=1e-6)


def test_float32_matches_bruteforce_closely_on_a_dense_scene():
    """Many overlapping Gaussians: exercises the 1e-4 transmittance stop and several blend rounds."""
    splats = Splats.random(400, sh_degree=1, seed=5, extent=0.6)
    splats = Splats(splats.means, splats.quats, splats.log_scales + 1.0, splats.opacity_logits + 2.0, splats.sh)
    cam = _camera(width=48, height=40, dtype=torch.float32)
    out = render(splats, cam, backend="torch")
    ref_image, _ = render_bruteforce(splats.to(dtype=torch.float64), cam)
    assert _psnr(out.image[0].double().numpy(), ref_image) > 60


def test_gradcheck_float64():
    torch.manual_seed(0)
    base = Splats.random(6, sh_degree=2, seed=3, extent=0.5, dtype=torch.float64)
    cam = _camera(width=20, height=16, fov=50.0, cx=9.0, cy=8.5)
    fields = [t.clone().requires_grad_(True) for t in
              (base.means, base.quats, base.log_scales + 1.5, base.opacity_logits.clamp(-1, 1), base.sh)]

    def image(*params):
        out = render(Splats(*params), cam, backend="torch", render_mode="rgb+depth", background=(0.3, 0.3, 0.3))
        return out.image, out.alpha, out.depth

    assert torch.autograd.gradcheck(image, fields, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_gradients_reach_every_parameter():
    splats = Splats.random(50, sh_degree=3, seed=4)
    params = [t.clone().requires_grad_(True) for t in
              (splats.means, splats.quats, splats.log_scales, splats.opacity_logits, splats.sh)]
    out = render(Splats(*params), _camera(dtype=torch.float32), backend="torch")
    out.image.sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_stereo_batch_equals_two_single_renders():
    splats = Splats.random(80, sh_degree=3, seed=7)
    head = _camera(dtype=torch.float32)
    k_left = intrinsics_from_fov(64, 48, 60.0, 34.0, 24.0)
    k_right = intrinsics_from_fov(64, 48, 60.0, 30.0, 24.0)
    rig = StereoRig(head, ipd=0.2, K_left=k_left, K_right=k_right)
    both = render(splats, rig, backend="torch").image
    left = render(splats, rig.eye("left"), backend="torch").image
    right = render(splats, rig.eye("right"), backend="torch").image
    torch.testing.assert_close(both, torch.cat([left, right]))
    assert not torch.allclose(left, right)


def test_empty_view_gives_background():
    splats = Splats.random(30, seed=1)
    cam = Camera(look_at((0, 0, -5), (0, 0, -10), (0, -1, 0)), intrinsics_from_fov(32, 24, 60), 32, 24)
    out = render(splats, cam, backend="torch", background=(0.1, 0.2, 0.3), render_mode="rgb+depth")
    assert out.stats.visible == [0] and out.stats.tile_keys == 0
    torch.testing.assert_close(out.image, torch.tensor([0.1, 0.2, 0.3]).expand(1, 24, 32, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all()


def test_empty_scene_renders():
    empty = Splats.random(0)
    out = render(empty, _camera(dtype=torch.float32), backend="torch")
    assert out.image.shape == (1, 48, 64, 3) and (out.image == 0).all()


def test_render_modes_and_sh_degree():
    splats = Splats.random(40, sh_degree=3, seed=2)
    cam = _camera(dtype=torch.float32)
    full = render(splats, cam, backend="torch", render_mode="rgb+depth")
    depth_only = render(splats, cam, backend="torch", render_mode="depth")
    alpha_only = render(splats, cam, backend="torch", render_mode="alpha")
    assert depth_only.image is None and alpha_only.image is None and alpha_only.depth is None
    torch.testing.assert_close(depth_only.depth, full.depth)
    torch.testing.assert_close(alpha_only.alpha, full.alpha)
    dc = render(splats, cam, backend="torch", sh_degree=0).image
    assert torch.allclose(dc, render(splats.with_sh_degree(0), cam, backend="torch").image)
    assert not torch.allclose(dc, full.image)


def test_timing_stats():
    out = render(Splats.random(30), _camera(dtype=torch.float32), backend="torch", timing=True)
    assert out.stats.times.total_ms is not None and out.stats.times.total_ms > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "nope"}, "backend: unknown backend 'nope'"),
        ({"render_mode": "normals"}, "render_mode: expected one of"),
        ({"sh_degree": 2}, r"sh_degree: expected 0..1"),
        ({"background": (1.0, 0.0)}, r"background: expected shape \[3\] or \[1, 3\], got \[2\]"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render(Splats.random(5, sh_degree=1), _camera(dtype=torch.float32), **kwargs)


def test_projected_means2d_gradient_for_densification():
    splats = Splats.random(40, seed=6)
    params = [t.clone().requires_grad_(True) for t in
              (splats.means, splats.quats, splats.log_scales, splats.opacity_logits, splats.sh)]
    out = render(Splats(*params), _camera(dtype=torch.float32), backend="torch")
    out.projected.means2d.retain_grad()
    out.image.sum().backward()
    grad2d = out.projected.means2d.grad
    assert grad2d.shape == (1, 40, 2)
    visible = out.projected.visible[0]
    assert (grad2d[0, visible].abs().sum(-1) > 0).any() and (grad2d[0, ~visible] == 0).all()
