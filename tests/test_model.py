"""Splats validation and views, cameras, stereo rigs, benchmark paths, and the SH basis."""

from __future__ import annotations

import math

import pytest
import torch

from renderer import Camera, PathSpec, Splats, StereoRig, head_path, intrinsics_from_fov, look_at, orbit_path
from renderer._torch_impl import _eval_sh
from renderer.cameras import opencv_from_opengl_c2w, rigid_inverse


# ----- Splats ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("means", torch.zeros(4, 2), r"means: expected shape \[\*, 3\], got \[4, 2\]"),
        ("quats", torch.zeros(4, 3), r"quats: expected shape \[4, 4\], got \[4, 3\]"),
        ("log_scales", torch.zeros(5, 3), r"log_scales: expected shape \[4, 3\], got \[5, 3\]"),
        ("opacity_logits", torch.zeros(4, 1), r"opacity_logits: expected shape \[4\], got \[4, 1\]"),
        ("sh", torch.zeros(4, 5, 3), "sh: expected 1, 4, 9 or 16 coefficients per channel .* got 5"),
        ("sh", torch.zeros(4, 1, 4), r"sh: expected shape \[4, \*, 3\], got \[4, 1, 4\]"),
        ("means", torch.zeros(4, 3, dtype=torch.int64), "means: expected a floating-point tensor"),
    ],
)
def test_splats_validation_names_field_and_shapes(field, value, message):
    fields = dict(means=torch.zeros(4, 3), quats=torch.zeros(4, 4), log_scales=torch.zeros(4, 3),
                  opacity_logits=torch.zeros(4), sh=torch.zeros(4, 1, 3))
    fields[field] = value
    with pytest.raises(ValueError, match=message):
        Splats(**fields)


def test_splats_mixed_dtypes_rejected():
    s = Splats.random(3)
    with pytest.raises(ValueError, match="one dtype"):
        Splats(s.means.double(), s.quats, s.log_scales, s.opacity_logits, s.sh)


def test_activated_views_and_subset():
    s = Splats.random(10, sh_degree=2, seed=3)
    assert s.sh_degree == 2 and len(s) == 10 and s.nbytes() == 10 * (3 + 4 + 3 + 1 + 27) * 4
    torch.testing.assert_close(s.scales(), s.log_scales.exp())
    torch.testing.assert_close(s.opacities(), torch.sigmoid(s.opacity_logits))
    rot = s.rotations()
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3).expand(10, 3, 3), atol=1e-5, rtol=0)
    cov = s.covariances()
    torch.testing.assert_close(torch.linalg.eigvalsh(cov).sort(-1).values,
                               (s.scales() ** 2).sort(-1).values, atol=1e-6, rtol=1e-4)
    sub = s.subset(torch.tensor([1, 3]))
    assert len(sub) == 2 and torch.equal(sub.means, s.means[[1, 3]])
    mask = torch.zeros(10, dtype=torch.bool)
    mask[5] = True
    assert torch.equal(s.subset(mask).sh, s.sh[5:6])
    with pytest.raises(ValueError, match=r"boolean mask must have shape \[10\]"):
        s.subset(torch.ones(3, dtype=torch.bool))
    back = Splats.from_activated(s.means, s.quats, s.scales(), s.opacities(), s.sh)
    torch.testing.assert_close(back.opacity_logits, s.opacity_logits, atol=1e-4, rtol=1e-4)
    assert s.to("cpu", torch.float64).dtype == torch.float64


def test_with_sh_degree_pads_and_truncates():
    s = Splats.random(5, sh_degree=1)
    up = s.with_sh_degree(3)
    assert up.sh.shape == (5, 16, 3) and torch.equal(up.sh[:, :4], s.sh) and (up.sh[:, 4:] == 0).all()
    assert torch.equal(up.with_sh_degree(1).sh, s.sh)


def test_nonfinite_rows():
    s = Splats.random(6)
    means = s.means.clone()
    means[2, 1] = float("nan")
    sh = s.sh.clone()
    sh[4, 0, 0] = float("inf")
    bad = Splats(means, s.quats, s.log_scales, s.opacity_logits, sh).nonfinite_rows()
    assert bad.tolist() == [False, False, True, False, True, False]


