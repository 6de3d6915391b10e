// Blend kernels: one 16x16 thread block per (camera, tile), one pixel per thread; the tile's Gaussians are
// staged through shared memory in batches of 256 with their base-2 footprints. The backward pass walks each tile back
// to front, rebuilding the transmittance by division, and reduces each Gaussian's gradient over the warp before one
// atomic add per value.
#include "blend.h"

namespace gs {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kBlockThreads = kTilePixels;  // 256
constexpr int kWarps = kBlockThreads / 32;   // 8 sub-tiles of 8 x 4 pixels
constexpr int kSubtilesX = kTileSize / kSubtileW;
static_assert(kSubtileW * kSubtileH == 32 && kSubtilesX * (kTileSize / kSubtileH) == kWarps, "sub-tile layout");

struct TilePixel {
    int cam, px, py, start, end;
    bool inside;
    float fx, fy;
};

__device__ TilePixel tile_pixel(int tiles_x, int tiles_y, int width, int height, const int* tile_offsets,
                                int range) {
    TilePixel t;
    const int tiles = tiles_x * tiles_y;
    t.cam = range / tiles;
    const int tile = range - t.cam * tiles;
    const int ty = tile / tiles_x, tx = tile - ty * tiles_x;
    // Warp w shades the 8 x 4 sub-tile (w % 2, w / 2) of the tile, lane l its pixel (l % 8, l / 8): compact
    // sub-tiles let the forward pass skip the Gaussians that miss a warp's pixels (footprint_misses_rect).
    const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
    t.px = tx * kTileSize + (warp % kSubtilesX) * kSubtileW + lane % kSubtileW;
    t.py = ty * kTileSize + (warp / kSubtilesX) * kSubtileH + lane / kSubtileW;
    t.inside = t.px < width && t.py < height;
    t.fx = static_cast<float>(t.px) + 0.5f;
    t.fy = static_cast<float>(t.py) + 0.5f;
    t.start = tile_offsets[range];
    t.end = tile_offsets[range + 1];
    return t;
}

// Which of the batch's entries touch each 8 x 4 sub-tile: the calling thread's entry (``cull``) is tested against the
// 8 sub-tile rectangles of the tile whose first pixel centre is (tile_x0, tile_y0); a ballot per rectangle gives
// word ``warp`` of every sub-tile's 256-bit mask ``hits[sub-tile][word]``. The caller synchronises before reading.
__device__ __forceinline__ void store_subtile_hits(const FootprintCull& cull, float tile_x0, float tile_y0, int warp,
                                                   int lane, unsigned (*hits)[kWarps]) {
#pragma unroll 1  // rolled: unrolling kept the cull state of all 8 tests live (40 -> 59 registers)
    for (int w = 0; w < kWarps; ++w) {
        const float x0 = tile_x0 + static_cast<float>((w % kSubtilesX) * kSubtileW);
        const float y0 = tile_y0 + static_cast<float>((w / kSubtilesX) * kSubtileH);
        const bool hit = !footprint_misses_rect(cull, x0, y0, x0 + (kSubtileW - 1), y0 + (kSubtileH - 1));
        const unsigned bits = __ballot_sync(kFullMask, hit);
        if (lane == 0) hits[w][warp] = bits;
    }
}

// Stages Gaussian g's features in this thread's shared-memory slot.
template <bool COLOR, bool DEPTH, typename Args>
__device__ __forceinline__ void load_gaussian(const Args& a, size_t g, float2* s_xy, float4* s_conop, float4* s_cd) {
    s_xy[threadIdx.x] = make_float2(a.means2d[2 * g], a.means2d[2 * g + 1]);
    s_conop[threadIdx.x] = make_float4(a.conics[3 * g], a.conics[3 * g + 1], a.conics[3 * g + 2], a.opacities[g]);
    float4 cd = make_float4(0.f, 0.f, 0.f, 0.f);
    if (COLOR) {
        cd.x = a.colors[3 * g];
        cd.y = a.colors[3 * g + 1];
        cd.z = a.colors[3 * g + 2];
    }
    if (DEPTH) cd.w = a.depths[g];
    s_cd[threadIdx.x] = cd;
}

// Per-Gaussian features as the forward kernel stages them (the footprint computed once per staging, not per pixel).
struct StagedGaussian {
    float4 a;  // mx, my, opacity, thr
    float4 b;  // A, B, Cq, depth
    float4 c;  // r, g, b, -
};

template <bool COLOR, bool DEPTH>
__device__ __forceinline__ StagedGaussian gather_gaussian(const BlendArgs& a, size_t g) {
    StagedGaussian s;
    const float op = a.opacities[g];
    const float2 xy = make_float2(a.means2d[2 * g], a.means2d[2 * g + 1]);
    const Footprint f = make_footprint(a.conics[3 * g], a.conics[3 * g + 1], a.conics[3 * g + 2], op);
    s.a = make_float4(xy.x, xy.y, op, f.thr);
    s.b = make_float4(f.A, f.B, f.Cq, DEPTH ? a.depths[g] : 0.f);
    s.c = COLOR ? make_float4(a.colors[3 * g], a.colors[3 * g + 1], a.colors[3 * g + 2], 0.f)
                : make_float4(0.f, 0.f, 0.f, 0.f);
    return s;
}

// Saves a pixel's running sums (transmittance, colour, depth) in slot ``slot`` of the segment state.
__device__ __forceinline__ void save_segment_state(float* seg_state, int slot, size_t pixels, size_t pix,
                                                   const PixelForward& st) {
    float* out = seg_state + static_cast<size_t>(slot) * kSegmentState * pixels + pix;
    out[0] = st.T;
    out[pixels] = st.c[0];
    out[2 * pixels] = st.c[1];
    out[3 * pixels] = st.c[2];
    out[4 * pixels] = st.d;
}

// Forward: one 16x16 block per (camera, tile), one pixel per thread; batches of 256 Gaussians staged in shared
// memory with their footprints (base-2 conic, alpha cut-off on the power), so that a sample costs two FMAs for the
// power and a compare before any exponential.
template <bool COLOR, bool DEPTH>
__global__ void __launch_bounds__(kBlockThreads, 6) blend_forward_kernel(const BlendArgs a) {
    const TilePixel tp = tile_pixel(a.tiles_x, a.tiles_y, a.width, a.height, a.tile_offsets,
                                    static_cast<int>(blockIdx.x));
    __shared__ float4 s_a[kBlockThreads];  // mx, my, opacity, thr
    __shared__ float4 s_b[kBlockThreads];  // A, B, Cq, depth
    __shared__ float4 s_c[kBlockThreads];  // r, g, b, -
    __shared__ unsigned s_hits[kWarps][kWarps];  // [sub-tile][word]: bit k % 32 of word k / 32 = batch entry k kept
    const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
    // The pixel-centre rectangle of each sub-tile is that of sub-tile 0 shifted by (w % 2 * 8, w / 2 * 4).
    const int tile = blockIdx.x % (a.tiles_x * a.tiles_y);
    const float tile_x0 = static_cast<float>((tile % a.tiles_x) * kTileSize) + 0.5f;
    const float tile_y0 = static_cast<float>((tile / a.tiles_x) * kTileSize) + 0.5f;
    const size_t cam_off = static_cast<size_t>(tp.cam) * a.N;
    const size_t pixels = static_cast<size_t>(a.C) * a.height * a.width;
    const size_t pix = (static_cast<size_t>(tp.cam) * a.height + tp.py) * a.width + tp.px;
    const int seg_len = a.seg_state != nullptr ? segment_length(tp.end - tp.start, a.segments) : 0;
    PixelForward st{1.f, {0.f, 0.f, 0.f}, 0.f};
    int last = 0;
    bool done = !tp.inside;
    for (int base = tp.start; base < tp.end; base += kBlockThreads) {
        if (__syncthreads_count(done) == kBlockThreads) break;
        // A segment boundary: what the segment in front of it leaves (its backward block starts from here). Ranges
        // whose pixels all stopped earlier never get here; their backward blocks start from the final state.
        if (seg_len > 0 && base > tp.start && (base - tp.start) % seg_len == 0 && tp.inside) {
            save_segment_state(a.seg_state, (base - tp.start) / seg_len - 1, pixels, pix, st);
        }
        const int j = base + static_cast<int>(threadIdx.x);
        FootprintCull cull{};
        cull.verdict = -1;  // past the range end: in no sub-tile
        if (j < tp.end) {
            const StagedGaussian g = gather_gaussian<COLOR, DEPTH>(a, cam_off + a.gaussian_ids[j]);
            s_a[threadIdx.x] = g.a;
            s_b[threadIdx.x] = g.b;
            if (COLOR) s_c[threadIdx.x] = g.c;
            cull = prepare_cull(Footprint{g.b.x, g.b.y, g.b.z, g.a.w}, g.a.x, g.a.y);
        }
        store_subtile_hits(cull, tile_x0, tile_y0, warp, lane, s_hits);
        __syncthreads();
        for (int word = 0; !done && word < kWarps; ++word) {
            unsigned bits = s_hits[warp][word];
            while (bits != 0u) {
                const int k = word * 32 + __ffs(bits) - 1;
                bits &= bits - 1u;
                const float4 ga = s_a[k];
                const float4 gb = s_b[k];
                const float dx = tp.fx - ga.x;
                const float p2 =
                    power2_hoisted(gb.z, mul_rn(gb.y, dx), mul_rn(mul_rn(gb.x, dx), dx), tp.fy - ga.y);
                float alpha, e;
                bool clamped;
                if (!alpha_from_power2(p2, ga.z, ga.w, alpha, e, clamped)) continue;
                const float test_T = st.T * (1.f - alpha);
                if (test_T < kTransmittanceMin) {
                    done = true;
                    break;
                }
                const float w = alpha * st.T;
                if (COLOR) {
                    const float4 gc = s_c[k];
                    st.c[0] += w * gc.x;
                    st.c[1] += w * gc.y;
                    st.c[2] += w * gc.z;
                }
                if (DEPTH) st.d += w * gb.w;
                st.T = test_T;
                last = base - tp.start + k + 1;
            }
        }
    }
    if (!tp.inside) return;
    if (a.seg_state != nullptr) save_segment_state(a.seg_state, a.segments - 1, pixels, pix, st);
    const float acc = 1.f - st.T;
    a.out_alpha[pix] = acc;
    if (COLOR) {
        const float* bg = a.background + 3 * tp.cam;
        a.out_image[3 * pix] = st.c[0] + st.T * bg[0];
        a.out_image[3 * pix + 1] = st.c[1] + st.T * bg[1];
        a.out_image[3 * pix + 2] = st.c[2] + st.T * bg[2];
    }
    if (DEPTH) a.out_depth[pix] = acc > 0.f ? st.d / fmaxf(acc, 1e-10f) : 0.f;
    if (a.out_T) a.out_T[pix] = st.T;
    if (a.out_last) a.out_last[pix] = last;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
    return v;
}

template <bool COLOR, bool DEPTH>
__global__ void __launch_bounds__(kBlockThreads) blend_backward_kernel(const BlendBackwardArgs a) {
    // Block = (segment, range): the segment's entries [seg_lo, seg_hi) of the range, back to front.
    const int ranges = a.C * a.tiles_x * a.tiles_y;
    const int segment = static_cast<int>(blockIdx.x) / ranges;
    const int range = static_cast<int>(blockIdx.x) - segment * ranges;
    const TilePixel tp = tile_pixel(a.tiles_x, a.tiles_y, a.width, a.height, a.tile_offsets, range);
    const int seg_len = a.segments > 1 ? segment_length(tp.end - tp.start, a.segments) : tp.end - tp.start;
    const int seg_lo = tp.start + segment * seg_len;
    if (seg_lo >= tp.end) return;  // (the whole block: an empty segment)
    const int seg_hi = min(tp.end, seg_lo + seg_len);
    __shared__ int s_id[kBlockThreads];
    __shared__ float2 s_xy[kBlockThreads];
    __shared__ float4 s_conop[kBlockThreads];
    __shared__ float4 s_cd[kBlockThreads];
    __shared__ float4 s_fp[kBlockThreads];  // A, B, Cq, thr
    __shared__ unsigned s_hits[kWarps][kWarps];  // as in the forward kernel
    __shared__ int s_max_last;
    const size_t cam_off = static_cast<size_t>(tp.cam) * a.N;
    const size_t pix = (static_cast<size_t>(tp.cam) * a.height + tp.py) * a.width + tp.px;
    const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
    const int tile = range % (a.tiles_x * a.tiles_y);
    const float tile_x0 = static_cast<float>((tile % a.tiles_x) * kTileSize) + 0.5f;
    const float tile_y0 = static_cast<float>((tile / a.tiles_x) * kTileSize) + 0.5f;

    PixelBackward st{};
    int last = 0;
    if (tp.inside) {
        last = a.out_last[pix];
        pixel_cotangents(a.out_T[pix], COLOR && a.v_image ? a.v_image + 3 * pix : nullptr,
                         a.background + 3 * tp.cam, a.v_alpha ? a.v_alpha + pix : nullptr,
                         DEPTH && a.v_depth ? a.v_depth + pix : nullptr, DEPTH ? a.out_depth[pix] : 0.f, st);
        if (seg_hi - tp.start < last) {  // entries behind this segment were kept: start from the saved boundary
            const size_t pixels = static_cast<size_t>(a.C) * a.height * a.width;
            const float* b = a.seg_state + static_cast<size_t>(segment) * kSegmentState * pixels + pix;
            const float* f = a.seg_state + static_cast<size_t>(a.segments - 1) * kSegmentState * pixels + pix;
            st.T = b[0];
            GS_UNROLL
            for (int ch = 0; ch < 3; ++ch) st.SC[ch] = f[(ch + 1) * pixels] - b[(ch + 1) * pixels];
            st.SD = f[4 * pixels] - b[4 * pixels];
        }
    }
    if (threadIdx.x == 0) s_max_last = 0;
    __syncthreads();
    atomicMax(&s_max_last, last);
    __syncthreads();
    const int range_end = min(seg_hi, tp.start + s_max_last);

    for (int top = range_end; top > seg_lo; top -= kBlockThreads) {
        const int lo = max(seg_lo, top - kBlockThreads);
        __syncthreads();  // the previous batch is consumed
        const int j = lo + static_cast<int>(threadIdx.x);
        FootprintCull cull{};
        cull.verdict = -1;
        if (j < top) {
            const int id = a.gaussian_ids[j];
            s_id[threadIdx.x] = id;
            load_gaussian<COLOR, DEPTH>(a, cam_off + id, s_xy, s_conop, s_cd);
            const float4 co = s_conop[threadIdx.x];
            const Footprint f = make_footprint(co.x, co.y, co.z, co.w);
            s_fp[threadIdx.x] = make_float4(f.A, f.B, f.Cq, f.thr);
            cull = prepare_cull(f, s_xy[threadIdx.x].x, s_xy[threadIdx.x].y);
        }
        store_subtile_hits(cull, tile_x0, tile_y0, warp, lane, s_hits);
        __syncthreads();
        // Back to front; entries that miss this warp's sub-tile are skipped at all of its pixels.
        for (int k = top - lo - 1; k >= 0; --k) {
            if (((s_hits[warp][k >> 5] >> (k & 31)) & 1u) == 0u) continue;
            const int rel = lo - tp.start + k;  // index of this entry in the tile's range
            const float2 xy = s_xy[k];
            const float4 co = s_conop[k];
            const float4 cd = s_cd[k];
            const float4 fp = s_fp[k];
            const Footprint f{fp.x, fp.y, fp.z, fp.w};
            SampleGrad gr;
            const bool valid =
                rel < last && blend_backward_sample<COLOR, DEPTH>(f, co.x, co.y, co.z, co.w, xy.x, xy.y, cd.x, cd.y,
                                                                  cd.z, cd.w, tp.fx, tp.fy, st, gr);
            if (!__any_sync(kFullMask, valid)) continue;
            if (!valid) gr = SampleGrad{0.f, 0.f, 0.f, 0.f, 0.f, 0.f, {0.f, 0.f, 0.f}, 0.f};
            gr.mx = warp_sum(gr.mx);
            gr.my = warp_sum(gr.my);
            gr.ca = warp_sum(gr.ca);
            gr.cb = warp_sum(gr.cb);
            gr.cc = warp_sum(gr.cc);
            gr.op = warp_sum(gr.op);
            if (COLOR) {
#pragma unroll
                for (int ch = 0; ch < 3; ++ch) gr.c[ch] = warp_sum(gr.c[ch]);
            }
            if (DEPTH) gr.d = warp_sum(gr.d);
            if (lane == 0) {
                const size_t gi = cam_off + s_id[k];
                atomicAdd(a.v_means2d + 2 * gi, gr.mx);
                atomicAdd(a.v_means2d + 2 * gi + 1, gr.my);
                atomicAdd(a.v_conics + 3 * gi, gr.ca);
                atomicAdd(a.v_conics + 3 * gi + 1, gr.cb);
                atomicAdd(a.v_conics + 3 * gi + 2, gr.cc);
                atomicAdd(a.v_opacities + gi, gr.op);
                if (COLOR) {
#pragma unroll
                    for (int ch = 0; ch < 3; ++ch) atomicAdd(a.v_colors + 3 * gi + ch, gr.c[ch]);
                }
                if (DEPTH) atomicAdd(a.v_depths + gi, gr.d);
            }
        }
    }
}

template <bool COLOR, bool DEPTH>
cudaError_t launch_forward(const BlendArgs& a, cudaStream_t stream) {
    const int blocks = a.C * a.tiles_x * a.tiles_y;
    blend_forward_kernel<COLOR, DEPTH><<<blocks, kBlockThreads, 0, stream>>>(a);
    return cudaGetLastError();
}

template <bool COLOR, bool DEPTH>
cudaError_t launch_backward(const BlendBackwardArgs& a, cudaStream_t stream) {
    const int blocks = a.C * a.tiles_x * a.tiles_y * (a.segments > 1 ? a.segments : 1);
    blend_backward_kernel<COLOR, DEPTH><<<blocks, kBlockThreads, 0, stream>>>(a);
    return cudaGetLastError();
}

}  // namespace

Status blend_forward(const BlendArgs& a, void* stream_ptr) {
    const auto stream = static_cast<cudaStream_t>(stream_ptr);
    if (a.C == 0 || a.tiles_x == 0 || a.tiles_y == 0) return 0;
    const bool color = a.colors != nullptr, depth = a.depths != nullptr;
    if (color && depth) return launch_forward<true, true>(a, stream);
    if (color) return launch_forward<true, false>(a, stream);
    if (depth) return launch_forward<false, true>(a, stream);
    return launch_forward<false, false>(a, stream);
}

Status blend_backward(const BlendBackwardArgs& a, void* stream_ptr) {
    const auto stream = static_cast<cudaStream_t>(stream_ptr);
    if (a.C == 0 || a.tiles_x == 0 || a.tiles_y == 0) return 0;
    const bool color = a.colors != nullptr, depth = a.depths != nullptr;
    if (color && depth) return launch_backward<true, true>(a, stream);
    if (color) return launch_backward<true, false>(a, stream);
    if (depth) return launch_backward<false, true>(a, stream);
    return launch_backward<false, false>(a, stream);
}

}  // namespace gs
