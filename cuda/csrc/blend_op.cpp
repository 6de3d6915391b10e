// Torch glue for the blend stage, forward and backward.
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>

#include "blend.h"
#include "ops.h"
#include "torch_glue.h"

namespace gs {
namespace {

struct BlendInputs {
    int64_t C, N, tiles_x, tiles_y;
};

BlendInputs check_blend_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                               const std::optional<at::Tensor>& colors, const std::optional<at::Tensor>& depths,
                               const at::Tensor& background, const at::Tensor& gaussian_ids,
                               const at::Tensor& tile_offsets, int64_t width, int64_t height) {
    GS_CHECK_FLOAT(means2d);
    GS_CHECK_FLOAT(conics);
    GS_CHECK_FLOAT(opacities);
    GS_CHECK_FLOAT(background);
    GS_CHECK_INT(gaussian_ids);
    GS_CHECK_INT(tile_offsets);
    TORCH_CHECK(means2d.dim() == 3 && means2d.size(2) == 2, "means2d must have shape [C, N, 2], got ",
                means2d.sizes());
    TORCH_CHECK(width > 0 && height > 0, "width and height must be positive, got ", width, "x", height);
    BlendInputs in{means2d.size(0), means2d.size(1), (width + kTileSize - 1) / kTileSize,
                   (height + kTileSize - 1) / kTileSize};
    GS_CHECK_SHAPE(conics, in.C, in.N, 3);
    GS_CHECK_SHAPE(opacities, in.C, in.N);
    GS_CHECK_SHAPE(background, in.C, 3);
    GS_CHECK_SHAPE(tile_offsets, in.C * in.tiles_x * in.tiles_y + 1);
    TORCH_CHECK(gaussian_ids.dim() == 1, "gaussian_ids must be 1-D, got ", gaussian_ids.sizes());
    if (present(colors)) {
        GS_CHECK_FLOAT(*colors);
        GS_CHECK_SHAPE(*colors, in.C, in.N, 3);
        GS_CHECK_SAME_DEVICE(*colors, means2d);
    }
    if (present(depths)) {
        GS_CHECK_FLOAT(*depths);
        GS_CHECK_SHAPE(*depths, in.C, in.N);
        GS_CHECK_SAME_DEVICE(*depths, means2d);
    }
    for (const at::Tensor* t : {&conics, &opacities, &background, &gaussian_ids, &tile_offsets}) {
        GS_CHECK_SAME_DEVICE(*t, means2d);
    }
    return in;
}

template <typename Args>
void fill_common(Args& a, const BlendInputs& in, int64_t width, int64_t height, const at::Tensor& means2d,
                 const at::Tensor& conics, const at::Tensor& opacities, const std::optional<at::Tensor>& colors,
                 const std::optional<at::Tensor>& depths, const at::Tensor& background,
                 const at::Tensor& gaussian_ids, const at::Tensor& tile_offsets) {
    a.C = static_cast<int>(in.C);
    a.N = static_cast<int>(in.N);
    a.width = static_cast<int>(width);
    a.height = static_cast<int>(height);
    a.tiles_x = static_cast<int>(in.tiles_x);
    a.tiles_y = static_cast<int>(in.tiles_y);
    a.means2d = means2d.data_ptr<float>();
    a.conics = conics.data_ptr<float>();
    a.opacities = opacities.data_ptr<float>();
    a.colors = present(colors) ? colors->data_ptr<float>() : nullptr;
    a.depths = present(depths) ? depths->data_ptr<float>() : nullptr;
    a.background = background.data_ptr<float>();
    a.gaussian_ids = gaussian_ids.data_ptr<int>();
    a.tile_offsets = tile_offsets.data_ptr<int>();
}

// Segments per tile range for the backward pass (blend.h, segment_length): enough blocks to fill the GPU about
// four times over where the ranges are long (small images, many Gaussians per tile), one where there are tiles
// enough or the ranges are short (a segment is at least one batch of 256 entries).
int64_t backward_segments(int64_t ranges, int64_t pairs, const at::Device& device) {
    constexpr int64_t kMaxSegments = 8;
    if (ranges <= 0 || pairs <= 0) return 1;
    const int64_t sms = at::cuda::getDeviceProperties(device.index())->multiProcessorCount;
    const int64_t fill = (4 * sms + ranges - 1) / ranges;
    const int64_t batches = pairs / (ranges * kTilePixels);  // mean batches per range
    return std::max<int64_t>(1, std::min({kMaxSegments, fill, batches}));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> blend_forward_op(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
    const std::optional<at::Tensor>& colors, const std::optional<at::Tensor>& depths, const at::Tensor& background,
    const at::Tensor& gaussian_ids, const at::Tensor& tile_offsets, int64_t width, int64_t height,
    bool save_for_backward) {
    const BlendInputs in = check_blend_inputs(means2d, conics, opacities, colors, depths, background, gaussian_ids,
                                              tile_offsets, width, height);
    const c10::cuda::CUDAGuard guard(means2d.device());
    const auto fopts = means2d.options();
    const int64_t C = in.C, H = height, W = width;
    at::Tensor image = at::empty({present(colors) ? C : 0, H, W, 3}, fopts);
    at::Tensor alpha = at::empty({C, H, W, 1}, fopts);
    at::Tensor depth = at::empty({present(depths) ? C : 0, H, W, 1}, fopts);
    at::Tensor T = at::empty({save_for_backward ? C : 0, H, W}, fopts);
    at::Tensor last = at::empty({save_for_backward ? C : 0, H, W}, fopts.dtype(at::kInt));
    const int64_t segments =
        save_for_backward ? backward_segments(C * in.tiles_x * in.tiles_y, gaussian_ids.size(0), means2d.device()) : 1;
    at::Tensor seg_state = at::empty({segments > 1 ? segments : 0, kSegmentState, C, H, W}, fopts);
    BlendArgs a{};
    fill_common(a, in, width, height, means2d, conics, opacities, colors, depths, background, gaussian_ids,
                tile_offsets);
    a.out_image = present(colors) ? image.data_ptr<float>() : nullptr;
    a.out_alpha = alpha.data_ptr<float>();
    a.out_depth = present(depths) ? depth.data_ptr<float>() : nullptr;
    a.out_T = save_for_backward ? T.data_ptr<float>() : nullptr;
    a.out_last = save_for_backward ? last.data_ptr<int>() : nullptr;
    a.seg_state = segments > 1 ? seg_state.data_ptr<float>() : nullptr;
    a.segments = static_cast<int>(segments);
    check_status(blend_forward(a, current_stream()), "blend_forward");
    return {image, alpha, depth, T, last, seg_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> blend_backward_op(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
    const std::optional<at::Tensor>& colors, const std::optional<at::Tensor>& depths, const at::Tensor& background,
    const at::Tensor& gaussian_ids, const at::Tensor& tile_offsets, int64_t width, int64_t height,
    const std::optional<at::Tensor>& out_depth, const at::Tensor& out_T, const at::Tensor& out_last,
    const at::Tensor& seg_state, const std::optional<at::Tensor>& v_image, const std::optional<at::Tensor>& v_alpha,
    const std::optional<at::Tensor>& v_depth) {
    const BlendInputs in = check_blend_inputs(means2d, conics, opacities, colors, depths, background, gaussian_ids,
                                              tile_offsets, width, height);
    const int64_t C = in.C, H = height, W = width;
    GS_CHECK_FLOAT(out_T);
    GS_CHECK_SHAPE(out_T, C, H, W);
    GS_CHECK_INT(out_last);
    GS_CHECK_SHAPE(out_last, C, H, W);
    GS_CHECK_FLOAT(seg_state);
    const int64_t segments = seg_state.size(0) > 1 ? seg_state.size(0) : 1;
    if (segments > 1) GS_CHECK_SHAPE(seg_state, segments, kSegmentState, C, H, W);
    if (present(v_image)) {
        GS_CHECK_FLOAT(*v_image);
        GS_CHECK_SHAPE(*v_image, C, H, W, 3);
    }
    if (present(v_alpha)) {
        GS_CHECK_FLOAT(*v_alpha);
        GS_CHECK_SHAPE(*v_alpha, C, H, W, 1);
    }
    if (present(v_depth)) {
        TORCH_CHECK(present(depths) && present(out_depth), "v_depth needs depths and out_depth");
        GS_CHECK_FLOAT(*v_depth);
        GS_CHECK_SHAPE(*v_depth, C, H, W, 1);
        GS_CHECK_FLOAT(*out_depth);
        GS_CHECK_SHAPE(*out_depth, C, H, W, 1);
    }
    const c10::cuda::CUDAGuard guard(means2d.device());
    const auto fopts = means2d.options();
    at::Tensor v_means2d = at::zeros({C, in.N, 2}, fopts);
    at::Tensor v_conics = at::zeros({C, in.N, 3}, fopts);
    at::Tensor v_opacities = at::zeros({C, in.N}, fopts);
    at::Tensor v_colors = at::zeros({present(colors) ? C : 0, in.N, 3}, fopts);
    at::Tensor v_depths = at::zeros({present(depths) ? C : 0, in.N}, fopts);
    BlendBackwardArgs a{};
    fill_common(a, in, width, height, means2d, conics, opacities, colors, depths, background, gaussian_ids,
                tile_offsets);
    a.out_depth = opt_ptr(out_depth);
    a.out_T = out_T.data_ptr<float>();
    a.out_last = out_last.data_ptr<int>();
    a.seg_state = segments > 1 ? seg_state.data_ptr<float>() : nullptr;
    a.segments = static_cast<int>(segments);
    a.v_image = present(colors) ? opt_ptr(v_image) : nullptr;
    a.v_alpha = opt_ptr(v_alpha);
    a.v_depth = present(depths) ? opt_ptr(v_depth) : nullptr;
    a.v_means2d = v_means2d.data_ptr<float>();
    a.v_conics = v_conics.data_ptr<float>();
    a.v_opacities = v_opacities.data_ptr<float>();
    a.v_colors = present(colors) ? v_colors.data_ptr<float>() : nullptr;
    a.v_depths = present(depths) ? v_depths.data_ptr<float>() : nullptr;
    check_status(blend_backward(a, current_stream()), "blend_backward");
    return {v_means2d, v_conics, v_opacities, v_colors, v_depths};
}

}  // namespace gs
