// Torch glue for the sort stage: count pairs, read the total (one host sync), emit and sort. ``presorted``: the
// items are in front-to-back order already (the frame cache's visible set), so the depth sort is skipped.
#include "binning.h"
#include "ops.h"
#include "torch_glue.h"

namespace gs {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_and_sort_op(const at::Tensor& means2d, const at::Tensor& conics,
                                                   const at::Tensor& opacities, const at::Tensor& depths,
                                                   const at::Tensor& radii, int64_t width, int64_t height,
                                                   bool presorted) {
    GS_CHECK_FLOAT(means2d);
    GS_CHECK_FLOAT(conics);
    GS_CHECK_FLOAT(opacities);
    GS_CHECK_FLOAT(depths);
    GS_CHECK_INT(radii);
    TORCH_CHECK(means2d.dim() == 3 && means2d.size(2) == 2, "means2d must have shape [C, N, 2], got ",
                means2d.sizes());
    const int64_t C = means2d.size(0), N = means2d.size(1);
    GS_CHECK_SHAPE(conics, C, N, 3);
    GS_CHECK_SHAPE(opacities, C, N);
    GS_CHECK_SHAPE(depths, C, N);
    GS_CHECK_SHAPE(radii, C, N, 2);
    for (const at::Tensor* t : {&conics, &opacities, &depths, &radii}) GS_CHECK_SAME_DEVICE(*t, means2d);
    TORCH_CHECK(width > 0 && height > 0, "width and height must be positive, got ", width, "x", height);
    const c10::cuda::CUDAGuard guard(means2d.device());
    const int64_t tiles_x = (width + kTileSize - 1) / kTileSize, tiles_y = (height + kTileSize - 1) / kTileSize;
    const int64_t num_ranges = C * tiles_x * tiles_y;
    TORCH_CHECK(num_ranges < (int64_t{1} << 31), "too many (camera, tile) ranges: ", num_ranges);
    const auto iopts = means2d.options().dtype(at::kInt);
    BinArgs a{};
    a.C = static_cast<int>(C);
    a.N = static_cast<int>(N);
    a.width = static_cast<int>(width);
    a.height = static_cast<int>(height);
    a.tiles_x = static_cast<int>(tiles_x);
    a.tiles_y = static_cast<int>(tiles_y);
    a.means2d = means2d.data_ptr<float>();
    a.conics = conics.data_ptr<float>();
    a.opacities = opacities.data_ptr<float>();
    a.depths = depths.data_ptr<float>();
    a.radii = radii.data_ptr<int>();
    // Buffers are tensors released as soon as they are spent (the caching allocator reuses them stream-ordered),
    // so that the peak is Projected + max(depth sort, pair sort) rather than their sum.
    const int64_t total = C * N;
    int64_t num_pairs = 0;
    at::Tensor visible_counts = at::zeros({C}, iopts);
    at::Tensor cum = at::empty({total}, iopts);
    at::Tensor order = at::empty({total}, iopts);
    if (total > 0) {
        at::Tensor keys0 = at::empty({total}, iopts), keys1 = at::empty({total}, iopts);
        at::Tensor items0 = at::empty({total}, iopts);
        TorchScratch scratch(means2d.device());
        check_status(bin_count(a, reinterpret_cast<uint32_t*>(keys0.data_ptr<int>()),
                               reinterpret_cast<uint32_t*>(keys1.data_ptr<int>()), items0.data_ptr<int>(),
                               order.data_ptr<int>(), cum.data_ptr<int>(), visible_counts.data_ptr<int>(),
                               presorted, scratch.allocator(), current_stream()),
                     "bin_count");
        keys0.reset();
        keys1.reset();
        items0.reset();
        num_pairs = cum[total - 1].item<int>();
    }
    TORCH_CHECK(num_pairs >= 0, "pair count overflowed int32");
    at::Tensor pair_keys0 = at::empty({num_pairs}, iopts), values0 = at::empty({num_pairs}, iopts);
    if (num_pairs > 0) {
        check_status(bin_emit(a, order.data_ptr<int>(), cum.data_ptr<int>(),
                              reinterpret_cast<uint32_t*>(pair_keys0.data_ptr<int>()), values0.data_ptr<int>(),
                              current_stream()),
                     "bin_emit");
    }
    order.reset();
    cum.reset();
    at::Tensor pair_keys1 = at::empty({num_pairs}, iopts), values1 = at::empty({num_pairs}, iopts);
    at::Tensor tile_offsets = at::empty({num_ranges + 1}, iopts);
    int selector = 0;
    {
        TorchScratch scratch(means2d.device());
        check_status(bin_sort(a, static_cast<int>(num_pairs), reinterpret_cast<uint32_t*>(pair_keys0.data_ptr<int>()),
                              reinterpret_cast<uint32_t*>(pair_keys1.data_ptr<int>()), values0.data_ptr<int>(),
                              values1.data_ptr<int>(), &selector, tile_offsets.data_ptr<int>(), scratch.allocator(),
                              current_stream()),
                     "bin_sort");
    }
    at::Tensor gaussian_ids = selector == 0 ? values0 : values1;
    return {gaussian_ids, tile_offsets, visible_counts};
}

}  // namespace gs
