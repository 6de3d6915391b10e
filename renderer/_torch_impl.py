"""PyTorch implementation of the three render stages: the reference every faster backend is tested against.

It computes the standard 3DGS image: EWA projection with the 0.3 low-pass, SH up to degree 3, front-to-back
alpha blending with alpha clamped to 0.99, contributions under 1/255 skipped, and each pixel stopping before its
transmittance would fall under 1e-4. Everything is differentiable through autograd and runs on CPU or CUDA.

Speed on CPU comes from doing per-pixel work tile by tile, vectorised over all tiles at once in rounds of
``round_size`` Gaussians (no per-pixel Python loops), and from binning each Gaussian only to the tiles its
alpha >= 1/255 ellipse touches. That ellipse is exactly where a Gaussian can contribute, so the binning changes
no pixel: the image equals a brute-force evaluation of every Gaussian at every pixel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cameras import CameraBatch
from .splats import Splats
from .stages import Projected, TileBins
from .types import ALPHA_MAX, ALPHA_MIN, LOWPASS_2D, TRANSMITTANCE_MIN

_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
          1.445305721320277, -0.5900435899266435)
# Margin on the alpha >= 1/255 cut-off used for culling and binning, so float rounding never drops a pixel the
# blend would keep.
_CUTOFF_MARGIN = 1e-3


def _eval_sh(degree: int, dirs: Tensor, sh: Tensor) -> Tensor:
    """PyTorch implementation of SH colour evaluation.

    Args:
        degree: SH degree to evaluate (0..3); ``sh`` must hold at least ``(degree + 1) ** 2`` coefficients.
        dirs: unit view directions (mean - camera position) ``[..., 3]``.
        sh: coefficients ``[..., K, 3]``.

    Returns:
        RGB ``[..., 3]``: ``0.5 + sum_k Y_k(dir) sh_k``, clamped at 0.
    """
    out = _SH_C0 * sh[..., 0, :]
    if degree >= 1:
        x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
        out = out - _SH_C1 * y * sh[..., 1, :] + _SH_C1 * z * sh[..., 2, :] - _SH_C1 * x * sh[..., 3, :]
        if degree >= 2:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out = (out + _SH_C2[0] * xy * sh[..., 4, :] + _SH_C2[1] * yz * sh[..., 5, :]
                   + _SH_C2[2] * (2 * zz - xx - yy) * sh[..., 6, :] + _SH_C2[3] * xz * sh[..., 7, :]
                   + _SH_C2[4] * (xx - yy) * sh[..., 8, :])
            if degree >= 3:
                out = (out + _SH_C3[0] * y * (3 * xx - yy) * sh[..., 9, :] + _SH_C3[1] * xy * z * sh[..., 10, :]
                       + _SH_C3[2] * y * (4 * zz - xx - yy) * sh[..., 11, :]
                       + _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12, :]
                       + _SH_C3[4] * x * (4 * zz - xx - yy) * sh[..., 13, :]
                       + _SH_C3[5] * z * (xx - yy) * sh[..., 14, :] + _SH_C3[6] * x * (xx - 3 * yy) * sh[..., 15, :])
    return (out + 0.5).clamp_min(0.0)


def _alpha_cutoff(opacities: Tensor) -> Tensor:
    """Largest Mahalanobis power ``q`` with ``opacity * exp(-q / 2) >= 1/255`` ``[...]`` (negative: never)."""
    return 2.0 * torch.log(opacities.clamp_min(1e-30) / ALPHA_MIN) + _CUTOFF_MARGIN


def _project(splats: Splats, cams: CameraBatch, covariances: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """EWA projection of every Gaussian into every camera (``covariances [N, 3, 3]`` when already computed).

    Returns:
        means2d ``[C, N, 2]``, cov2d (with the low-pass) ``[C, N, 2, 2]``, camera-space points ``[C, N, 3]``.
    """
    rot, trans = cams.viewmats[:, :3, :3], cams.viewmats[:, :3, 3]  # [C, 3, 3], [C, 3]
    p_cam = torch.einsum("cij,nj->cni", rot, splats.means) + trans[:, None, :]  # [C, N, 3]
    x, y, z = p_cam.unbind(-1)
    fx, fy = cams.Ks[:, 0, 0, None], cams.Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = cams.Ks[:, 0, 2, None], cams.Ks[:, 1, 2, None]
    z_safe = torch.where(z.abs() > 1e-6, z, torch.full_like(z, 1e-6))
    # Clamp the point used for the Jacobian to 1.3x the frustum, as 3DGS does, so that Gaussians far outside the
    # view do not get enormous footprints (with a real, possibly off-centre, principal point).
    lim_x_pos = (cams.width - cx) / fx + 0.3 * cams.width / (2 * fx)
    lim_x_neg = cx / fx + 0.3 * cams.width / (2 * fx)
    lim_y_pos = (cams.height - cy) / fy + 0.3 * cams.height / (2 * fy)
    lim_y_neg = cy / fy + 0.3 * cams.height / (2 * fy)
    tx = z_safe * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z_safe))
    ty = z_safe * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z_safe))
    zeros = torch.zeros_like(z)
    jac = torch.stack([fx / z_safe, zeros, -fx * tx / z_safe**2,
                       zeros, fy / z_safe, -fy * ty / z_safe**2], dim=-1).reshape(*z.shape, 2, 3)  # fmt: skip
    cov3d = splats.covariances() if covariances is None else covariances  # [N, 3, 3]
    cov_cam = rot[:, None] @ cov3d[None] @ rot[:, None].transpose(-1, -2)  # [C, N, 3, 3]
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)
    cov2d = cov2d + LOWPASS_2D * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)
    return means2d, cov2d, p_cam


def _preprocess(splats: Splats, cams: CameraBatch, sh_degree: int, with_colors: bool,
                covariances: Tensor | None = None) -> Projected:
    """PyTorch implementation of the preprocess stage: culling, EWA projection, colour from SH, extents.

    ``covariances [N, 3, 3]``: the world-space 3D covariances when the caller has them (the frame cache).

    A Gaussian is culled in a camera (``radii == 0``) when its depth is outside (near, far), its 2D covariance is
    degenerate, its opacity is under 1/255, or its alpha >= 1/255 ellipse lies outside the image.
    """
    c, n = len(cams), len(splats)
    means2d, cov2d, p_cam = _project(splats, cams, covariances)
    depths = p_cam[..., 2]
    a, b, d = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * d - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([d / det_safe, -b / det_safe, a / det_safe], dim=-1)
    opacities = splats.opacities()[None].expand(c, n)
    with torch.no_grad():
        q_cut = _alpha_cutoff(opacities)
        rx = torch.ceil(torch.sqrt(q_cut.clamp_min(0) * a.clamp_min(0)))
        ry = torch.ceil(torch.sqrt(q_cut.clamp_min(0) * d.clamp_min(0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        on_screen = (mx + rx > 0) & (mx - rx < cams.width) & (my + ry > 0) & (my - ry < cams.height)
        keep = (depths > cams.near) & (depths < cams.far) & (det > 0) & (q_cut > 0) & on_screen
        keep &= torch.isfinite(means2d).all(-1) & (rx > 0) & (ry > 0)
        radii = torch.stack([rx, ry], dim=-1).where(keep[..., None], torch.zeros_like(means2d)).to(torch.int32)
    colors = None
    if with_colors:
        campos = cams.positions()  # [C, 3]
        dirs = torch.nn.functional.normalize(splats.means[None] - campos[:, None], dim=-1)  # [C, N, 3]
        colors = _eval_sh(sh_degree, dirs, splats.sh[None].expand(c, -1, -1, -1))
    return Projected(means2d, conics, depths, opacities, colors, radii)


def _min_power_over_rects(conics: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Minimum of ``q(d) = a dx^2 + 2 b dx dy + c dy^2`` over axis-aligned rectangles ``[lo, hi]`` in d-space.

    Args:
        conics: ``[P, 3]`` (a, b, c), positive definite.
        lo, hi: rectangle corners relative to the Gaussian's centre ``[P, 2]``.

    Returns:
        ``[P]`` minimum of q (0 when the centre is inside).
    """
    a, b, c = conics.unbind(-1)
    inside = (lo <= 0).all(-1) & (hi >= 0).all(-1)
    best = torch.full_like(a, float("inf"))
    for x_edge in (lo[:, 0], hi[:, 0]):  # vertical edges: minimise over dy
        dy = torch.clamp(-b * x_edge / c, lo[:, 1], hi[:, 1])
        best = torch.minimum(best, a * x_edge**2 + 2 * b * x_edge * dy + c * dy**2)
    for y_edge in (lo[:, 1], hi[:, 1]):  # horizontal edges: minimise over dx
        dx = torch.clamp(-b * y_edge / a, lo[:, 0], hi[:, 0])
        best = torch.minimum(best, a * dx**2 + 2 * b * dx * y_edge + c * y_edge**2)
    return torch.where(inside, torch.zeros_like(best), best)


