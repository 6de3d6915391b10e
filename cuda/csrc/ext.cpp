// The binding table: op schemas (namespace ``gscache``) and their CUDA implementations (see ops.h).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(gscache, m) {
    m.def("preprocess_forward(Tensor means, Tensor quats, Tensor log_scales, Tensor opacity_logits, Tensor sh, "
          "Tensor viewmats, Tensor Ks, Tensor campos, int width, int height, float near, float far, int sh_degree, "
          "bool with_colors, Tensor? items=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
    m.def("preprocess_backward(Tensor means, Tensor quats, Tensor log_scales, Tensor opacity_logits, Tensor sh, "
          "Tensor viewmats, Tensor Ks, Tensor campos, int width, int height, int sh_degree, Tensor? v_means2d, "
          "Tensor? v_conics, Tensor? v_depths, Tensor? v_opacities, Tensor? v_colors) "
          "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
    m.def("bin_and_sort(Tensor means2d, Tensor conics, Tensor opacities, Tensor depths, Tensor radii, int width, "
          "int height, bool presorted=False) -> (Tensor, Tensor, Tensor)");
    m.def("blend_forward(Tensor means2d, Tensor conics, Tensor opacities, Tensor? colors, Tensor? depths, "
          "Tensor background, Tensor gaussian_ids, Tensor tile_offsets, int width, int height, "
          "bool save_for_backward) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
    m.def("blend_backward(Tensor means2d, Tensor conics, Tensor opacities, Tensor? colors, Tensor? depths, "
          "Tensor background, Tensor gaussian_ids, Tensor tile_offsets, int width, int height, Tensor? out_depth, "
          "Tensor out_T, Tensor out_last, Tensor seg_state, Tensor? v_image, Tensor? v_alpha, Tensor? v_depth) "
          "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
    // the viewer's display path (catch-all kernels: some take no tensor to dispatch on)
    m.def("display_pack(Tensor? image, Tensor? alpha, Tensor? depth, int mode, int layout, float[] depth_lo, "
          "float[] depth_span) -> Tensor", &gs::display_pack_op);
    m.def("display_pack_to(int address, int capacity, Tensor? image, Tensor? alpha, Tensor? depth, int mode, "
          "int layout, float[] depth_lo, float[] depth_span) -> ()", &gs::display_pack_to_op);
    m.def("shared_allocate(int bytes, int device) -> (int, int, int, int)", &gs::shared_allocate_op);
    m.def("shared_free(int handle) -> ()", &gs::shared_free_op);
    m.def("gl_cuda_devices() -> (int, int[])", &gs::gl_cuda_devices_op);
    m.def("gl_register_image(int texture, int width, int height, int device) -> int", &gs::gl_register_image_op);
    m.def("gl_unregister_image(int handle) -> ()", &gs::gl_unregister_image_op);
    m.def("gl_write_display(int handle, Tensor? image, Tensor? alpha, Tensor? depth, int mode, int layout, "
          "float[] depth_lo, float[] depth_span) -> ()", &gs::gl_write_display_op);
}

TORCH_LIBRARY_IMPL(gscache, CUDA, m) {
    m.impl("preprocess_forward", &gs::preprocess_forward_op);
    m.impl("preprocess_backward", &gs::preprocess_backward_op);
    m.impl("bin_and_sort", &gs::bin_and_sort_op);
    m.impl("blend_forward", &gs::blend_forward_op);
    m.impl("blend_backward", &gs::blend_backward_op);
}
