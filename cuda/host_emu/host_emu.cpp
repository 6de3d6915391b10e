// CPU emulation of the native rasterizer (plain C++: the shared headers compile without CUDA), built from the same per-element __host__ __device__ functions as the
// kernels (preprocess, tile tests, per-sample blend steps). It lets CPU-only machines check the math against the
// PyTorch reference (tests/test_native.py loads it with ctypes); it is not used for rendering.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../csrc/binning.h"
#include "../csrc/blend.h"
#include "../csrc/preprocess.h"

using namespace gs;

namespace {

BinArgs bin_args(const int* ints, const float* const* in, const int* radii) {
    // ints: C, N, W, H; in: means2d, conics, opacities, depths
    BinArgs a{};
    a.C = ints[0];
    a.N = ints[1];
    a.width = ints[2];
    a.height = ints[3];
    a.tiles_x = (a.width + kTileSize - 1) / kTileSize;
    a.tiles_y = (a.height + kTileSize - 1) / kTileSize;
    a.means2d = in[0];
    a.conics = in[1];
    a.opacities = in[2];
    a.depths = in[3];
    a.radii = radii;
    return a;
}

// Whether the kernels' sub-tile culling skips footprint f (centre mx, my) for the warp that shades pixel (px, py).
bool subtile_skips(const Footprint& f, float mx, float my, int px, int py) {
    const float x0 = static_cast<float>(px - px % kSubtileW) + 0.5f;
    const float y0 = static_cast<float>(py - py % kSubtileH) + 0.5f;
    return footprint_misses_rect(prepare_cull(f, mx, my), x0, y0, x0 + (kSubtileW - 1), y0 + (kSubtileH - 1));
}

template <bool COLOR, bool DEPTH>
void blend_forward_host(const BlendArgs& a) {
    for (int c = 0; c < a.C; ++c) {
        for (int py = 0; py < a.height; ++py) {
            for (int px = 0; px < a.width; ++px) {
                const int range = (c * a.tiles_y + py / kTileSize) * a.tiles_x + px / kTileSize;
                const int start = a.tile_offsets[range], end = a.tile_offsets[range + 1];
                const float fx = px + 0.5f, fy = py + 0.5f;
                PixelForward st{1.f, {0.f, 0.f, 0.f}, 0.f};
                int last = 0;
                for (int j = start; j < end; ++j) {
                    const size_t g = static_cast<size_t>(c) * a.N + a.gaussian_ids[j];
                    const float* col = COLOR ? a.colors + 3 * g : nullptr;
                    const Footprint f = make_footprint(a.conics[3 * g], a.conics[3 * g + 1], a.conics[3 * g + 2],
                                                       a.opacities[g]);
                    if (subtile_skips(f, a.means2d[2 * g], a.means2d[2 * g + 1], px, py)) continue;
                    const SampleResult res = blend_forward_sample<COLOR, DEPTH>(
                        f, a.opacities[g], a.means2d[2 * g],
                        a.means2d[2 * g + 1], COLOR ? col[0] : 0.f, COLOR ? col[1] : 0.f, COLOR ? col[2] : 0.f,
                        DEPTH ? a.depths[g] : 0.f, fx, fy, st);
                    if (res == kStop) break;
                    if (res == kKept) last = j - start + 1;
                }
                const size_t pix = (static_cast<size_t>(c) * a.height + py) * a.width + px;
                const float acc = 1.f - st.T;
                a.out_alpha[pix] = acc;
                if (COLOR) {
                    for (int ch = 0; ch < 3; ++ch) a.out_image[3 * pix + ch] = st.c[ch] + st.T * a.background[3 * c + ch];
                }
                if (DEPTH) a.out_depth[pix] = acc > 0.f ? st.d / fmaxf(acc, 1e-10f) : 0.f;
                a.out_T[pix] = st.T;
                a.out_last[pix] = last;
            }
        }
    }
}

template <bool COLOR, bool DEPTH>
void blend_backward_host(const BlendBackwardArgs& a) {
    for (int c = 0; c < a.C; ++c) {
        for (int py = 0; py < a.height; ++py) {
            for (int px = 0; px < a.width; ++px) {
                const int range = (c * a.tiles_y + py / kTileSize) * a.tiles_x + px / kTileSize;
                const int start = a.tile_offsets[range];
                const size_t pix = (static_cast<size_t>(c) * a.height + py) * a.width + px;
                PixelBackward st{};
                pixel_cotangents(a.out_T[pix], COLOR && a.v_image ? a.v_image + 3 * pix : nullptr,
                                 a.background + 3 * c, a.v_alpha ? a.v_alpha + pix : nullptr,
                                 DEPTH && a.v_depth ? a.v_depth + pix : nullptr, DEPTH ? a.out_depth[pix] : 0.f, st);
                const float fx = px + 0.5f, fy = py + 0.5f;
                for (int j = start + a.out_last[pix] - 1; j >= start; --j) {
                    const size_t g = static_cast<size_t>(c) * a.N + a.gaussian_ids[j];
                    const float* col = COLOR ? a.colors + 3 * g : nullptr;
                    SampleGrad gr;
                    const Footprint f = make_footprint(a.conics[3 * g], a.conics[3 * g + 1], a.conics[3 * g + 2],
                                                       a.opacities[g]);
                    if (subtile_skips(f, a.means2d[2 * g], a.means2d[2 * g + 1], px, py)) continue;
                    if (!blend_backward_sample<COLOR, DEPTH>(
                            f, a.conics[3 * g], a.conics[3 * g + 1], a.conics[3 * g + 2], a.opacities[g],
                            a.means2d[2 * g], a.means2d[2 * g + 1], COLOR ? col[0] : 0.f, COLOR ? col[1] : 0.f,
                            COLOR ? col[2] : 0.f, DEPTH ? a.depths[g] : 0.f, fx, fy, st, gr)) {
                        continue;
                    }
                    a.v_means2d[2 * g] += gr.mx;
                    a.v_means2d[2 * g + 1] += gr.my;
                    a.v_conics[3 * g] += gr.ca;
                    a.v_conics[3 * g + 1] += gr.cb;
                    a.v_conics[3 * g + 2] += gr.cc;
                    a.v_opacities[g] += gr.op;
                    if (COLOR) {
                        for (int ch = 0; ch < 3; ++ch) a.v_colors[3 * g + ch] += gr.c[ch];
                    }
                    if (DEPTH) a.v_depths[g] += gr.d;
                }
            }
        }
    }
}

template <typename Args>
void fill_blend(Args& a, const int* ints, const float* const* in, const int* ids, const int* offsets) {
    // ints: C, N, W, H; in: means2d, conics, opacities, colors|null, depths|null, background
    a.C = ints[0];
    a.N = ints[1];
    a.width = ints[2];
    a.height = ints[3];
    a.tiles_x = (a.width + kTileSize - 1) / kTileSize;
    a.tiles_y = (a.height + kTileSize - 1) / kTileSize;
    a.means2d = in[0];
    a.conics = in[1];
    a.opacities = in[2];
    a.colors = in[3];
    a.depths = in[4];
    a.background = in[5];
    a.gaussian_ids = ids;
    a.tile_offsets = offsets;
}

}  // namespace

