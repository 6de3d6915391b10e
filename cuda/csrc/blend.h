// Blend stage: per-tile front-to-back alpha blending of the sorted (tile, Gaussian) pairs, and its backward pass.
// Mirrors renderer/_torch_impl.py::_blend: alpha = min(0.99, o exp(power)), skipped under 1/255 or where
// power > 0, and each pixel stops before its transmittance would fall under 1e-4.
#pragma once

#include "project_math.h"

namespace gs {

struct BlendArgs {
    int C, N;
    int width, height;
    int tiles_x, tiles_y;
    const float* means2d;       // [C, N, 2]
    const float* conics;        // [C, N, 3]
    const float* opacities;     // [C, N]
    const float* colors;        // [C, N, 3] or nullptr (no colour output)
    const float* depths;        // [C, N] or nullptr (no depth output)
    const float* background;    // [C, 3] (used with colors)
    const int* gaussian_ids;    // [P]
    const int* tile_offsets;    // [C * tiles_y * tiles_x + 1]
    // outputs
    float* out_image;  // [C, H, W, 3] (with colors)
    float* out_alpha;  // [C, H, W]
    float* out_depth;  // [C, H, W] (with depths)
    float* out_T;      // [C, H, W] final transmittance, or nullptr (inference)
    int* out_last;     // [C, H, W] number of range entries up to the last kept one, or nullptr (inference)
    // Segmented backward (see segment_length): the pixel state at each segment boundary, [segments, 5, C, H, W]
    // (slot s < segments - 1: transmittance, colour and depth sums in front of boundary s + 1; the last slot: the
    // final sums), or nullptr with segments <= 1.
    float* seg_state;
    int segments;
};

struct BlendBackwardArgs {
    int C, N;
    int width, height;
    int tiles_x, tiles_y;
    const float* means2d;
    const float* conics;
    const float* opacities;
    const float* colors;       // or nullptr
    const float* depths;       // or nullptr
    const float* background;   // [C, 3]
    const int* gaussian_ids;
    const int* tile_offsets;
    const float* out_depth;    // [C, H, W] forward depth output (with depths)
    const float* out_T;        // [C, H, W]
    const int* out_last;       // [C, H, W]
    const float* v_image;      // [C, H, W, 3] or nullptr
    const float* v_alpha;      // [C, H, W] or nullptr
    const float* v_depth;      // [C, H, W] or nullptr
    const float* seg_state;    // the forward's boundary states, or nullptr
    int segments;              // segments per tile range (1: the whole range in one block)
    // outputs, accumulated (zero them first)
    float* v_means2d;    // [C, N, 2]
    float* v_conics;     // [C, N, 3]
    float* v_opacities;  // [C, N]
    float* v_colors;     // [C, N, 3] or nullptr
    float* v_depths;     // [C, N] or nullptr
};

// Segmented backward: each tile's range of n entries is cut into ``segments`` pieces of this many entries (whole
// batches of 256), each walked back to front by its own block from the pixel state that the forward pass saved at
// the piece's far boundary. Small images (few tiles, long ranges: training at 200 x 200) then fill the GPU; with
// one segment the backward pass is the classic one.
constexpr int kSegmentState = 5;  // T, colour sum (3), depth sum
GS_HD int segment_length(int n, int segments) {
    const int per = (n + segments - 1) / segments;
    const int len = (per + kTilePixels - 1) / kTilePixels * kTilePixels;
    return len > kTilePixels ? len : kTilePixels;
}

GS_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

GS_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

GS_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    return __fmaf_rn(a, b, c);
#else
    return fmaf(a, b, c);
#endif
}