@torch.no_grad()
def _bin_tiles(proj: Projected, width: int, height: int, tile_size: int) -> TileBins:
    """PyTorch implementation of the sort stage.

    Each visible Gaussian is paired with every tile its alpha >= 1/255 ellipse touches (exact ellipse-versus-tile
    test on the tile's pixel centres), and the pairs are sorted by one int64 key: (camera, tile) in the high 32
    bits, the float bits of the (positive) depth in the low 32 bits.
    """
    c, n = proj.depths.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    num_tiles = tiles_x * tiles_y
    cam_idx, g_idx = torch.nonzero(proj.visible, as_tuple=True)
    device = proj.depths.device
    if cam_idx.numel() == 0:
        return TileBins(torch.zeros(0, dtype=torch.int64, device=device),
                        torch.zeros(c * num_tiles + 1, dtype=torch.int64, device=device), tile_size, tiles_x, tiles_y)
    mean = proj.means2d[cam_idx, g_idx].detach()
    rad = proj.radii[cam_idx, g_idx].to(mean.dtype)
    x0 = ((mean[:, 0] - rad[:, 0]) / tile_size).floor().clamp(0, tiles_x).long()
    x1 = ((mean[:, 0] + rad[:, 0]) / tile_size).floor().add(1).clamp(0, tiles_x).long()
    y0 = ((mean[:, 1] - rad[:, 1]) / tile_size).floor().clamp(0, tiles_y).long()
    y1 = ((mean[:, 1] + rad[:, 1]) / tile_size).floor().add(1).clamp(0, tiles_y).long()
    spans_x, counts = x1 - x0, (x1 - x0) * (y1 - y0)
    pair_src = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(pair_src.numel(), device=device) - first[pair_src]
    tx = x0[pair_src] + local % spans_x[pair_src]
    ty = y0[pair_src] + local // spans_x[pair_src]
    # Exact test: the minimum of the Gaussian's power over the tile's pixel centres (inside the image).
    px_lo = torch.stack([tx * tile_size, ty * tile_size], -1).to(mean.dtype) + 0.5
    px_hi = torch.stack([torch.clamp((tx + 1) * tile_size, max=width), torch.clamp((ty + 1) * tile_size, max=height)],
                        -1).to(mean.dtype) - 0.5
    conic = proj.conics[cam_idx[pair_src], g_idx[pair_src]].detach()
    q_min = _min_power_over_rects(conic, px_lo - mean[pair_src], px_hi - mean[pair_src])
    q_cut = _alpha_cutoff(proj.opacities[cam_idx, g_idx].detach())[pair_src]
    hit = q_min <= q_cut
    pair_src, tx, ty = pair_src[hit], tx[hit], ty[hit]
    tile_key = cam_idx[pair_src] * num_tiles + ty * tiles_x + tx
    if proj.presorted:  # index order is depth order: the index is the key
        depth_bits = g_idx[pair_src].long()
    else:
        keys = proj.depths if proj.order_keys is None else proj.order_keys
        depth_bits = keys[cam_idx, g_idx].detach().float().view(torch.int32).long()[pair_src]
    order = torch.sort((tile_key << 32) | depth_bits, stable=True).indices  # stable: equal depths keep index order
    gaussian_ids = g_idx[pair_src][order]
    counts_per_tile = torch.bincount(tile_key, minlength=c * num_tiles)
    offsets = torch.zeros(c * num_tiles + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(counts_per_tile, 0)
    return TileBins(gaussian_ids, offsets, tile_size, tiles_x, tiles_y)


def _blend(proj: Projected, bins: TileBins, width: int, height: int, background: Tensor, with_colors: bool,
           with_depth: bool, round_size: int = 32) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """PyTorch implementation of the blend stage: per-tile front-to-back alpha blending.

    All tiles of all cameras advance together, ``round_size`` Gaussians per round; a tile leaves once it has no
    Gaussians left or all its pixels are saturated. Within a round, the transmittance before each Gaussian is an
    exclusive cumulative product, and a pixel keeps a Gaussian exactly when its transmittance after it stays at or
    above 1e-4 (since transmittance only falls, that is the 3DGS early stop).

    Args:
        background: ``[C, 3]``.

    Returns:
        image ``[C, H, W, 3]`` or None, alpha ``[C, H, W, 1]``, expected depth ``[C, H, W, 1]`` or None.
    """
    c = proj.depths.shape[0]
    ts, tiles_x, tiles_y = bins.tile_size, bins.tiles_x, bins.tiles_y
    num_tiles = c * tiles_x * tiles_y
    device, dtype = proj.means2d.device, proj.means2d.dtype
    npx = ts * ts
    pix = torch.arange(npx, device=device)
    local_xy = torch.stack([pix % ts, pix // ts], -1).to(dtype) + 0.5  # [npx, 2]
    tile_ids = torch.arange(num_tiles, device=device)
    tile_origin = torch.stack([(tile_ids % tiles_x) * ts, ((tile_ids // tiles_x) % tiles_y) * ts], -1).to(dtype)
    tile_cam = tile_ids // (tiles_x * tiles_y)
    starts, ends = bins.tile_offsets[:-1], bins.tile_offsets[1:]

    trans = torch.ones(num_tiles, npx, device=device, dtype=dtype)  # transmittance actually applied
    trans_test = torch.ones(num_tiles, npx, device=device, dtype=dtype)  # product over every alpha, for the stop
    color_acc = torch.zeros(num_tiles, npx, 3, device=device, dtype=dtype) if with_colors else None
    depth_acc = torch.zeros(num_tiles, npx, device=device, dtype=dtype) if with_depth else None
    active = tile_ids[ends > starts]
    offsets_in_round = torch.arange(round_size, device=device)
    round_start = 0
    while active.numel() > 0:
        idx = starts[active, None] + round_start + offsets_in_round  # [A, B]
        valid = idx < ends[active, None]
        cam = tile_cam[active, None].expand_as(idx)
        gid = bins.gaussian_ids[idx.clamp_max(max(bins.num_pairs - 1, 0))]
        mean = proj.means2d[cam, gid]  # [A, B, 2]
        conic = proj.conics[cam, gid]  # [A, B, 3]
        opac = proj.opacities[cam, gid]  # [A, B]
        pxy = tile_origin[active][:, None, :] + local_xy[None]  # [A, npx, 2]
        dx = pxy[:, :, None, 0] - mean[:, None, :, 0]  # [A, npx, B]
        dy = pxy[:, :, None, 1] - mean[:, None, :, 1]
        power = -0.5 * (conic[:, None, :, 0] * dx * dx + conic[:, None, :, 2] * dy * dy) \
            - conic[:, None, :, 1] * dx * dy
        alpha = torch.clamp_max(opac[:, None, :] * torch.exp(power), ALPHA_MAX)
        alpha = torch.where((alpha >= ALPHA_MIN) & (power <= 0) & valid[:, None, :], alpha, torch.zeros_like(alpha))
        one_minus = 1.0 - alpha
        t_test_in = trans_test[active]
        t_test_after = t_test_in[..., None] * torch.cumprod(one_minus, dim=-1)  # [A, npx, B]
        keep = t_test_after >= TRANSMITTANCE_MIN
        alpha_kept = torch.where(keep, alpha, torch.zeros_like(alpha))
        exclusive = torch.cumprod(torch.cat([torch.ones_like(alpha_kept[..., :1]), 1.0 - alpha_kept[..., :-1]], -1), -1)
        t_in = trans[active]
        weights = alpha_kept * exclusive * t_in[..., None]  # [A, npx, B]
        trans = trans.index_copy(0, active, t_in * exclusive[..., -1] * (1.0 - alpha_kept[..., -1]))
        trans_test = trans_test.index_copy(0, active, t_test_after[..., -1].detach())
        if color_acc is not None:
            col = proj.colors[cam, gid]  # [A, B, 3]
            color_acc = color_acc.index_add(0, active, weights @ col)
        if depth_acc is not None:
            depth_acc = depth_acc.index_add(0, active, (weights * proj.depths[cam, gid][:, None, :]).sum(-1))
        round_start += round_size
        still = (starts[active] + round_start < ends[active]) & (trans_test[active] >= TRANSMITTANCE_MIN).any(-1)
        active = active[still]

    def to_image(values: Tensor) -> Tensor:  # [num_tiles, npx, F] -> [C, H, W, F]
        f = values.shape[-1]
        img = values.reshape(c, tiles_y, tiles_x, ts, ts, f).permute(0, 1, 3, 2, 4, 5)
        return img.reshape(c, tiles_y * ts, tiles_x * ts, f)[:, :height, :width]

    alpha_img = to_image(1.0 - trans[..., None])
    image = None
    if color_acc is not None:
        image = to_image(color_acc) + to_image(trans[..., None]) * background[:, None, None, :]
    depth = None
    if depth_acc is not None:
        acc = to_image(depth_acc[..., None])
        depth = torch.where(alpha_img > 0, acc / alpha_img.clamp_min(1e-10), torch.zeros_like(acc))
    return image, alpha_img, depth
