// Preprocess stage: cull, EWA-project and colour every Gaussian for every camera (dense [C, N] outputs),
// and its backward pass to the scene parameters. Mirrors renderer/_torch_impl.py::_preprocess.
#pragma once

#include "project_math.h"

namespace gs {

struct PreprocessArgs {
    int C, N;            // cameras, Gaussians
    int K;               // SH coefficients per channel stored in ``sh`` (1, 4, 9 or 16)
    int degree;          // SH degree to evaluate (<= sqrt(K) - 1)
    int width, height;   // image size
    float near_plane, far_plane;
    const float* means;           // [N, 3]
    const float* quats;           // [N, 4] w, x, y, z (not necessarily unit)
    const float* log_scales;      // [N, 3]
    const float* opacity_logits;  // [N]
    const float* sh;              // [N, K, 3]
    const float* viewmats;        // [C, 4, 4] world-to-camera
    const float* Ks;              // [C, 3, 3]
    const float* campos;          // [C, 3] camera centres
    const int* items;             // [N] or nullptr: output slot n shows Gaussian items[n] of the parameter arrays
                                  // (the frame cache's front-to-back visible set, read in place, not gathered)
    // outputs
    float* means2d;    // [C, N, 2]
    float* conics;     // [C, N, 3]
    float* depths;     // [C, N]
    float* opacities;  // [C, N]
    float* colors;     // [C, N, 3] or nullptr (0 for culled Gaussians)
    int* radii;        // [C, N, 2] (0 = culled)
};

struct PreprocessBackwardArgs {
    int C, N, K, degree, width, height;
    const float* means;           // [N, 3]
    const float* quats;           // [N, 4]
    const float* log_scales;      // [N, 3]
    const float* opacity_logits;  // [N]
    const float* sh;              // [N, K, 3]
    const float* viewmats;        // [C, 4, 4]
    const float* Ks;              // [C, 3, 3]
    const float* campos;          // [C, 3]
    // incoming gradients (any may be nullptr = zero)
    const float* v_means2d;    // [C, N, 2]
    const float* v_conics;     // [C, N, 3]
    const float* v_depths;     // [C, N]
    const float* v_opacities;  // [C, N]
    const float* v_colors;     // [C, N, 3]
    // outputs (fully overwritten)
    float* v_means;           // [N, 3]
    float* v_quats;           // [N, 4]
    float* v_log_scales;      // [N, 3]
    float* v_opacity_logits;  // [N]
    float* v_sh;              // [N, K, 3] or nullptr
};

// Forward for Gaussian n in camera c.
GS_HD void preprocess_forward_one(const PreprocessArgs& a, int c, int slot) {
    const int idx = c * a.N + slot;
    const int n = a.items ? a.items[slot] : slot;  // the Gaussian this output slot shows
    const CameraParams cam = load_camera(a.viewmats, a.Ks, a.campos, c, a.width, a.height);
    const float m[3] = {a.means[3 * n], a.means[3 * n + 1], a.means[3 * n + 2]};
    float q[4], R[9], M[9], S[9];
    normalize_quat(a.quats + 4 * n, q);
    quat_to_rotmat(q, R);
    const float s[3] = {expf(a.log_scales[3 * n]), expf(a.log_scales[3 * n + 1]), expf(a.log_scales[3 * n + 2])};
    covariance3d(R, s, M, S);
    Projection pr;
    project_point(cam, m, pr);
    float ca, cb, cd;
    covariance2d(pr.T, S, ca, cb, cd);
    const float det = ca * cd - cb * cb;
    const float det_safe = det > 0.f ? det : 1.f;
    const float mx = cam.fx * pr.p[0] / pr.zs + cam.cx;
    const float my = cam.fy * pr.p[1] / pr.zs + cam.cy;
    const float opacity = sigmoid(a.opacity_logits[n]);
    const float q_cut = alpha_cutoff(opacity);
    const float rx = ceilf(sqrtf(fmaxf(q_cut, 0.f) * fmaxf(ca, 0.f)));
    const float ry = ceilf(sqrtf(fmaxf(q_cut, 0.f) * fmaxf(cd, 0.f)));
    const float depth = pr.p[2];
    const bool on_screen = (mx + rx > 0.f) && (mx - rx < cam.width) && (my + ry > 0.f) && (my - ry < cam.height);
    const bool keep = depth > a.near_plane && depth < a.far_plane && det > 0.f && q_cut > 0.f && on_screen &&
                      finite(mx) && finite(my) && rx > 0.f && ry > 0.f;
    a.means2d[2 * idx] = mx;
    a.means2d[2 * idx + 1] = my;
    a.conics[3 * idx] = cd / det_safe;
    a.conics[3 * idx + 1] = -cb / det_safe;
    a.conics[3 * idx + 2] = ca / det_safe;
    a.depths[idx] = depth;
    a.opacities[idx] = opacity;
    a.radii[2 * idx] = keep ? static_cast<int>(rx) : 0;
    a.radii[2 * idx + 1] = keep ? static_cast<int>(ry) : 0;
    if (a.colors) {
        float rgb[3] = {0.f, 0.f, 0.f};
        if (keep) {
            float dir[3], b[16];
            view_dir(m, cam.pos, dir);
            sh_basis(a.degree, dir[0], dir[1], dir[2], b, nullptr);
            const float* shn = a.sh + static_cast<size_t>(n) * a.K * 3;
            const int k_used = (a.degree + 1) * (a.degree + 1);
GS_UNROLL
            for (int k = 0; k < 16; ++k) {
                if (k >= k_used) break;
GS_UNROLL
                for (int ch = 0; ch < 3; ++ch) rgb[ch] += b[k] * shn[3 * k + ch];
            }
GS_UNROLL
            for (int ch = 0; ch < 3; ++ch) rgb[ch] = fmaxf(rgb[ch] + 0.5f, 0.f);
        }
GS_UNROLL
        for (int ch = 0; ch < 3; ++ch) a.colors[3 * idx + ch] = rgb[ch];
    }
}

GS_HD float grad_at(const float* v, size_t i) { return v ? v[i] : 0.f; }

// Backward for Gaussian n over all cameras (no atomics: one thread owns all of n's gradients).
GS_HD void preprocess_backward_one(const PreprocessBackwardArgs& a, int n) {
    const float m[3] = {a.means[3 * n], a.means[3 * n + 1], a.means[3 * n + 2]};
    float q[4], R[9], M[9], S[9];
    const float q_div = normalize_quat(a.quats + 4 * n, q);
    quat_to_rotmat(q, R);
    const float s[3] = {expf(a.log_scales[3 * n]), expf(a.log_scales[3 * n + 1]), expf(a.log_scales[3 * n + 2])};
    covariance3d(R, s, M, S);
    const float opacity = sigmoid(a.opacity_logits[n]);
    const float* shn = a.sh + static_cast<size_t>(n) * a.K * 3;
    const int k_used = (a.degree + 1) * (a.degree + 1);

    float v_m[3] = {0.f, 0.f, 0.f};
    float v_S[9] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    float v_logit = 0.f;
    if (a.v_sh) {
        float* vsh = a.v_sh + static_cast<size_t>(n) * a.K * 3;
        for (int k = 0; k < 3 * a.K; ++k) vsh[k] = 0.f;
    }
    for (int c = 0; c < a.C; ++c) {
        const size_t idx = static_cast<size_t>(c) * a.N + n;
        const float vmx = grad_at(a.v_means2d, 2 * idx), vmy = grad_at(a.v_means2d, 2 * idx + 1);
        const float vca = grad_at(a.v_conics, 3 * idx), vcb = grad_at(a.v_conics, 3 * idx + 1);
        const float vcc = grad_at(a.v_conics, 3 * idx + 2);
        const float vdep = grad_at(a.v_depths, idx), vop = grad_at(a.v_opacities, idx);
        const float vr = grad_at(a.v_colors, 3 * idx), vg = grad_at(a.v_colors, 3 * idx + 1);
        const float vb = grad_at(a.v_colors, 3 * idx + 2);
        v_logit += vop * opacity * (1.f - opacity);
        const bool geo = vmx != 0.f || vmy != 0.f || vca != 0.f || vcb != 0.f || vcc != 0.f || vdep != 0.f;
        const bool col = vr != 0.f || vg != 0.f || vb != 0.f;
        if (!geo && !col) continue;
        const CameraParams cam = load_camera(a.viewmats, a.Ks, a.campos, c, a.width, a.height);
        if (col) {
            float dir[3], b[16], db[48];
            const float div = view_dir(m, cam.pos, dir);
            sh_basis(a.degree, dir[0], dir[1], dir[2], b, db);
            float raw[3] = {0.f, 0.f, 0.f};
GS_UNROLL
            for (int k = 0; k < 16; ++k) {
                if (k >= k_used) break;
GS_UNROLL
                for (int ch = 0; ch < 3; ++ch) raw[ch] += b[k] * shn[3 * k + ch];
            }
            // clamp_min(0) passes the gradient where raw + 0.5 >= 0
            const float vc[3] = {raw[0] + 0.5f >= 0.f ? vr : 0.f, raw[1] + 0.5f >= 0.f ? vg : 0.f,
                                 raw[2] + 0.5f >= 0.f ? vb : 0.f};
            float v_dir[3] = {0.f, 0.f, 0.f};
GS_UNROLL
            for (int k = 0; k < 16; ++k) {
                if (k >= k_used) break;
                const float proj = vc[0] * shn[3 * k] + vc[1] * shn[3 * k + 1] + vc[2] * shn[3 * k + 2];
GS_UNROLL
                for (int i = 0; i < 3; ++i) v_dir[i] += db[3 * k + i] * proj;
                if (a.v_sh) {
                    float* vsh = a.v_sh + static_cast<size_t>(n) * a.K * 3;
GS_UNROLL
                    for (int ch = 0; ch < 3; ++ch) vsh[3 * k + ch] += b[k] * vc[ch];
                }
            }
            if (div > 1e-12f) {
                const float dot = dir[0] * v_dir[0] + dir[1] * v_dir[1] + dir[2] * v_dir[2];
GS_UNROLL
                for (int i = 0; i < 3; ++i) v_m[i] += (v_dir[i] - dir[i] * dot) / div;
            }
        }
        if (!geo) continue;
        Projection pr;
        project_point(cam, m, pr);
        float ca, cb, cd;
        covariance2d(pr.T, S, ca, cb, cd);
        const float det = ca * cd - cb * cb;
        // conic -> cov2d (a, b, d)
        float va, vbb, vd;
        if (det > 0.f) {
            // Through det = a d - b^2 as autograd does: this order keeps the contraction with a needle's long axis
            // accurate in float32 (forming -Q V Q first loses it to cancellation).
            const float v_det = -(cd * vca - cb * vcb + ca * vcc) / (det * det);
            va = vcc / det + v_det * cd;
            vbb = -vcb / det - 2.f * cb * v_det;
            vd = vca / det + v_det * ca;
        } else {
            va = vcc;
            vbb = -vcb;
            vd = vca;
        }
        const float G[4] = {va, 0.5f * vbb, 0.5f * vbb, vd};
        // cov2d = T S T^T: v_T = 2 G T S, v_S += T^T G T
        float TS[6];
GS_UNROLL
        for (int r = 0; r < 2; ++r) {
GS_UNROLL
            for (int j = 0; j < 3; ++j) {
                TS[3 * r + j] = pr.T[3 * r] * S[j] + pr.T[3 * r + 1] * S[3 + j] + pr.T[3 * r + 2] * S[6 + j];
            }
        }
        float vT[6], GT[6];
GS_UNROLL
        for (int r = 0; r < 2; ++r) {
GS_UNROLL
            for (int j = 0; j < 3; ++j) {
                vT[3 * r + j] = 2.f * (G[2 * r] * TS[j] + G[2 * r + 1] * TS[3 + j]);
                GT[3 * r + j] = G[2 * r] * pr.T[j] + G[2 * r + 1] * pr.T[3 + j];
            }
        }
GS_UNROLL
        for (int i = 0; i < 3; ++i) {
GS_UNROLL
            for (int j = 0; j < 3; ++j) v_S[3 * i + j] += pr.T[i] * GT[j] + pr.T[3 + i] * GT[3 + j];
        }
        // T = J R_view -> J
        const float* Rv = cam.R;
        const float vJ00 = vT[0] * Rv[0] + vT[1] * Rv[1] + vT[2] * Rv[2];
        const float vJ02 = vT[0] * Rv[6] + vT[1] * Rv[7] + vT[2] * Rv[8];
        const float vJ11 = vT[3] * Rv[3] + vT[4] * Rv[4] + vT[5] * Rv[5];
        const float vJ12 = vT[3] * Rv[6] + vT[4] * Rv[7] + vT[5] * Rv[8];
        const float zs = pr.zs, iz = 1.f / zs, iz2 = iz * iz, iz3 = iz2 * iz;
        float vp[3] = {0.f, 0.f, vdep};
        const float vtx = -cam.fx * iz2 * vJ02, vty = -cam.fy * iz2 * vJ12;
        if (pr.x_in) vp[0] += vtx;
        if (pr.y_in) vp[1] += vty;
        vp[0] += vmx * cam.fx * iz;
        vp[1] += vmy * cam.fy * iz;
        if (pr.z_ok) {
            vp[2] += -cam.fx * iz2 * vJ00 - cam.fy * iz2 * vJ11 + 2.f * cam.fx * pr.tx * iz3 * vJ02 +
                     2.f * cam.fy * pr.ty * iz3 * vJ12;
            if (!pr.x_in) vp[2] += vtx * pr.rx;
            if (!pr.y_in) vp[2] += vty * pr.ry;
            vp[2] += -(vmx * cam.fx * pr.p[0] + vmy * cam.fy * pr.p[1]) * iz2;
        }
GS_UNROLL
        for (int i = 0; i < 3; ++i) v_m[i] += Rv[i] * vp[0] + Rv[3 + i] * vp[1] + Rv[6 + i] * vp[2];
    }
    // Sigma = M M^T -> M = R diag(s) -> quaternion, log-scales
    float vM[9];
GS_UNROLL
    for (int i = 0; i < 3; ++i) {
GS_UNROLL
        for (int j = 0; j < 3; ++j) {
            vM[3 * i + j] = (v_S[3 * i] + v_S[i]) * M[j] + (v_S[3 * i + 1] + v_S[3 + i]) * M[3 + j] +
                            (v_S[3 * i + 2] + v_S[6 + i]) * M[6 + j];
        }
    }
    float vR[9], v_ls[3];
GS_UNROLL
    for (int j = 0; j < 3; ++j) {
        v_ls[j] = (vM[j] * R[j] + vM[3 + j] * R[3 + j] + vM[6 + j] * R[6 + j]) * s[j];
GS_UNROLL
        for (int i = 0; i < 3; ++i) vR[3 * i + j] = vM[3 * i + j] * s[j];
    }
    float vq_unit[4];
    quat_to_rotmat_vjp(q, vR, vq_unit);
    const float dot = q[0] * vq_unit[0] + q[1] * vq_unit[1] + q[2] * vq_unit[2] + q[3] * vq_unit[3];
    const bool q_ok = q_div > 1e-12f;
GS_UNROLL
    for (int i = 0; i < 4; ++i) a.v_quats[4 * n + i] = q_ok ? (vq_unit[i] - q[i] * dot) / q_div : vq_unit[i] / q_div;
GS_UNROLL
    for (int i = 0; i < 3; ++i) {
        a.v_means[3 * n + i] = v_m[i];
        a.v_log_scales[3 * n + i] = v_ls[i];
    }
    a.v_opacity_logits[n] = v_logit;
}

// Host entry points (launch on ``stream``; return 0 or a cudaError_t value).
Status preprocess_forward(const PreprocessArgs& args, void* stream);
Status preprocess_backward(const PreprocessBackwardArgs& args, void* stream);

}  // namespace gs
