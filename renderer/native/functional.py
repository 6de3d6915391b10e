"""Stage functions of the native backend and their autograd wrappers.

Each stage calls one op of ``torch.ops.gscache`` (see ``cuda/csrc/ext.cpp``). Gradients go through
``torch.autograd.Function``s; when autograd is off (``torch.no_grad()``, ``torch.inference_mode()``) or no input
needs a gradient, the ops run directly and nothing is saved for backward (the blend skips writing its per-pixel
backward state).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import CameraBatch
from ..splats import Splats
from ..stages import Projected, TileBins
from ..types import TILE_SIZE
from .build import load_native


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _opt(t: Tensor | None) -> Tensor | None:
    """A cotangent as the kernels take it: None stays None, anything else becomes contiguous float32."""
    return None if t is None else t.contiguous()


class _Preprocess(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, log_scales, opacity_logits, sh, viewmats, Ks, campos, width, height, near, far,
                sh_degree, with_colors):
        ops = load_native(means.device)
        outs = ops.preprocess_forward(means, quats, log_scales, opacity_logits, sh, viewmats, Ks, campos, width,
                                      height, near, far, sh_degree, with_colors)
        ctx.save_for_backward(means, quats, log_scales, opacity_logits, sh, viewmats, Ks, campos)
        ctx.meta = (width, height, sh_degree, with_colors)
        ctx.mark_non_differentiable(outs[5])
        ctx.set_materialize_grads(False)
        return outs

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, v_opacities, v_colors, _v_radii):
        width, height, sh_degree, with_colors = ctx.meta
        saved = ctx.saved_tensors
        ops = load_native(saved[0].device)
        grads = ops.preprocess_backward(*saved, width, height, sh_degree, _opt(v_means2d), _opt(v_conics),
                                        _opt(v_depths), _opt(v_opacities), _opt(v_colors) if with_colors else None)
        return (*grads, *([None] * 9))


def preprocess(splats: Splats, cams: CameraBatch, sh_degree: int, with_colors: bool,
               items: Tensor | None = None) -> Projected:
    """Native implementation of the preprocess stage (same contract as ``_torch_impl._preprocess``).

    When gradients flow, ``Projected.means2d`` retains its gradient (``means2d.grad`` after backward, ``[C, N, 2]``):
    the screen-space gradient that densification needs. ``items [M]``: only these Gaussians, in this order, read in
    place (``Projected`` is ``[C, M]``); no gradients.
    """
    if splats.dtype != torch.float32:
        raise ValueError(f"splats: the native backend renders float32 scenes, got {splats.dtype}")
    device = splats.device
    viewmats = cams.viewmats.to(device, torch.float32).contiguous()  # [C, 4, 4]
    ks = cams.Ks.to(device, torch.float32).contiguous()  # [C, 3, 3]
    campos = cams.positions().to(device, torch.float32).contiguous()  # [C, 3]
    fields = [t.contiguous() for t in (splats.means, splats.quats, splats.log_scales, splats.opacity_logits,
                                       splats.sh)]
    args = (*fields, viewmats, ks, campos, cams.width, cams.height, float(cams.near), float(cams.far), sh_degree,
            with_colors)
    if items is not None:
        if _needs_grad(*fields):
            raise ValueError("preprocess: items (a subset read in place) has no backward; render under no_grad")
        outs = load_native(device).preprocess_forward(*args, items.to(device, torch.int32).contiguous())
        means2d, conics, depths, opacities, colors, radii = outs
    elif _needs_grad(*fields):
        means2d, conics, depths, opacities, colors, radii = _Preprocess.apply(*args)
        means2d.retain_grad()
    else:
        means2d, conics, depths, opacities, colors, radii = load_native(device).preprocess_forward(*args)
    return Projected(means2d, conics, depths, opacities, colors if with_colors else None, radii)


@torch.no_grad()
def sort(projected: Projected, cams: CameraBatch) -> TileBins:
    """Native implementation of the sort stage: pairs sorted by camera, tile and depth (or ``order_keys``, or index
    order for ``presorted`` input).

    ``gaussian_ids`` and ``tile_offsets`` are int32 (the torch backend's are int64; both blends take either).
    """
    return sort_with_counts(projected, cams)[0]


@torch.no_grad()
def sort_with_counts(projected: Projected, cams: CameraBatch) -> tuple[TileBins, Tensor]:
    """:func:`sort`, plus the visible Gaussians per camera ``[C]`` (int32) that the sort counts on the way."""
    ops = load_native(projected.means2d.device)
    keys = projected.depths if projected.order_keys is None else projected.order_keys  # [C, N], >= 0 where visible
    ids, offsets, visible = ops.bin_and_sort(projected.means2d.detach().contiguous(),
                                             projected.conics.detach().contiguous(),
                                             projected.opacities.detach().contiguous(),
                                             keys.detach().to(torch.float32).contiguous(),
                                             projected.radii.to(torch.int32).contiguous(), cams.width, cams.height,
                                             projected.presorted)
    tiles_x = (cams.width + TILE_SIZE - 1) // TILE_SIZE
    tiles_y = (cams.height + TILE_SIZE - 1) // TILE_SIZE
    return TileBins(ids, offsets, TILE_SIZE, tiles_x, tiles_y), visible


class _Blend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, depths, background, gaussian_ids, tile_offsets, width,
                height):
        ops = load_native(means2d.device)
        image, alpha, depth, t_final, last, seg_state = ops.blend_forward(
            means2d, conics, opacities, colors, depths, background, gaussian_ids, tile_offsets, width, height, True)
        ctx.save_for_backward(means2d, conics, opacities, colors, depths, background, gaussian_ids, tile_offsets,
                              depth if depths is not None else None, t_final, last, seg_state)
        ctx.meta = (width, height)
        ctx.set_materialize_grads(False)
        return image, alpha, depth

    @staticmethod
    def backward(ctx, v_image, v_alpha, v_depth):
        width, height = ctx.meta
        (means2d, conics, opacities, colors, depths, background, ids, offsets, depth, t_final, last,
         seg_state) = ctx.saved_tensors
        ops = load_native(means2d.device)
        v_means2d, v_conics, v_opacities, v_colors, v_depths = ops.blend_backward(
            means2d, conics, opacities, colors, depths, background, ids, offsets, width, height, depth, t_final, last,
            seg_state, _opt(v_image) if colors is not None else None, _opt(v_alpha),
            _opt(v_depth) if depths is not None else None)
        v_background = None
        if ctx.needs_input_grad[5] and v_image is not None and colors is not None:
            v_background = (v_image * t_final[..., None]).sum(dim=(1, 2))  # [C, 3]
        return (v_means2d, v_conics, v_opacities, v_colors if colors is not None else None,
                v_depths if depths is not None else None, v_background, None, None, None, None)


def blend(projected: Projected, bins: TileBins, width: int, height: int, background: Tensor, with_colors: bool,
          with_depth: bool) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """Native implementation of the blend stage (same contract as ``_torch_impl._blend``).

    Args:
        background: ``[C, 3]``.

    Returns:
        image ``[C, H, W, 3]`` or None, alpha ``[C, H, W, 1]``, expected depth ``[C, H, W, 1]`` or None.
    """
    if bins.tile_size != TILE_SIZE:
        raise ValueError(f"bins.tile_size: the native blend uses {TILE_SIZE}x{TILE_SIZE} tiles, got {bins.tile_size}")
    if with_colors and projected.colors is None:
        raise ValueError("projected.colors: colour output needs colours from preprocess (with_colors=True)")
    means2d = projected.means2d.contiguous()
    conics = projected.conics.contiguous()
    opacities = projected.opacities.contiguous()
    colors = projected.colors.contiguous() if with_colors else None
    depths = projected.depths.contiguous() if with_depth else None
    bg = background.to(means2d.device, means2d.dtype).contiguous()
    ids = bins.gaussian_ids.to(torch.int32).contiguous()
    offsets = bins.tile_offsets.to(torch.int32).contiguous()
    if _needs_grad(means2d, conics, opacities, colors, depths, bg):
        image, alpha, depth = _Blend.apply(means2d, conics, opacities, colors, depths, bg, ids, offsets, width, height)
    else:
        ops = load_native(means2d.device)
        image, alpha, depth, _, _, _ = ops.blend_forward(means2d, conics, opacities, colors, depths, bg, ids, offsets,
                                                      width, height, False)
    return (image if with_colors else None), alpha, (depth if with_depth else None)
