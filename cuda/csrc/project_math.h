// Per-element math of the preprocess stage (EWA projection, SH colour) and its vector-Jacobian products.
// Everything here is __host__ __device__ so that the kernels and the CPU host emulation (cuda/host_emu) share it.
#pragma once

#include <cmath>

#include "common.h"

namespace gs {

constexpr float kShC0 = 0.28209479177387814f;
constexpr float kShC1 = 0.4886025119029199f;
constexpr float kShC2_0 = 1.0925484305920792f, kShC2_1 = -1.0925484305920792f, kShC2_2 = 0.31539156525252005f,
                kShC2_3 = -1.0925484305920792f, kShC2_4 = 0.5462742152960396f;
constexpr float kShC3_0 = -0.5900435899266435f, kShC3_1 = 2.890611442640554f, kShC3_2 = -0.4570457994644658f,
                kShC3_3 = 0.3731763325901154f, kShC3_4 = -0.4570457994644658f, kShC3_5 = 1.445305721320277f,
                kShC3_6 = -0.5900435899266435f;

// One camera: world-to-camera rotation (row-major) and translation, intrinsics, image size and centre.
struct CameraParams {
    float R[9];
    float t[3];
    float fx, fy, cx, cy;
    float pos[3];
    float width, height;
};

GS_HD CameraParams load_camera(const float* viewmats, const float* Ks, const float* campos, int c, int width,
                               int height) {
    CameraParams cam;
    const float* v = viewmats + 16 * c;
    const float* k = Ks + 9 * c;
GS_UNROLL
    for (int r = 0; r < 3; ++r) {
GS_UNROLL
        for (int col = 0; col < 3; ++col) cam.R[3 * r + col] = v[4 * r + col];
        cam.t[r] = v[4 * r + 3];
        cam.pos[r] = campos[3 * c + r];
    }
    cam.fx = k[0];
    cam.fy = k[4];
    cam.cx = k[2];
    cam.cy = k[5];
    cam.width = static_cast<float>(width);
    cam.height = static_cast<float>(height);
    return cam;
}

// Rotation matrix (row-major) from a unit quaternion w, x, y, z.
GS_HD void quat_to_rotmat(const float q[4], float R[9]) {
    const float w = q[0], x = q[1], y = q[2], z = q[3];
    R[0] = 1.f - 2.f * (y * y + z * z);
    R[1] = 2.f * (x * y - w * z);
    R[2] = 2.f * (x * z + w * y);
    R[3] = 2.f * (x * y + w * z);
    R[4] = 1.f - 2.f * (x * x + z * z);
    R[5] = 2.f * (y * z - w * x);
    R[6] = 2.f * (x * z - w * y);
    R[7] = 2.f * (y * z + w * x);
    R[8] = 1.f - 2.f * (x * x + y * y);
}

// VJP of quat_to_rotmat: v_R (row-major) -> v_q (w, x, y, z), for the unit quaternion q.
GS_HD void quat_to_rotmat_vjp(const float q[4], const float v[9], float v_q[4]) {
    const float w = q[0], x = q[1], y = q[2], z = q[3];
    v_q[0] = 2.f * (-z * v[1] + y * v[2] + z * v[3] - x * v[5] - y * v[6] + x * v[7]);
    v_q[1] = 2.f * (y * v[1] + z * v[2] + y * v[3] - 2.f * x * v[4] - w * v[5] + z * v[6] + w * v[7] -
                    2.f * x * v[8]);
    v_q[2] = 2.f * (-2.f * y * v[0] + x * v[1] + w * v[2] + x * v[3] + z * v[5] - w * v[6] + z * v[7] -
                    2.f * y * v[8]);
    v_q[3] = 2.f * (-2.f * z * v[0] - w * v[1] + x * v[2] + w * v[3] - 2.f * z * v[4] + y * v[5] + x * v[6] +
                    y * v[7]);
}

// Normalised quaternion (F.normalize semantics: q / max(|q|, 1e-12)); returns the divisor.
GS_HD float normalize_quat(const float* q_raw, float q[4]) {
    const float norm = sqrtf(q_raw[0] * q_raw[0] + q_raw[1] * q_raw[1] + q_raw[2] * q_raw[2] + q_raw[3] * q_raw[3]);
    const float div = fmaxf(norm, 1e-12f);
GS_UNROLL
    for (int i = 0; i < 4; ++i) q[i] = q_raw[i] / div;
    return div;
}

// M = R diag(s) and the world covariance Sigma = M M^T (symmetric, row-major 3x3).
GS_HD void covariance3d(const float R[9], const float s[3], float M[9], float S[9]) {
GS_UNROLL
    for (int i = 0; i < 3; ++i) {
GS_UNROLL
        for (int j = 0; j < 3; ++j) M[3 * i + j] = R[3 * i + j] * s[j];
    }
GS_UNROLL
    for (int i = 0; i < 3; ++i) {
GS_UNROLL
        for (int j = 0; j < 3; ++j) {
            S[3 * i + j] = M[3 * i + 0] * M[3 * j + 0] + M[3 * i + 1] * M[3 * j + 1] + M[3 * i + 2] * M[3 * j + 2];
        }
    }
}

// Camera-space point and the pieces of the clamped EWA Jacobian that the VJP needs.
struct Projection {
    float p[3];       // camera-space point
    float zs;         // z, or 1e-6 where |z| <= 1e-6 (then z carries no gradient)
    bool z_ok;        // |z| > 1e-6
    float tx, ty;     // the point used for the Jacobian (clamped to 1.3x the frustum)
    float rx, ry;     // clamped x/z and y/z
    bool x_in, y_in;  // the clamp was inactive
    float J00, J02, J11, J12;
    float T[6];       // J * R_view, 2x3 row-major
};

GS_HD void project_point(const CameraParams& cam, const float m[3], Projection& pr) {
GS_UNROLL
    for (int r = 0; r < 3; ++r) {
        pr.p[r] = cam.R[3 * r] * m[0] + cam.R[3 * r + 1] * m[1] + cam.R[3 * r + 2] * m[2] + cam.t[r];
    }
    const float x = pr.p[0], y = pr.p[1], z = pr.p[2];
    pr.z_ok = fabsf(z) > 1e-6f;
    pr.zs = pr.z_ok ? z : 1e-6f;
    const float zs = pr.zs;
    const float lim_xp = (cam.width - cam.cx) / cam.fx + 0.3f * cam.width / (2.f * cam.fx);
    const float lim_xn = cam.cx / cam.fx + 0.3f * cam.width / (2.f * cam.fx);
    const float lim_yp = (cam.height - cam.cy) / cam.fy + 0.3f * cam.height / (2.f * cam.fy);
    const float lim_yn = cam.cy / cam.fy + 0.3f * cam.height / (2.f * cam.fy);
    const float ux = x / zs, uy = y / zs;
    pr.rx = fminf(lim_xp, fmaxf(-lim_xn, ux));
    pr.ry = fminf(lim_yp, fmaxf(-lim_yn, uy));
    pr.x_in = (ux <= lim_xp) && (ux >= -lim_xn);
    pr.y_in = (uy <= lim_yp) && (uy >= -lim_yn);
    pr.tx = zs * pr.rx;
    pr.ty = zs * pr.ry;
    pr.J00 = cam.fx / zs;
    pr.J11 = cam.fy / zs;
    pr.J02 = -cam.fx * pr.tx / (zs * zs);
    pr.J12 = -cam.fy * pr.ty / (zs * zs);
GS_UNROLL
    for (int j = 0; j < 3; ++j) {
        pr.T[j] = pr.J00 * cam.R[j] + pr.J02 * cam.R[6 + j];
        pr.T[3 + j] = pr.J11 * cam.R[3 + j] + pr.J12 * cam.R[6 + j];
    }
}

// 2D covariance T S T^T plus the low-pass: (a, b, d) of [[a, b], [b, d]].
GS_HD void covariance2d(const float T[6], const float S[9], float& a, float& b, float& d) {
    float TS[6];
GS_UNROLL
    for (int r = 0; r < 2; ++r) {
GS_UNROLL
        for (int j = 0; j < 3; ++j) {
            TS[3 * r + j] = T[3 * r] * S[j] + T[3 * r + 1] * S[3 + j] + T[3 * r + 2] * S[6 + j];
        }
    }
    a = TS[0] * T[0] + TS[1] * T[1] + TS[2] * T[2] + kLowpass2D;
    b = TS[0] * T[3] + TS[1] * T[4] + TS[2] * T[5];
    d = TS[3] * T[3] + TS[4] * T[4] + TS[5] * T[5] + kLowpass2D;
}

// Minimum of q(d) = a dx^2 + 2 b dx dy + c dy^2 over the rectangle [lo, hi] (0 when the centre is inside),
// as _min_power_over_rects.
GS_HD float min_power_over_rect(float a, float b, float c, float lox, float loy, float hix, float hiy) {
    if (lox <= 0.f && loy <= 0.f && hix >= 0.f && hiy >= 0.f) return 0.f;
    float best = INFINITY;
    const float xe[2] = {lox, hix};
    const float ye[2] = {loy, hiy};
GS_UNROLL
    for (int e = 0; e < 2; ++e) {
        const float x = xe[e];
        const float dy = fminf(fmaxf(-b * x / c, loy), hiy);
        best = fminf(best, a * x * x + 2.f * b * x * dy + c * dy * dy);
    }
GS_UNROLL
    for (int e = 0; e < 2; ++e) {
        const float y = ye[e];
        const float dx = fminf(fmaxf(-b * y / a, lox), hix);
        best = fminf(best, a * dx * dx + 2.f * b * dx * y + c * y * y);
    }
    return best;
}

// Largest Mahalanobis power q with opacity * exp(-q / 2) >= 1/255 (negative: never), as _alpha_cutoff.
GS_HD float alpha_cutoff(float opacity) {
    return 2.f * logf(fmaxf(opacity, 1e-30f) / kAlphaMin) + kCutoffMargin;
}

GS_HD float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// Real SH basis values b[k] for k < (degree + 1)^2 at the unit direction (x, y, z); unused entries are 0.
// With ``db`` non-null, also d b[k] / d(x, y, z) as db[3k .. 3k + 2].
GS_HD void sh_basis(int degree, float x, float y, float z, float b[16], float* db) {
GS_UNROLL
    for (int k = 0; k < 16; ++k) b[k] = 0.f;
    if (db) {
GS_UNROLL
        for (int k = 0; k < 48; ++k) db[k] = 0.f;
    }
    b[0] = kShC0;
    if (degree < 1) return;
    b[1] = -kShC1 * y;
    b[2] = kShC1 * z;
    b[3] = -kShC1 * x;
    if (db) {
        db[3 * 1 + 1] = -kShC1;
        db[3 * 2 + 2] = kShC1;
        db[3 * 3 + 0] = -kShC1;
    }
    if (degree < 2) return;
    const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
    b[4] = kShC2_0 * xy;
    b[5] = kShC2_1 * yz;
    b[6] = kShC2_2 * (2.f * zz - xx - yy);
    b[7] = kShC2_3 * xz;
    b[8] = kShC2_4 * (xx - yy);
    if (db) {
        db[3 * 4 + 0] = kShC2_0 * y;
        db[3 * 4 + 1] = kShC2_0 * x;
        db[3 * 5 + 1] = kShC2_1 * z;
        db[3 * 5 + 2] = kShC2_1 * y;
        db[3 * 6 + 0] = -2.f * kShC2_2 * x;
        db[3 * 6 + 1] = -2.f * kShC2_2 * y;
        db[3 * 6 + 2] = 4.f * kShC2_2 * z;
        db[3 * 7 + 0] = kShC2_3 * z;
        db[3 * 7 + 2] = kShC2_3 * x;
        db[3 * 8 + 0] = 2.f * kShC2_4 * x;
        db[3 * 8 + 1] = -2.f * kShC2_4 * y;
    }
    if (degree < 3) return;
    b[9] = kShC3_0 * y * (3.f * xx - yy);
    b[10] = kShC3_1 * xy * z;
    b[11] = kShC3_2 * y * (4.f * zz - xx - yy);
    b[12] = kShC3_3 * z * (2.f * zz - 3.f * xx - 3.f * yy);
    b[13] = kShC3_4 * x * (4.f * zz - xx - yy);
    b[14] = kShC3_5 * z * (xx - yy);
    b[15] = kShC3_6 * x * (xx - 3.f * yy);
    if (db) {
        db[3 * 9 + 0] = 6.f * kShC3_0 * xy;
        db[3 * 9 + 1] = kShC3_0 * (3.f * xx - 3.f * yy);
        db[3 * 10 + 0] = kShC3_1 * yz;
        db[3 * 10 + 1] = kShC3_1 * xz;
        db[3 * 10 + 2] = kShC3_1 * xy;
        db[3 * 11 + 0] = -2.f * kShC3_2 * xy;
        db[3 * 11 + 1] = kShC3_2 * (4.f * zz - xx - 3.f * yy);
        db[3 * 11 + 2] = 8.f * kShC3_2 * yz;
        db[3 * 12 + 0] = -6.f * kShC3_3 * xz;
        db[3 * 12 + 1] = -6.f * kShC3_3 * yz;
        db[3 * 12 + 2] = kShC3_3 * (6.f * zz - 3.f * xx - 3.f * yy);
        db[3 * 13 + 0] = kShC3_4 * (4.f * zz - 3.f * xx - yy);
        db[3 * 13 + 1] = -2.f * kShC3_4 * xy;
        db[3 * 13 + 2] = 8.f * kShC3_4 * xz;
        db[3 * 14 + 0] = 2.f * kShC3_5 * xz;
        db[3 * 14 + 1] = -2.f * kShC3_5 * yz;
        db[3 * 14 + 2] = kShC3_5 * (xx - yy);
        db[3 * 15 + 0] = kShC3_6 * (3.f * xx - 3.f * yy);
        db[3 * 15 + 1] = -6.f * kShC3_6 * xy;
    }
}

// Unit view direction (F.normalize semantics) from the camera centre to the mean; returns the divisor.
GS_HD float view_dir(const float m[3], const float campos[3], float dir[3]) {
    const float v0 = m[0] - campos[0], v1 = m[1] - campos[1], v2 = m[2] - campos[2];
    const float div = fmaxf(sqrtf(v0 * v0 + v1 * v1 + v2 * v2), 1e-12f);
    dir[0] = v0 / div;
    dir[1] = v1 / div;
    dir[2] = v2 / div;
    return div;
}

}  // namespace gs