# ----- cameras ----------------------------------------------------------------------------------------------------
def _project(cam: Camera, point) -> tuple[float, float, float]:
    p = cam.world_to_camera[:3, :3] @ torch.as_tensor(point, dtype=torch.float64) + cam.world_to_camera[:3, 3]
    return float(cam.fx * p[0] / p[2] + cam.cx), float(cam.fy * p[1] / p[2] + cam.cy), float(p[2])


def test_look_at_orientation():
    k = intrinsics_from_fov(100, 80, 90)
    cam = Camera.look_at((0, 0, -5), (0, 0, 0), (0, -1, 0), k, 100, 80)
    u, v, z = _project(cam, (0, 0, 0))
    assert (u, v) == pytest.approx((50, 40)) and z == pytest.approx(5)
    assert _project(cam, (0, -1, 0))[1] < 40  # world up (-y) appears in the upper half
    assert _project(cam, (1, 0, 0))[0] > 50  # and +x to the right for this camera
    torch.testing.assert_close(cam.position, torch.tensor([0.0, 0.0, -5.0], dtype=torch.float64))


def test_opengl_conversion_round_trip():
    k = intrinsics_from_fov(64, 64, 60)
    cam = Camera.look_at((1, 2, 3), (0, 0.5, 0), (0, 1, 0), k, 64, 64)
    gl = cam.to_opengl_c2w()
    # OpenGL cameras look down -z: the target is in front, i.e. at negative z in GL camera space.
    target_gl = rigid_inverse(gl) @ torch.tensor([0.0, 0.5, 0.0, 1.0], dtype=torch.float64)
    assert target_gl[2] < 0
    again = Camera.from_opengl_c2w(gl, k, 64, 64)
    torch.testing.assert_close(again.world_to_camera, cam.world_to_camera)
    torch.testing.assert_close(opencv_from_opengl_c2w(gl), cam.camera_to_world)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"world_to_camera": torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0]))},
         "world_to_camera: upper 3x3 is not a rotation"),
        ({"world_to_camera": torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))}, "not a rotation .*det = -1"),
        ({"world_to_camera": torch.eye(3)}, r"world_to_camera: expected shape \[4, 4\], got \[3, 3\]"),
        ({"world_to_camera": torch.full((4, 4), float("nan"))}, "world_to_camera: contains NaN"),
        ({"width": 0}, r"width: expected an integer in 1..16384, got 0"),
        ({"height": 100000}, "height: expected an integer in 1..16384, got 100000"),
        ({"K": torch.zeros(3, 3)}, "K: focal lengths must be positive"),
        ({"near": 0.0}, "near/far: expected 0 < near < far"),
    ],
)
def test_camera_validation(kwargs, message):
    args = dict(world_to_camera=torch.eye(4), K=intrinsics_from_fov(32, 32, 60), width=32, height=32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Camera(**args)


def test_stereo_rig_eyes():
    k = intrinsics_from_fov(64, 48, 90)
    head = Camera.look_at((0, 0, -4), (0, 0, 0), (0, -1, 0), k, 64, 48)
    rig = StereoRig(head, ipd=0.064)
    left, right = rig.eyes()
    right_axis = head.world_to_camera[0, :3]
    torch.testing.assert_close(right.position - left.position, 0.064 * right_axis)
    torch.testing.assert_close((left.position + right.position) / 2, head.position)
    # Parallel axes: same rotation. A point straight ahead appears right of centre in the left eye.
    torch.testing.assert_close(left.world_to_camera[:3, :3], right.world_to_camera[:3, :3])
    assert _project(left, (0, 0, 0))[0] > 32 > _project(right, (0, 0, 0))[0]
    with pytest.raises(ValueError, match="ipd: expected a finite value >= 0"):
        StereoRig(head, ipd=-1.0)


def test_intrinsics_from_fov_rejects_degenerate_angles():
    for fov in (0.0, 180.0, 5e-324, float("nan")):
        with pytest.raises(ValueError, match="fov_x_deg"):
            intrinsics_from_fov(64, 48, fov)


def test_look_at_rejects_degenerate():
    with pytest.raises(ValueError, match="eye and target coincide"):
        look_at((1, 1, 1), (1, 1, 1), (0, -1, 0))
    with pytest.raises(ValueError, match="parallel to the viewing direction"):
        look_at((0, 0, 0), (0, 5, 0), (0, -1, 0))


# ----- benchmark paths ------------------------------------------------------------------------------------------
def test_orbit_path():
    spec = PathSpec(center=(1.0, 0.0, 2.0), extent=2.0, grid=4, width=64, height=64)
    rigs = list(orbit_path(spec))
    assert len(rigs) == 48 and rigs[0].ipd == pytest.approx(0.128)
    radius = (1.2 + 0.6 * 4) * 2.0
    centre = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    for rig in rigs:
        offset = rig.head.position - centre
        assert float(offset[1]) == pytest.approx(-0.3 * radius)  # raised: up is -y
        assert float(offset.norm()) == pytest.approx(radius * math.hypot(1, 0.3))
        assert _project(rig.head, centre)[:2] == pytest.approx((32, 32))
    step = rigs[1].head.position - centre, rigs[0].head.position - centre
    flat = [torch.tensor([v[0], v[2]]) for v in step]
    angle = math.degrees(math.acos(float(flat[0] @ flat[1] / (flat[0].norm() * flat[1].norm()))))
    assert angle == pytest.approx(7.5)


def test_head_path_moves_like_a_head():
    spec = PathSpec(center=(0.0, 0.0, 0.0), extent=1.0, width=64, height=64, principal_offset=(10.0, 0.0))
    rigs = list(head_path(spec))
    assert len(rigs) == 240
    steps = [float((b.head.position - a.head.position).norm()) for a, b in zip(rigs, rigs[1:])]
    assert steps == pytest.approx([1 / 120] * 239)
    angles = []
    for a, b in zip(rigs, rigs[1:]):
        rel = a.head.world_to_camera[:3, :3] @ b.head.world_to_camera[:3, :3].T
        angles.append(math.degrees(math.acos(min(1.0, (float(torch.trace(rel)) - 1) / 2))))
    assert 0.2 < sum(angles) / len(angles) < 1.0 and max(angles) < 1.5
    # Starts outside the scene, looking at the centre; off-centre principal points mirror between eyes.
    assert float(rigs[0].head.position.norm()) > 1.5
    assert _project(rigs[0].head, (0, 0, 0))[:2] == pytest.approx((32, 32))
    left, right = rigs[0].eyes()
    assert left.cx == pytest.approx(42) and right.cx == pytest.approx(22)


# ----- SH ----------------------------------------------------------------------------------------------------------
def test_sh_basis_is_orthonormal_on_the_sphere():
    """Each of the 16 real SH basis functions, read back through _eval_sh, integrates to the identity."""
    m = 20000
    i = torch.arange(m, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / m
    phi = math.pi * (1 + 5**0.5) * i
    dirs = torch.stack([torch.sqrt(1 - z * z) * torch.cos(phi), torch.sqrt(1 - z * z) * torch.sin(phi), z], -1)
    basis = []
    for k in range(16):
        sh = torch.zeros(m, 16, 3, dtype=torch.float64)
        sh[:, 0, 0] = 100.0  # keep clear of the clamp at 0
        sh[:, k, 0] += 1.0
        basis.append(_eval_sh(3, dirs, sh)[:, 0] - 0.5 - 0.28209479177387814 * 100.0)
    y = torch.stack(basis, -1)  # [m, 16]
    gram = y.T @ y * (4 * math.pi / m)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)
    # Band 1 follows 3DGS's sign convention: Y_1 = -C1 y, Y_2 = C1 z, Y_3 = -C1 x.
    torch.testing.assert_close(y[:, 1:4], 0.4886025119029199 * torch.stack([-dirs[:, 1], dirs[:, 2], -dirs[:, 0]], -1))
