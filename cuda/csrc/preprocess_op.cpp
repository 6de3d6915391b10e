// Torch glue for the preprocess stage: checks, allocation, launch.
#include "ops.h"
#include "preprocess.h"
#include "torch_glue.h"

namespace gs {
namespace {

void check_scene(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
                 const at::Tensor& opacity_logits, const at::Tensor& sh, const at::Tensor& viewmats,
                 const at::Tensor& Ks, const at::Tensor& campos, int64_t sh_degree) {
    GS_CHECK_FLOAT(means);
    GS_CHECK_FLOAT(quats);
    GS_CHECK_FLOAT(log_scales);
    GS_CHECK_FLOAT(opacity_logits);
    GS_CHECK_FLOAT(sh);
    GS_CHECK_FLOAT(viewmats);
    GS_CHECK_FLOAT(Ks);
    GS_CHECK_FLOAT(campos);
    const int64_t N = means.size(0), C = viewmats.size(0);
    GS_CHECK_SHAPE(means, N, 3);
    GS_CHECK_SHAPE(quats, N, 4);
    GS_CHECK_SHAPE(log_scales, N, 3);
    GS_CHECK_SHAPE(opacity_logits, N);
    TORCH_CHECK(sh.dim() == 3 && sh.size(0) == N && sh.size(2) == 3, "sh must have shape [N, K, 3] with N = ", N,
                ", got ", sh.sizes());
    GS_CHECK_SHAPE(viewmats, C, 4, 4);
    GS_CHECK_SHAPE(Ks, C, 3, 3);
    GS_CHECK_SHAPE(campos, C, 3);
    TORCH_CHECK(sh_degree >= 0 && sh_degree <= 3 && (sh_degree + 1) * (sh_degree + 1) <= sh.size(1),
                "sh_degree must be in 0..3 and need at most K = ", sh.size(1), " coefficients, got ", sh_degree);
    TORCH_CHECK(C * N < (int64_t{1} << 31), "C * N must be < 2^31, got ", C * N);
    for (const at::Tensor* t : {&quats, &log_scales, &opacity_logits, &sh, &viewmats, &Ks, &campos}) {
        TORCH_CHECK(t->device() == means.device(), "all inputs must be on ", means.device(), ", got one on ",
                    t->device());
    }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> preprocess_forward_op(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
    const at::Tensor& opacity_logits, const at::Tensor& sh, const at::Tensor& viewmats, const at::Tensor& Ks,
    const at::Tensor& campos, int64_t width, int64_t height, double near_plane, double far_plane, int64_t sh_degree,
    bool with_colors, const std::optional<at::Tensor>& items) {
    check_scene(means, quats, log_scales, opacity_logits, sh, viewmats, Ks, campos, sh_degree);
    TORCH_CHECK(width > 0 && height > 0, "width and height must be positive, got ", width, "x", height);
    if (present(items)) {  // indices into the parameter arrays, one per output slot (the caller keeps them in range)
        GS_CHECK_INT(*items);
        TORCH_CHECK(items->dim() == 1, "items must have shape [M], got ", items->sizes());
        GS_CHECK_SAME_DEVICE(*items, means);
    }
    const c10::cuda::CUDAGuard guard(means.device());
    const int64_t N = present(items) ? items->size(0) : means.size(0), C = viewmats.size(0);
    TORCH_CHECK(C * N < (int64_t{1} << 31), "C * M must be < 2^31, got ", C * N);
    const auto fopts = means.options();
    at::Tensor means2d = at::empty({C, N, 2}, fopts);
    at::Tensor conics = at::empty({C, N, 3}, fopts);
    at::Tensor depths = at::empty({C, N}, fopts);
    at::Tensor opacities = at::empty({C, N}, fopts);
    at::Tensor colors = at::empty({C, N, with_colors ? 3 : 0}, fopts);
    at::Tensor radii = at::empty({C, N, 2}, fopts.dtype(at::kInt));
    PreprocessArgs a{};
    a.C = static_cast<int>(C);
    a.N = static_cast<int>(N);
    a.K = static_cast<int>(sh.size(1));
    a.degree = static_cast<int>(sh_degree);
    a.width = static_cast<int>(width);
    a.height = static_cast<int>(height);
    a.near_plane = static_cast<float>(near_plane);
    a.far_plane = static_cast<float>(far_plane);
    a.means = means.data_ptr<float>();
    a.quats = quats.data_ptr<float>();
    a.log_scales = log_scales.data_ptr<float>();
    a.opacity_logits = opacity_logits.data_ptr<float>();
    a.sh = sh.data_ptr<float>();
    a.viewmats = viewmats.data_ptr<float>();
    a.Ks = Ks.data_ptr<float>();
    a.campos = campos.data_ptr<float>();
    a.items = present(items) ? items->data_ptr<int>() : nullptr;
    a.means2d = means2d.data_ptr<float>();
    a.conics = conics.data_ptr<float>();
    a.depths = depths.data_ptr<float>();
    a.opacities = opacities.data_ptr<float>();
    a.colors = with_colors ? colors.data_ptr<float>() : nullptr;
    a.radii = radii.data_ptr<int>();
    check_status(preprocess_forward(a, current_stream()), "preprocess_forward");
    return {means2d, conics, depths, opacities, colors, radii};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> preprocess_backward_op(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
    const at::Tensor& opacity_logits, const at::Tensor& sh, const at::Tensor& viewmats, const at::Tensor& Ks,
    const at::Tensor& campos, int64_t width, int64_t height, int64_t sh_degree,
    const std::optional<at::Tensor>& v_means2d, const std::optional<at::Tensor>& v_conics,
    const std::optional<at::Tensor>& v_depths, const std::optional<at::Tensor>& v_opacities,
    const std::optional<at::Tensor>& v_colors) {
    check_scene(means, quats, log_scales, opacity_logits, sh, viewmats, Ks, campos, sh_degree);
    const c10::cuda::CUDAGuard guard(means.device());
    const int64_t N = means.size(0), C = viewmats.size(0);
    const std::pair<const std::optional<at::Tensor>*, std::vector<int64_t>> grads[] = {
        {&v_means2d, {C, N, 2}}, {&v_conics, {C, N, 3}}, {&v_depths, {C, N}}, {&v_opacities, {C, N}},
        {&v_colors, {C, N, 3}}};
    for (const auto& [g, shape] : grads) {
        if (!present(*g)) continue;
        GS_CHECK_FLOAT(**g);
        TORCH_CHECK((*g)->sizes() == at::IntArrayRef(shape), "gradient must have shape ", at::IntArrayRef(shape),
                    ", got ", (*g)->sizes());
        GS_CHECK_SAME_DEVICE(**g, means);
    }
    const auto fopts = means.options();
    at::Tensor v_means = at::empty({N, 3}, fopts);
    at::Tensor v_quats = at::empty({N, 4}, fopts);
    at::Tensor v_log_scales = at::empty({N, 3}, fopts);
    at::Tensor v_opacity_logits = at::empty({N}, fopts);
    at::Tensor v_sh = at::empty(sh.sizes(), fopts);
    PreprocessBackwardArgs a{};
    a.C = static_cast<int>(C);
    a.N = static_cast<int>(N);
    a.K = static_cast<int>(sh.size(1));
    a.degree = static_cast<int>(sh_degree);
    a.width = static_cast<int>(width);
    a.height = static_cast<int>(height);
    a.means = means.data_ptr<float>();
    a.quats = quats.data_ptr<float>();
    a.log_scales = log_scales.data_ptr<float>();
    a.opacity_logits = opacity_logits.data_ptr<float>();
    a.sh = sh.data_ptr<float>();
    a.viewmats = viewmats.data_ptr<float>();
    a.Ks = Ks.data_ptr<float>();
    a.campos = campos.data_ptr<float>();
    a.v_means2d = opt_ptr(v_means2d);
    a.v_conics = opt_ptr(v_conics);
    a.v_depths = opt_ptr(v_depths);
    a.v_opacities = opt_ptr(v_opacities);
    a.v_colors = opt_ptr(v_colors);
    a.v_means = v_means.data_ptr<float>();
    a.v_quats = v_quats.data_ptr<float>();
    a.v_log_scales = v_log_scales.data_ptr<float>();
    a.v_opacity_logits = v_opacity_logits.data_ptr<float>();
    a.v_sh = v_sh.data_ptr<float>();
    check_status(preprocess_backward(a, current_stream()), "preprocess_backward");
    return {v_means, v_quats, v_log_scales, v_opacity_logits, v_sh};
}

}  // namespace gs