extern "C" {

// ints: C, N, K, degree, W, H; floats: near, far; in: means, quats, log_scales, opacity_logits, sh, viewmats, Ks,
// campos; out: means2d, conics, depths, opacities, colors|null.
void gs_host_preprocess_forward(const int* ints, const float* floats, const float* const* in, float* const* out,
                                int* radii) {
    PreprocessArgs a{};
    a.C = ints[0];
    a.N = ints[1];
    a.K = ints[2];
    a.degree = ints[3];
    a.width = ints[4];
    a.height = ints[5];
    a.near_plane = floats[0];
    a.far_plane = floats[1];
    a.means = in[0];
    a.quats = in[1];
    a.log_scales = in[2];
    a.opacity_logits = in[3];
    a.sh = in[4];
    a.viewmats = in[5];
    a.Ks = in[6];
    a.campos = in[7];
    a.means2d = out[0];
    a.conics = out[1];
    a.depths = out[2];
    a.opacities = out[3];
    a.colors = out[4];
    a.radii = radii;
    for (int c = 0; c < a.C; ++c) {
        for (int n = 0; n < a.N; ++n) preprocess_forward_one(a, c, n);
    }
}

// ints as above; in as above; grads: v_means2d, v_conics, v_depths, v_opacities, v_colors (each may be null);
// out: v_means, v_quats, v_log_scales, v_opacity_logits, v_sh.
void gs_host_preprocess_backward(const int* ints, const float* const* in, const float* const* grads,
                                 float* const* out) {
    PreprocessBackwardArgs a{};
    a.C = ints[0];
    a.N = ints[1];
    a.K = ints[2];
    a.degree = ints[3];
    a.width = ints[4];
    a.height = ints[5];
    a.means = in[0];
    a.quats = in[1];
    a.log_scales = in[2];
    a.opacity_logits = in[3];
    a.sh = in[4];
    a.viewmats = in[5];
    a.Ks = in[6];
    a.campos = in[7];
    a.v_means2d = grads[0];
    a.v_conics = grads[1];
    a.v_depths = grads[2];
    a.v_opacities = grads[3];
    a.v_colors = grads[4];
    a.v_means = out[0];
    a.v_quats = out[1];
    a.v_log_scales = out[2];
    a.v_opacity_logits = out[3];
    a.v_sh = out[4];
    for (int n = 0; n < a.N; ++n) preprocess_backward_one(a, n);
}

// Number of (tile, Gaussian) pairs. ints: C, N, W, H; in: means2d, conics, opacities, depths.
int gs_host_bin_count(const int* ints, const float* const* in, const int* radii) {
    const BinArgs a = bin_args(ints, in, radii);
    int total = 0;
    for (int i = 0; i < a.C * a.N; ++i) {
        TileBox box;
        if (!tile_box(a, i, box)) continue;
        for (int k = 0; k < box.area; ++k) {
            int tile;
            total += tile_hit(a, box, k, tile) ? 1 : 0;
        }
    }
    return total;
}

// Sorted pairs: ids [P], offsets [C * tiles + 1].
void gs_host_bin_emit(const int* ints, const float* const* in, const int* radii, int* ids, int* offsets) {
    const BinArgs a = bin_args(ints, in, radii);
    std::vector<std::pair<uint64_t, int>> pairs;
    for (int i = 0; i < a.C * a.N; ++i) {
        TileBox box;
        if (!tile_box(a, i, box)) continue;
        const int cam = i / a.N;
        for (int k = 0; k < box.area; ++k) {
            int tile;
            if (tile_hit(a, box, k, tile)) {
                pairs.emplace_back(pair_key(cam * a.tiles_x * a.tiles_y + tile, a.depths[i]), i - cam * a.N);
            }
        }
    }
    std::stable_sort(pairs.begin(), pairs.end(),
                     [](const auto& l, const auto& r) { return l.first < r.first; });
    const int ranges = a.C * a.tiles_x * a.tiles_y;
    size_t p = 0;
    for (int t = 0; t <= ranges; ++t) {
        while (p < pairs.size() && static_cast<int64_t>(pairs[p].first >> 32) < t) ++p;
        offsets[t] = static_cast<int>(p);
    }
    for (size_t q = 0; q < pairs.size(); ++q) ids[q] = pairs[q].second;
}

// ints: C, N, W, H; in: means2d, conics, opacities, colors|null, depths|null, background;
// out: image|null, alpha, depth|null, T; last.
void gs_host_blend_forward(const int* ints, const float* const* in, const int* ids, const int* offsets,
                           float* const* out, int* last) {
    BlendArgs a{};
    fill_blend(a, ints, in, ids, offsets);
    a.out_image = out[0];
    a.out_alpha = out[1];
    a.out_depth = out[2];
    a.out_T = out[3];
    a.out_last = last;
    const bool color = a.colors != nullptr, depth = a.depths != nullptr;
    if (color && depth) blend_forward_host<true, true>(a);
    else if (color) blend_forward_host<true, false>(a);
    else if (depth) blend_forward_host<false, true>(a);
    else blend_forward_host<false, false>(a);
}

// saved: out_depth|null, T; cot: v_image|null, v_alpha|null, v_depth|null;
// out (zeroed by the caller): v_means2d, v_conics, v_opacities, v_colors|null, v_depths|null.
void gs_host_blend_backward(const int* ints, const float* const* in, const int* ids, const int* offsets,
                            const float* const* saved, const int* last, const float* const* cot, float* const* out) {
    BlendBackwardArgs a{};
    fill_blend(a, ints, in, ids, offsets);
    a.out_depth = saved[0];
    a.out_T = saved[1];
    a.out_last = last;
    a.v_image = cot[0];
    a.v_alpha = cot[1];
    a.v_depth = cot[2];
    a.v_means2d = out[0];
    a.v_conics = out[1];
    a.v_opacities = out[2];
    a.v_colors = out[3];
    a.v_depths = out[4];
    const bool color = a.colors != nullptr, depth = a.depths != nullptr;
    if (color && depth) blend_backward_host<true, true>(a);
    else if (color) blend_backward_host<true, false>(a);
    else if (depth) blend_backward_host<false, true>(a);
    else blend_backward_host<false, false>(a);
}

// Sub-tile culling check, for each of n (footprint, rectangle) cases. fp: n x (conic a, b, c, opacity, mx, my);
// rect: n x (x0, y0) first pixel of an 8 x 4 sub-tile. out: n x (culled, pixels the per-pixel test keeps).
void gs_host_subtile_cull(int n, const float* fp, const int* rect, int* out) {
    for (int i = 0; i < n; ++i) {
        const float* g = fp + 6 * i;
        const Footprint f = make_footprint(g[0], g[1], g[2], g[3]);
        const int px0 = rect[2 * i], py0 = rect[2 * i + 1];
        const float x0 = static_cast<float>(px0) + 0.5f, y0 = static_cast<float>(py0) + 0.5f;
        out[2 * i] = footprint_misses_rect(prepare_cull(f, g[4], g[5]), x0, y0, x0 + (kSubtileW - 1),
                                           y0 + (kSubtileH - 1)) ? 1 : 0;
        int kept = 0;
        for (int y = py0; y < py0 + kSubtileH; ++y) {
            for (int x = px0; x < px0 + kSubtileW; ++x) {
                const float dx = (static_cast<float>(x) + 0.5f) - g[4], dy = (static_cast<float>(y) + 0.5f) - g[5];
                float alpha, e;
                bool clamped;
                kept += alpha_from_power2(power2(f, dx, dy), g[3], f.thr, alpha, e, clamped) ? 1 : 0;
            }
        }
        out[2 * i + 1] = kept;
    }
}

}  // extern "C"
