"""The ``native`` CUDA backend against the ``torch`` reference: forward images and gradients.

Two layers:
- CPU (no GPU needed): the kernels' per-element math, run serially by the host emulation in ``cuda/host_emu``,
  against the PyTorch reference, forward and backward; plus lazy loading and availability errors.
- GPU (``@pytest.mark.gpu``, skipped without CUDA): the real kernels against the reference on random scenes and
  on real fixtures, in every render mode, with off-centre principal points, Gaussians behind the camera, huge and
  tiny Gaussians, empty views and a stereo batch; gradients for every scene parameter and the 2D means.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from renderer import (
    BackendUnavailableError,
    Camera,
    Splats,
    StereoRig,
    default_registry,
    intrinsics_from_fov,
    look_at,
    render,
    stack_cameras,
)
from renderer.backends.torch_backend import TorchBackend
from renderer.types import RenderOptions

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "assets" / "fixtures"
MODES = ("rgb", "depth", "rgb+depth", "alpha")
GRAD_NAMES = ("means", "quats", "log_scales", "opacity_logits", "sh", "means2d")


# ----- scenes -------------------------------------------------------------------------------------------------------
def _camera(eye, target=(0.0, 0.0, 0.0), width=64, height=48, fov=60.0, cx=None, cy=None) -> Camera:
    k = intrinsics_from_fov(width, height, fov, cx, cy)
    return Camera(look_at(eye, target, (0, -1, 0)), k, width, height)


def _load_fixture(name: str) -> Splats:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} not present in assets/fixtures")
    try:
        from data.scene_io import load_scene
    except ImportError:  # data/ not there yet: read the INRIA layout ourselves
        return _read_inria_ply(path)
    return load_scene(path)


def _read_inria_ply(path: Path) -> Splats:
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"]
    names = v.data.dtype.names

    def cols(prefix: str, count: int) -> np.ndarray:
        return np.stack([np.asarray(v[f"{prefix}{i}"], dtype=np.float32) for i in range(count)], axis=1)

    num_rest = sum(1 for n in names if n.startswith("f_rest_"))
    dc = cols("f_dc_", 3)[:, None, :]
    rest = cols("f_rest_", num_rest).reshape(-1, 3, num_rest // 3).transpose(0, 2, 1) if num_rest else None
    sh = dc if rest is None else np.concatenate([dc, rest], axis=1)
    means = np.stack([np.asarray(v[a], dtype=np.float32) for a in "xyz"], axis=1)
    opacity = np.asarray(v["opacity"], dtype=np.float32)
    return Splats(torch.from_numpy(means), torch.from_numpy(cols("rot_", 4)), torch.from_numpy(cols("scale_", 3)),
                  torch.from_numpy(opacity), torch.from_numpy(np.ascontiguousarray(sh)))


def _fixture_cameras(splats: Splats, width=80, height=64) -> list[Camera]:
    lo, hi = splats.bounds()
    centre = ((lo + hi) / 2).double()
    extent = float((hi - lo).max())
    eye_a = centre + torch.tensor([0.3, -0.2, -1.2], dtype=torch.float64) * extent
    eye_b = centre + torch.tensor([-0.9, 0.1, 0.6], dtype=torch.float64) * extent
    k = intrinsics_from_fov(width, height, 55.0, width * 0.45, height * 0.55)
    return [Camera(look_at(eye, centre, (0, -1, 0)), k, width, height) for eye in (eye_a, eye_b)]


def _scene(case: str) -> tuple[Splats, list[Camera], tuple[float, float, float]]:
    """A named test scene: (float32 CPU splats, cameras of one size, background)."""
    bg = (0.1, 0.3, 0.6)
    if case == "random_sh3":
        splats = Splats.random(300, sh_degree=3, seed=1)
        cams = [_camera((0.3, -0.2, 3.0), cx=29.3, cy=21.7), _camera((0.5, 0.2, -2.5), cx=40.0, cy=30.5)]
    elif case == "offcentre_sh1":
        splats = Splats.random(250, sh_degree=1, seed=2)
        cams = [_camera((-0.4, 0.1, 2.8), width=70, height=41, cx=10.2, cy=35.9)]
    elif case == "stereo":
        splats = Splats.random(300, sh_degree=2, seed=3)
        head = _camera((0.2, -0.3, 2.6), width=72, height=56)
        k_l = intrinsics_from_fov(72, 56, 60.0, 40.1, 28.0)
        k_r = intrinsics_from_fov(72, 56, 60.0, 31.9, 28.0)
        cams = list(StereoRig(head, 0.064, k_l, k_r).eyes())
    elif case == "behind_camera":
        splats = Splats.random(300, sh_degree=0, seed=4, extent=1.5)
        cams = [_camera((0.1, 0.0, 0.2), target=(0.1, 0.0, 3.0))]
    elif case == "huge_and_tiny":
        base = Splats.random(220, sh_degree=1, seed=5)
        log_scales = base.log_scales.clone()
        log_scales[:8] = math.log(2.5)  # covers the whole image
        log_scales[8:60] = math.log(1e-5)  # far under a pixel: the low-pass sets the footprint
        log_scales[60:64] = torch.tensor([math.log(1.5), math.log(1e-3), math.log(1e-3)])  # long needles
        opacity_logits = base.opacity_logits.clone()
        opacity_logits[:8] = -2.0
        opacity_logits[60:70] = 6.0  # alpha clamped to 0.99
        splats = Splats(base.means, base.quats, log_scales, opacity_logits, base.sh)
        cams = [_camera((0.2, 0.3, 2.7), cx=20.0, cy=30.0)]
    elif case == "empty_view":
        splats = Splats.random(100, sh_degree=0, seed=6)
        cams = [_camera((0.0, 0.0, 4.0), target=(0.0, 0.0, 9.0))]
    elif case == "deep_tiles":
        # Thousands of faint, wide Gaussians on a 3 x 2 tile image (a few opaque ones stop some pixels early): tile
        # ranges of many batches, where the native backward pass splits each range into segments (blend.h).
        base = Splats.random(3000, sh_degree=1, seed=8)
        jitter = torch.randn(base.log_scales.shape, generator=torch.Generator().manual_seed(8))
        log_scales = math.log(0.8) + 0.3 * jitter  # anisotropic, so that the rotation has a gradient
        opacity_logits = torch.full_like(base.opacity_logits, -4.5)
        opacity_logits[:12] = 3.0
        splats = Splats(base.means, base.quats, log_scales, opacity_logits, base.sh)
        cams = [_camera((0.2, 0.1, 3.0), width=48, height=32)]
    elif case == "guitar_2k":
        splats = _load_fixture("guitar_2k.ply")
        cams = _fixture_cameras(splats)
    elif case == "guitar_1k_sh3":
        splats = _load_fixture("guitar_1k_sh3.ply")
        cams = _fixture_cameras(splats)[:1]
    else:
        raise ValueError(case)
    return splats, cams, bg


CASES = ("random_sh3", "offcentre_sh1", "stereo", "behind_camera", "huge_and_tiny", "empty_view", "deep_tiles",
         "guitar_2k", "guitar_1k_sh3")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    denom = float(b.norm())
    return float((a - b).norm()) / denom if denom > 0 else float((a - b).norm())


def _cotangents(c: int, h: int, w: int, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(c, h, w, 3, generator=g), "alpha": torch.randn(c, h, w, 1, generator=g),
            "depth": torch.randn(c, h, w, 1, generator=g)}


def _staged(backend, splats: Splats, cams, mode: str, bg: torch.Tensor, cot: dict | None):
    """Run the three stages; with ``cot``, also the gradients of <outputs, cot> for every parameter and means2d."""
    params = [t.detach().clone().requires_grad_(cot is not None) for t in splats._fields().values()]
    scene = Splats(*params)
    options = RenderOptions(render_mode=mode)
    proj = backend.preprocess(scene, cams, scene.sh_degree, options.wants_color)
    bins = backend.sort(proj, cams)
    image, alpha, depth = backend.blend(proj, bins, cams, options, bg)
    grads = None
    if cot is not None:
        loss = (alpha * cot["alpha"].to(alpha)).sum()
        if image is not None:
            loss = loss + (image * cot["image"].to(image)).sum()
        if depth is not None:
            loss = loss + (depth * cot["depth"].to(depth)).sum()
        inputs = [*params, proj.means2d]
        if loss.requires_grad:
            grads = dict(zip(GRAD_NAMES, torch.autograd.grad(loss, inputs, allow_unused=True)))
        else:  # nothing visible: the outputs do not depend on the scene
            grads = dict.fromkeys(GRAD_NAMES)
    return proj, bins, (image, alpha, depth), grads


def _check_outputs(out, ref, mode: str, min_psnr: float) -> None:
    image, alpha, depth = out
    ref_image, ref_alpha, ref_depth = ref
    assert (image is None) == (ref_image is None) and (depth is None) == (ref_depth is None)
    assert alpha.shape == ref_alpha.shape
    if image is not None:
        assert image.shape == ref_image.shape
        assert _psnr(image, ref_image) >= min_psnr
    assert _psnr(alpha, ref_alpha) >= min_psnr
    assert float((alpha.double().cpu() - ref_alpha.double().cpu()).abs().max()) < 2e-3
    if depth is not None:
        # Compare the accumulated depth (alpha * depth): a pixel whose only contribution sits on the 1/255 cut-off
        # may keep or skip it, which moves its normalised depth a lot but its accumulated depth by ~1/255 * z.
        acc, ref_acc = (alpha * depth).double().cpu(), (ref_alpha * ref_depth).double().cpu()
        scale = max(float(ref_acc.abs().max()), 1e-6)
        assert float((acc - ref_acc).abs().max()) <= 5e-3 * scale
        solid = ref_alpha.double().cpu() > 0.05
        if solid.any():
            d, rd = depth.double().cpu()[solid], ref_depth.double().cpu()[solid]
            assert float((d - rd).abs().max()) <= 1e-3 * float(rd.abs().max())


# ----- CPU: lazy loading ------------------------------------------------------------------------------------------
def test_native_is_registered_and_lazy():
    registry = default_registry()
    assert "native" in registry.names()
    backend = registry.get("native")  # constructing builds nothing
    assert backend.name == "native"
    with pytest.raises(BackendUnavailableError, match="CUDA device"):
        backend.check_available(torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_native_without_cuda_raises_a_clear_error():
    from renderer.native import load_native

    with pytest.raises(BackendUnavailableError, match="CUDA is not available"):
        load_native()
    assert default_registry().resolve("auto", torch.device("cpu")).name == "torch"


def test_native_rejects_float64_scenes():
    from renderer.native.functional import preprocess

    splats = Splats.random(4, dtype=torch.float64)
    cams = stack_cameras(_camera((0, 0, 3)), "cpu", torch.float64)
    with pytest.raises(ValueError, match="float32"):
        preprocess(splats, cams, 0, True)


# ----- CPU: host emulation of the kernels' math --------------------------------------------------------------------
@pytest.fixture(scope="module")
def host_emu(tmp_path_factory):
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler for the host emulation")
    sys.path.insert(0, str(ROOT / "cuda" / "host_emu"))
    try:
        from host_emu import HostEmu, build
    finally:
        sys.path.pop(0)
    return HostEmu(build(tmp_path_factory.mktemp("host_emu")))


def _emu_render(emu, splats: Splats, cams, mode: str, bg: torch.Tensor, cot: dict | None):
    options = RenderOptions(render_mode=mode)
    degree, w, h = splats.sh_degree, cams.width, cams.height
    cam_args = (cams.viewmats.float(), cams.Ks.float(), cams.positions().float())
    scene = [t.detach().float() for t in splats._fields().values()]
    proj = emu.preprocess(*scene, *cam_args, w, h, cams.near, cams.far, degree, options.wants_color)
    ids, offsets = emu.sort(proj, w, h)
    fwd = emu.blend(proj, ids, offsets, w, h, bg.float(), options.wants_color, options.wants_depth)
    out = (fwd["image"], fwd["alpha"], fwd["depth"])
    if cot is None:
        return proj, out, None
    gb = emu.blend_backward(proj, ids, offsets, w, h, bg.float(), fwd, cot["image"] if options.wants_color else None,
                            cot["alpha"], cot["depth"] if options.wants_depth else None)
    gp = emu.preprocess_backward(*scene, *cam_args, w, h, degree, gb["means2d"], gb["conics"], gb["depths"],
                                 gb["opacities"], gb["colors"])
    return proj, out, {**gp, "means2d": gb["means2d"]}


@pytest.mark.parametrize("case", CASES)
def test_host_emulation_forward_matches_torch(host_emu, case):
    splats, cam_list, bg = _scene(case)
    cams = stack_cameras(cam_list, "cpu", torch.float32)
    bg_t = torch.tensor(bg).expand(len(cams), 3)
    for mode in MODES:
        ref_proj, ref_bins, ref, _ = _staged(TorchBackend(), splats, cams, mode, bg_t, None)
        proj, out, _ = _emu_render(host_emu, splats, cams, mode, bg_t, None)
        assert (proj["radii"] != ref_proj.radii).float().mean() < 1e-3
        _check_outputs(out, ref, mode, min_psnr=60.0)


@pytest.mark.parametrize("case", CASES)
def test_host_emulation_gradients_match_torch(host_emu, case):
    splats, cam_list, bg = _scene(case)
    cams64 = stack_cameras(cam_list, "cpu", torch.float64)
    cams32 = stack_cameras(cam_list, "cpu", torch.float32)
    bg_t = torch.tensor(bg).expand(len(cam_list), 3)
    for mode in ("rgb+depth", "rgb", "alpha"):
        cot = _cotangents(len(cam_list), cams32.height, cams32.width)
        _, _, _, ref = _staged(TorchBackend(), splats.to(dtype=torch.float64), cams64, mode, bg_t.double(), cot)
        _, _, grads = _emu_render(host_emu, splats, cams32, mode, bg_t, cot)
        for name in GRAD_NAMES:
            r = ref[name] if ref[name] is not None else torch.zeros_like(grads[name], dtype=torch.float64)
            assert _rel_err(grads[name], r) <= 1e-3, (name, mode, _rel_err(grads[name], r))


def _cull_cases(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Footprints near 8 x 4 sub-tiles: round, needle-like (condition numbers up to 1e8), tiny and huge, faint and
    opaque, centres inside and around the rectangle, plus degenerate and non-finite ones."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    sigma_major = 10 ** (u(n) * 4 - 1)  # 0.1 .. 1000 px
    sigma_minor = sigma_major * 10 ** (-u(n) * 4)  # condition numbers up to 1e8
    theta = u(n) * math.pi
    c, s = torch.cos(theta), torch.sin(theta)
    var1, var2 = sigma_major**2 + 0.3, sigma_minor**2 + 0.3
    cov_a = c * c * var1 + s * s * var2
    cov_b = c * s * (var1 - var2)
    cov_c = s * s * var1 + c * c * var2
    det = cov_a * cov_c - cov_b * cov_b
    conic = torch.stack([cov_c / det, -cov_b / det, cov_a / det], 1)
    opacity = torch.where(u(n) < 0.1, u(n) * 0.01, u(n))
    rects = torch.stack([(u(n) * 200).long(), (u(n) * 200).long()], 1)
    # centres: inside, near, or up to a few sigmas away from the rectangle, along the major axis or not
    reach = (3.5 * sigma_major * u(n)) * torch.where(u(n) < 0.5, 1.0, 0.3)
    angle = torch.where(u(n) < 0.5, theta, u(n) * 2 * math.pi)
    centre = rects.double() + torch.tensor([4.0, 2.0]) + torch.stack([reach * torch.cos(angle),
                                                                      reach * torch.sin(angle)], 1)
    fp = torch.cat([conic, opacity[:, None], centre], 1).float()
    # sub-tile at (0, 0): NaN conic, a far footprint, NaN opacity, infinite centre, zero opacity, indefinite conic
    fp[:6] = torch.tensor([[float("nan"), 0, 1, 0.5, 4, 2], [1, 0, 1, 0.5, 40, 2], [1, 0, 1, float("nan"), 4, 2],
                           [1, 0, 1, 0.5, float("inf"), 2], [1, 0, 1, 0.0, 4, 2], [1, 2, 1, 0.5, 40, 2]])
    rects[:6] = 0
    return fp, rects


def test_subtile_culling_never_drops_a_kept_sample(host_emu):
    """The forward and backward kernels skip, per warp, the Gaussians whose footprint misses its 8 x 4 pixels. That
    test must be conservative at float rounding: a culled case has no pixel the per-pixel test keeps. It must also
    cull: most cases far outside the footprint, so that the kernels gain anything."""
    fp, rects = _cull_cases(200_000, seed=7)
    res = host_emu.subtile_cull(fp, rects)
    culled, kept = res[:, 0].bool(), res[:, 1]
    assert not (culled & (kept > 0)).any(), fp[culled & (kept > 0)][:5]
    assert culled[1] and culled[4], "a far footprint and a transparent one are culled"
    assert not (culled[0] or culled[5]), "NaN and indefinite conics are left to the per-pixel test"
    missing = kept == 0
    assert culled.sum() >= 0.8 * missing.sum(), (int(culled.sum()), int(missing.sum()))


# ----- GPU: the real kernels ---------------------------------------------------------------------------------------
def _native():
    backend = default_registry().get("native")
    backend.check_available(torch.device("cuda"))
    return backend


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_native_forward_matches_torch(case):
    native = _native()
    splats, cam_list, bg = _scene(case)
    cams = stack_cameras(cam_list, "cuda", torch.float32)
    cams64 = stack_cameras(cam_list, "cuda", torch.float64)
    bg_t = torch.tensor(bg, device="cuda").expand(len(cam_list), 3)
    for mode in MODES:
        proj, bins, out, _ = _staged(native, splats.to("cuda"), cams, mode, bg_t, None)
        ref_proj, _, ref, _ = _staged(TorchBackend(), splats.to("cuda", torch.float64), cams64, mode, bg_t.double(),
                                      None)
        assert (proj.radii != ref_proj.radii).float().mean() < 1e-3
        _check_outputs(out, ref, mode, min_psnr=50.0)
        assert out[1].isfinite().all()
        if case == "empty_view":
            assert bins.num_pairs == 0 and float(out[1].abs().max()) == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_native_sort_matches_torch(case):
    native = _native()
    splats, cam_list, _ = _scene(case)
    cams = stack_cameras(cam_list, "cuda", torch.float32)
    proj = native.preprocess(splats.to("cuda"), cams, splats.sh_degree, False)
    bins = native.sort(proj, cams)
    ref_bins = TorchBackend().sort(proj, cams)  # the reference binning of the same footprints
    assert torch.equal(bins.tile_offsets.long(), ref_bins.tile_offsets)
    offsets = bins.tile_offsets.long().tolist()
    ids, ref_ids = bins.gaussian_ids.long().cpu(), ref_bins.gaussian_ids.cpu()
    depths = proj.depths.cpu()
    tiles = bins.tiles_x * bins.tiles_y
    for r in range(len(offsets) - 1):
        lo, hi = offsets[r], offsets[r + 1]
        assert sorted(ids[lo:hi].tolist()) == sorted(ref_ids[lo:hi].tolist())
        d = depths[r // tiles, ids[lo:hi]]
        assert bool((d[1:] >= d[:-1]).all())


@pytest.mark.gpu
def test_native_sort_follows_order_keys():
    """With ``Projected.order_keys`` set (the frame cache's shared order), tiles are ordered by those keys."""
    import dataclasses

    native = _native()
    splats, cam_list, _ = _scene("stereo")
    cams = stack_cameras(cam_list, "cuda", torch.float32)
    proj = native.preprocess(splats.to("cuda"), cams, splats.sh_degree, False)
    keys = torch.rand(proj.depths.shape, generator=torch.Generator().manual_seed(3)).cuda()
    proj = dataclasses.replace(proj, order_keys=keys)
    bins, ref_bins = native.sort(proj, cams), TorchBackend().sort(proj, cams)
    assert torch.equal(bins.tile_offsets.long(), ref_bins.tile_offsets)
    assert torch.equal(bins.gaussian_ids.long(), ref_bins.gaussian_ids)


@pytest.mark.gpu
def test_native_presorted_sort_groups_by_tile_in_index_order():
    """``Projected.presorted`` (the frame cache's front-to-back visible set): no depth sort, tiles keep the index
    order; on Gaussians ordered by depth that is the ordinary sort's result, and the torch reference's."""
    import dataclasses

    from renderer.native.functional import sort_with_counts

    native = _native()
    splats, cam_list, _ = _scene("stereo")
    cams = stack_cameras(cam_list, "cuda", torch.float32)
    scene = splats.to("cuda")
    depths = native.preprocess(scene, stack_cameras(cam_list[:1], "cuda", torch.float32), 0, False).depths[0]
    order = torch.sort(depths, stable=True).indices
    ordered = scene.subset(order)
    proj = native.preprocess(ordered, cams, ordered.sh_degree, True)
    in_place = native.preprocess(scene, cams, scene.sh_degree, True, items=order.int())  # read, not gathered
    for field in ("means2d", "conics", "depths", "opacities", "colors", "radii"):
        assert torch.equal(getattr(in_place, field), getattr(proj, field)), field
    presorted = dataclasses.replace(proj, presorted=True)
    bins, ref_bins = native.sort(presorted, cams), TorchBackend().sort(presorted, cams)
    assert torch.equal(bins.tile_offsets.long(), ref_bins.tile_offsets)
    assert torch.equal(bins.gaussian_ids.long(), ref_bins.gaussian_ids)
    for r in range(bins.tile_offsets.numel() - 1):  # index order within every tile
        ids = bins.gaussian_ids[bins.tile_offsets[r]:bins.tile_offsets[r + 1]]
        assert bool((ids[1:] > ids[:-1]).all())
    _, visible = sort_with_counts(presorted, cams)
    assert visible.tolist() == proj.visible.sum(dim=1).tolist()
    # the same image as the ordinary (depth-sorting) path
    background = torch.zeros(len(cam_list), 3, device="cuda")
    image = native.blend(presorted, bins, cams, RenderOptions(background=background), background)[0]
    ref = native.blend(proj, native.sort(proj, cams), cams, RenderOptions(background=background), background)[0]
    torch.testing.assert_close(image, ref, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_native_gradients_match_torch(case):
    native = _native()
    splats, cam_list, bg = _scene(case)
    cams = stack_cameras(cam_list, "cuda", torch.float32)
    cams64 = stack_cameras(cam_list, "cuda", torch.float64)
    bg_t = torch.tensor(bg, device="cuda").expand(len(cam_list), 3)
    for mode in ("rgb+depth", "rgb", "depth", "alpha"):
        cot = {k: v.cuda() for k, v in _cotangents(len(cam_list), cams.height, cams.width).items()}
        _, _, _, grads = _staged(native, splats.to("cuda"), cams, mode, bg_t, cot)
        _, _, _, ref = _staged(TorchBackend(), splats.to("cuda", torch.float64), cams64, mode, bg_t.double(), cot)
        for name in GRAD_NAMES:
            r = ref[name] if ref[name] is not None else torch.zeros_like(grads[name])
            g = grads[name] if grads[name] is not None else torch.zeros_like(r)
            assert _rel_err(g, r) <= 1e-3, (name, mode, _rel_err(g, r))


@pytest.mark.gpu
def test_native_background_gradient_and_retained_means2d_grad():
    native = _native()
    splats, cam_list, _ = _scene("stereo")
    cams = stack_cameras(cam_list, "cuda", torch.float32)
    bg = torch.tensor([[0.2, 0.4, 0.6], [0.7, 0.1, 0.3]], device="cuda", requires_grad=True)
    scene = Splats(*(t.cuda().requires_grad_(True) for t in splats._fields().values()))
    options = RenderOptions(render_mode="rgb")
    proj = native.preprocess(scene, cams, scene.sh_degree, True)
    image, alpha, _ = native.blend(proj, native.sort(proj, cams), cams, options, bg)
    image.square().sum().backward()
    assert proj.means2d.grad is not None and proj.means2d.grad.shape == proj.means2d.shape
    assert float(proj.means2d.grad.abs().sum()) > 0
    expected = (2 * image.detach() * (1 - alpha.detach())).sum(dim=(1, 2))
    torch.testing.assert_close(bg.grad, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
def test_native_inference_mode_and_render_api():
    splats, cam_list, bg = _scene("stereo")
    scene = splats.to("cuda")
    rig = StereoRig(cam_list[0], 0.0)
    with torch.inference_mode():
        out = render(scene, rig, backend="native", background=bg, render_mode="rgb+depth", timing=True)
    assert out.image.shape == (2, 56, 72, 3) and out.depth.shape == (2, 56, 72, 1)
    assert not out.image.requires_grad and out.image.grad_fn is None
    assert out.stats.tile_keys > 0 and all(v > 0 for v in out.stats.visible)
    assert out.stats.times.total_ms is not None
    ref = render(scene, rig, backend="torch", background=bg, render_mode="rgb+depth")
    assert _psnr(out.image, ref.image) >= 50.0
    # A scene whose parameters need no gradient takes the inference path too (nothing saved for backward).
    out2 = render(scene, rig, backend="native", background=bg)
    assert out2.image.grad_fn is None
    assert default_registry().resolve("auto", torch.device("cuda")).name == "native"
