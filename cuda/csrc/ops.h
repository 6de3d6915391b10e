// Torch-level ops of the native rasterizer, registered in ext.cpp (namespace ``gscache``).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace gs {

// -> means2d [C,N,2], conics [C,N,3], depths [C,N], opacities [C,N], colors [C,N,3] (or [C,N,0]), radii [C,N,2]
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> preprocess_forward_op(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
    const at::Tensor& opacity_logits, const at::Tensor& sh, const at::Tensor& viewmats, const at::Tensor& Ks,
    const at::Tensor& campos, int64_t width, int64_t height, double near_plane, double far_plane, int64_t sh_degree,
    bool with_colors, const std::optional<at::Tensor>& items);

// -> v_means [N,3], v_quats [N,4], v_log_scales [N,3], v_opacity_logits [N], v_sh [N,K,3]
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> preprocess_backward_op(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
    const at::Tensor& opacity_logits, const at::Tensor& sh, const at::Tensor& viewmats, const at::Tensor& Ks,
    const at::Tensor& campos, int64_t width, int64_t height, int64_t sh_degree,
    const std::optional<at::Tensor>& v_means2d, const std::optional<at::Tensor>& v_conics,
    const std::optional<at::Tensor>& v_depths, const std::optional<at::Tensor>& v_opacities,
    const std::optional<at::Tensor>& v_colors);

// -> gaussian_ids [P] int32, tile_offsets [C*TY*TX+1] int32
// Returns (gaussian_ids [P], tile_offsets [C * tiles + 1], visible items per camera [C]), all int32.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bin_and_sort_op(const at::Tensor& means2d, const at::Tensor& conics,
                                                               const at::Tensor& opacities, const at::Tensor& depths,
                                                               const at::Tensor& radii, int64_t width,
                                                               int64_t height, bool presorted);

// -> image [C,H,W,3] (or empty), alpha [C,H,W,1], depth [C,H,W,1] (or empty), T [C,H,W] and last [C,H,W]
//    (empty unless save_for_backward), seg_state [S,5,C,H,W] (the segmented backward's boundary states; S = 0
//    unless save_for_backward picked S > 1 segments)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> blend_forward_op(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
    const std::optional<at::Tensor>& colors, const std::optional<at::Tensor>& depths, const at::Tensor& background,
    const at::Tensor& gaussian_ids, const at::Tensor& tile_offsets, int64_t width, int64_t height,
    bool save_for_backward);

// -> v_means2d [C,N,2], v_conics [C,N,3], v_opacities [C,N], v_colors [C,N,3] (or empty), v_depths [C,N] (or empty)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> blend_backward_op(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
    const std::optional<at::Tensor>& colors, const std::optional<at::Tensor>& depths, const at::Tensor& background,
    const at::Tensor& gaussian_ids, const at::Tensor& tile_offsets, int64_t width, int64_t height,
    const std::optional<at::Tensor>& out_depth, const at::Tensor& out_T, const at::Tensor& out_last,
    const at::Tensor& seg_state, const std::optional<at::Tensor>& v_image, const std::optional<at::Tensor>& v_alpha,
    const std::optional<at::Tensor>& v_depth);

// Viewer display path (gl_interop_op.cpp): eye images [C,H,W,k] -> display RGBA8 [H, W or 2W, 4] (uint8), into a
// tensor or into a GL texture through CUDA-GL interop (handles from gl_register_image; GL context current).
at::Tensor display_pack_op(const std::optional<at::Tensor>& image, const std::optional<at::Tensor>& alpha,
                           const std::optional<at::Tensor>& depth, int64_t mode, int64_t layout,
                           c10::ArrayRef<double> depth_lo, c10::ArrayRef<double> depth_span);
// The same display image written into raw device memory (`capacity` bytes at `address`, e.g. a shared_allocate
// buffer that GL imported), on the current stream.
void display_pack_to_op(int64_t address, int64_t capacity, const std::optional<at::Tensor>& image,
                        const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& depth, int64_t mode,
                        int64_t layout, c10::ArrayRef<double> depth_lo, c10::ArrayRef<double> depth_span);
// Device memory exported as a POSIX fd (shared_memory.h): (handle, fd, size, address); the caller owns the fd.
std::tuple<int64_t, int64_t, int64_t, int64_t> shared_allocate_op(int64_t bytes, int64_t device);
void shared_free_op(int64_t handle);
std::tuple<int64_t, std::vector<int64_t>> gl_cuda_devices_op();
int64_t gl_register_image_op(int64_t texture, int64_t width, int64_t height, int64_t device);
void gl_unregister_image_op(int64_t handle);
void gl_write_display_op(int64_t handle, const std::optional<at::Tensor>& image,
                         const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& depth, int64_t mode,
                         int64_t layout, c10::ArrayRef<double> depth_lo, c10::ArrayRef<double> depth_span);

}  // namespace gs