GS_HD float fast_exp2(float x) {
#if defined(__CUDA_ARCH__)
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

constexpr float kLog2e = 1.4426950408889634f;

// One Gaussian's footprint as the blend evaluates it (FlashGS-style): the conic pre-multiplied by -0.5 log2(e) so
// that the power comes out in base 2 from two FMAs, and the alpha >= 1/255 test moved onto the power (``thr``), so
// that samples under the cut-off need no exponential.
struct Footprint {
    float A, B, Cq;  // power2 = A dx^2 + B dx dy + Cq dy^2 = log2(e) * (-0.5 (a dx^2 + c dy^2) - b dx dy)
    float thr;       // log2(1/255 / opacity): samples with power2 < thr are skipped
};

GS_HD Footprint make_footprint(float ca, float cb, float cc, float opacity) {
    Footprint f;
    f.A = mul_rn(ca, -0.5f * kLog2e);
    f.B = mul_rn(cb, -kLog2e);
    f.Cq = mul_rn(cc, -0.5f * kLog2e);
    f.thr = opacity > 0.f ? log2f(kAlphaMin / opacity) : INFINITY;
    return f;
}

// The base-2 power at offset (dx, dy), rounded the same way everywhere (explicit roundings, no contraction), so
// that the forward and backward kernels take the same skip and stop decisions. ``bdx`` = mul_rn(B, dx) and
// ``adx2`` = mul_rn(mul_rn(A, dx), dx) may be computed once per pixel column.
GS_HD float power2_hoisted(float Cq, float bdx, float adx2, float dy) { return fma_rn(fma_rn(Cq, dy, bdx), dy, adx2); }

GS_HD float power2(const Footprint& f, float dx, float dy) {
    return power2_hoisted(f.Cq, mul_rn(f.B, dx), mul_rn(mul_rn(f.A, dx), dx), dy);
}

// alpha of one sample from its base-2 power; false where it is skipped (power > 0 or under the 1/255 cut-off).
// ``g`` receives exp(power) and ``clamped`` whether alpha hit the 0.99 clamp.
GS_HD bool alpha_from_power2(float p2, float opacity, float thr, float& alpha, float& g, bool& clamped) {
    if (p2 > 0.f || p2 < thr) return false;
    g = fast_exp2(p2);
    const float raw = mul_rn(opacity, g);
    clamped = raw > kAlphaMax;
    alpha = clamped ? kAlphaMax : raw;
    return true;
}

// Sub-tile culling (forward blend): each warp of a tile's block shades an 8 x 4 pixel rectangle, and skips the
// Gaussians of a batch whose footprint misses its rectangle, where every pixel would take the cut-off path anyway.
// The test must never drop a sample the per-pixel test keeps, so it is conservative with margins above the float
// rounding of ``power2`` (a few ulp of the terms' magnitude S): the same pixels are blended, the image is unchanged.
constexpr int kSubtileW = 8, kSubtileH = 4;

// A footprint prepared for rectangle tests: -power2 = a dx^2 + 2 b dx dy + c dy^2 (positive definite for a
// projected conic); a sample is kept where -power2 <= t = -thr.
struct FootprintCull {
    float mx, my;
    float a, b, c, t;
    float ex, ey;  // half extents of the bounding box of the (widened) kept ellipse
    int verdict;   // 1: keep for every rectangle (NaN, not positive definite), -1: skip everywhere, 0: test
};

GS_HD FootprintCull prepare_cull(const Footprint& f, float mx, float my) {
    FootprintCull q;
    q.mx = mx;
    q.my = my;
    q.a = -f.A;
    q.b = -0.5f * f.B;
    q.c = -f.Cq;
    q.t = -f.thr;
    q.ex = q.ey = 0.f;
    q.verdict = 0;
    const float det = q.a * q.c - q.b * q.b;
    if (f.thr > 0.f) {  // opacity under 1/255 (or 0): power2 <= 0 < thr at every pixel
        q.verdict = -1;
    } else if (!(q.a > 0.f && q.c > 0.f && det > 0.f && f.thr <= 0.f && finite(mx) && finite(my))) {
        q.verdict = 1;
    } else {
        // Widen the ellipse by the rounding of power2 at its boundary (at most ~ 2 cond t ulp, cond <= sum^2/det).
        const float sum = q.a + q.c + 2.f * fabsf(q.b);
        const float tw = q.t * (1.f + 4e-6f * (sum * sum / det)) + 1e-5f;
        q.ex = sqrtf(tw * q.c / det) * 1.0001f + 1e-3f;
        q.ey = sqrtf(tw * q.a / det) * 1.0001f + 1e-3f;
        if (!(q.ex < INFINITY && q.ey < INFINITY)) q.verdict = 1;
    }
    return q;
}

// Whether the footprint skips every pixel centre of [x0, x1] x [y0, y1] (pixel-centre coordinates).
GS_HD bool footprint_misses_rect(const FootprintCull& q, float x0, float y0, float x1, float y1) {
    if (q.verdict != 0) return q.verdict < 0;
    const float lox = x0 - q.mx, hix = x1 - q.mx, loy = y0 - q.my, hiy = y1 - q.my;
    if (lox > q.ex || -hix > q.ex || loy > q.ey || -hiy > q.ey) return true;  // outside the bounding box
    const float Mx = fmaxf(fabsf(lox), fabsf(hix)), My = fmaxf(fabsf(loy), fabsf(hiy));
    const float S = q.a * Mx * Mx + 2.f * fabsf(q.b) * Mx * My + q.c * My * My;  // bounds the terms' magnitude
    return min_power_over_rect(q.a, q.b, q.c, lox, loy, hix, hiy) > q.t + 1e-6f * S + 1e-5f * (1.f + q.t);
}

// Running state of one pixel in the forward pass.
struct PixelForward {
    float T;     // transmittance so far
    float c[3];  // accumulated colour
    float d;     // accumulated depth
};

enum SampleResult { kSkipped = 0, kKept = 1, kStop = 2 };

// One front-to-back step: Gaussian (footprint f, opacity op, centre mx, my, colour rgb, depth) at the pixel
// centre (fx, fy). kStop: the pixel is done, this Gaussian is not blended.
template <bool COLOR, bool DEPTH>
GS_HD SampleResult blend_forward_sample(const Footprint& f, float op, float mx, float my, float r, float g, float b,
                                        float depth, float fx, float fy, PixelForward& st) {
    float alpha, e;
    bool clamped;
    if (!alpha_from_power2(power2(f, fx - mx, fy - my), op, f.thr, alpha, e, clamped)) return kSkipped;
    const float test_T = st.T * (1.f - alpha);
    if (test_T < kTransmittanceMin) return kStop;
    const float w = alpha * st.T;
    if (COLOR) {
        st.c[0] += w * r;
        st.c[1] += w * g;
        st.c[2] += w * b;
    }
    if (DEPTH) st.d += w * depth;
    st.T = test_T;
    return kKept;
}

// Running state of one pixel in the backward pass (walking back to front).
struct PixelBackward {
    float T;        // transmittance behind the current Gaussian (starts at the final one)
    float T_final;  // final transmittance
    float vC[3];    // cotangent of the accumulated colour
    float vD;       // cotangent of the accumulated depth
    float vT;       // cotangent of the final transmittance
    float SC[3];    // colour accumulated behind the current Gaussian
    float SD;       // depth accumulated behind the current Gaussian
};

// Gradient of one Gaussian's sample at one pixel.
struct SampleGrad {
    float mx, my, ca, cb, cc, op, c[3], d;
};

// One back-to-front step for a Gaussian that the forward pass kept at this pixel (rel < last); false where the
// forward pass skipped it (then ``grad`` is zero and the state is unchanged).
// ``f`` is make_footprint(ca, cb, cc, op).
template <bool COLOR, bool DEPTH>
GS_HD bool blend_backward_sample(const Footprint& f, float ca, float cb, float cc, float op, float mx, float my,
                                 float r, float g, float b, float depth, float fx, float fy, PixelBackward& st,
                                 SampleGrad& grad) {
    grad = SampleGrad{0.f, 0.f, 0.f, 0.f, 0.f, 0.f, {0.f, 0.f, 0.f}, 0.f};
    const float dx = fx - mx, dy = fy - my;
    float alpha, e;
    bool clamped;
    if (!alpha_from_power2(power2(f, dx, dy), op, f.thr, alpha, e, clamped)) return false;
    const float ra = 1.f / (1.f - alpha);
    st.T *= ra;  // transmittance in front of this Gaussian
    const float w = alpha * st.T;
    float v_alpha = -st.vT * st.T_final * ra;
    if (COLOR) {
        const float c[3] = {r, g, b};
        GS_UNROLL
        for (int ch = 0; ch < 3; ++ch) {
            grad.c[ch] = w * st.vC[ch];
            v_alpha += st.vC[ch] * (c[ch] * st.T - st.SC[ch] * ra);
            st.SC[ch] += w * c[ch];
        }
    }
    if (DEPTH) {
        grad.d = w * st.vD;
        v_alpha += st.vD * (depth * st.T - st.SD * ra);
        st.SD += w * depth;
    }
    if (!clamped) {
        grad.op = v_alpha * e;
        const float v_power = v_alpha * alpha;
        grad.mx = v_power * (ca * dx + cb * dy);
        grad.my = v_power * (cc * dy + cb * dx);
        grad.ca = -0.5f * v_power * dx * dx;
        grad.cb = -v_power * dx * dy;
        grad.cc = -0.5f * v_power * dy * dy;
    }
    return true;
}

// Per-pixel cotangents of (C, D, T_final) from those of the outputs image = C + T bg, alpha = 1 - T and
// depth = D / max(alpha, 1e-10) where alpha > 0 (else 0). v_image, bg, v_alpha, v_depth may be null.
GS_HD void pixel_cotangents(float T_final, const float* v_image, const float* bg, const float* v_alpha,
                            const float* v_depth, float depth_out, PixelBackward& st) {
    st.T = T_final;
    st.T_final = T_final;
    st.SC[0] = st.SC[1] = st.SC[2] = 0.f;
    st.SD = 0.f;
    st.vC[0] = st.vC[1] = st.vC[2] = 0.f;
    st.vD = 0.f;
    st.vT = 0.f;
    const float acc = 1.f - T_final;
    float v_acc = v_alpha ? *v_alpha : 0.f;
    if (v_image) {
        GS_UNROLL
        for (int ch = 0; ch < 3; ++ch) st.vC[ch] = v_image[ch];
        st.vT += st.vC[0] * bg[0] + st.vC[1] * bg[1] + st.vC[2] * bg[2];
    }
    if (v_depth && acc > 0.f) {
        st.vD = *v_depth / fmaxf(acc, 1e-10f);
        if (acc >= 1e-10f) v_acc -= *v_depth * depth_out / acc;
    }
    st.vT -= v_acc;
}

// Host entry points.
Status blend_forward(const BlendArgs& args, void* stream);
Status blend_backward(const BlendBackwardArgs& args, void* stream);

}  // namespace gs
