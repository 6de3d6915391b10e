"""GLSL sources of the viewer (OpenGL 3.3 core, so that they run on Mesa llvmpipe, macOS-class drivers and EGL).

The splat pass mirrors ``renderer/_torch_impl.py``: the same EWA projection (the Jacobian evaluated at the point
clamped to 1.3x the frustum, the 0.3 low-pass on the 2D covariance), SH up to degree 3, alpha clamped to 0.99 and
contributions under 1/255 dropped. Each Gaussian is one instanced quad covering exactly its alpha >= 1/255 ellipse
(opacity-aware extent, oriented along the covariance's eigenvectors). Quads are drawn back to front with
premultiplied alpha, which sums the same terms as the reference's front-to-back blend.

Image convention: framebuffer row ``r`` (GL counts rows from the bottom) holds image row ``r`` (counted from the
top), so a read-back is already top-down; the display pass flips for the screen.
"""

SPLAT_VERTEX = """
#version 330 core
uniform sampler2D u_mean;      // per splat: 1 texel (x, y, z, opacity)
uniform sampler2D u_cov;       // per splat: 2 texels (xx, xy, xz, yy), (yz, zz, -, -)
uniform sampler2D u_sh;        // per splat: u_sh_stride texels of packed SH floats (coefficient-major, rgb)
uniform int u_sh_stride;
uniform int u_sh_degree;
uniform mat4 u_view;           // world-to-camera (OpenCV axes)
uniform vec2 u_focal;          // fx, fy
uniform vec2 u_principal;      // cx, cy
uniform vec2 u_size;           // width, height in pixels
uniform vec3 u_campos;
uniform vec2 u_clip;           // near, far
uniform int u_mode;            // 0 colour, 1 depth, 2 alpha

in vec2 a_corner;              // (-1,-1) (1,-1) (-1,1) (1,1)
in uint a_index;               // the splat drawn by this instance (back-to-front order)

out vec2 v_offset;             // pixel offset from the projected centre
flat out vec3 v_conic;
flat out float v_opacity;
flat out vec3 v_color;

const float LOWPASS = 0.3;
const float ALPHA_MIN = 1.0 / 255.0;
const float CUTOFF_MARGIN = 1e-3;

vec4 fetch(sampler2D tex, int i) {
    int w = textureSize(tex, 0).x;
    return texelFetch(tex, ivec2(i % w, i / w), 0);
}

#define SH(k, c) sh[3 * (k) + (c)]

vec3 eval_sh(int i, vec3 dir) {
    float sh[48];
    int used = (u_sh_degree + 1) * (u_sh_degree + 1) * 3;
    for (int t = 0; t < 12; ++t) {
        if (t >= u_sh_stride || 4 * t >= used) break;
        vec4 v = fetch(u_sh, i * u_sh_stride + t);
        sh[4 * t] = v.x; sh[4 * t + 1] = v.y; sh[4 * t + 2] = v.z; sh[4 * t + 3] = v.w;
    }
    vec3 out_c = 0.28209479177387814 * vec3(sh[0], sh[1], sh[2]);
    if (u_sh_degree >= 1) {
        float x = dir.x, y = dir.y, z = dir.z;
        const float C1 = 0.4886025119029199;
        for (int c = 0; c < 3; ++c) {
            float r = -C1 * y * SH(1, c) + C1 * z * SH(2, c) - C1 * x * SH(3, c);
            if (u_sh_degree >= 2) {
                float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
                r += 1.0925484305920792 * xy * SH(4, c) - 1.0925484305920792 * yz * SH(5, c)
                   + 0.31539156525252005 * (2.0 * zz - xx - yy) * SH(6, c)
                   - 1.0925484305920792 * xz * SH(7, c) + 0.5462742152960396 * (xx - yy) * SH(8, c);
                if (u_sh_degree >= 3) {
                    r += -0.5900435899266435 * y * (3.0 * xx - yy) * SH(9, c)
                       + 2.890611442640554 * xy * z * SH(10, c)
                       - 0.4570457994644658 * y * (4.0 * zz - xx - yy) * SH(11, c)
                       + 0.3731763325901154 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * SH(12, c)
                       - 0.4570457994644658 * x * (4.0 * zz - xx - yy) * SH(13, c)
                       + 1.445305721320277 * z * (xx - yy) * SH(14, c)
                       - 0.5900435899266435 * x * (xx - 3.0 * yy) * SH(15, c);
                }
            }
            out_c[c] += r;
        }
    }
    return max(out_c + 0.5, vec3(0.0));
}

void cull() { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); v_offset = vec2(0.0); v_conic = vec3(0.0);
              v_opacity = 0.0; v_color = vec3(0.0); }

void main() {
    int i = int(a_index);
    vec4 mo = fetch(u_mean, i);
    mat3 rot = mat3(u_view);
    vec3 p = rot * mo.xyz + u_view[3].xyz;
    float opacity = mo.w;
    float q_cut = 2.0 * log(max(opacity, 1e-30) / ALPHA_MIN) + CUTOFF_MARGIN;
    if (!(p.z > u_clip.x && p.z < u_clip.y) || q_cut <= 0.0) { cull(); return; }

    vec4 c0 = fetch(u_cov, 2 * i), c1 = fetch(u_cov, 2 * i + 1);
    mat3 sigma = mat3(c0.x, c0.y, c0.z,  c0.y, c0.w, c1.x,  c0.z, c1.x, c1.y);
    float z = p.z;
    vec2 lim_pos = (u_size - u_principal) / u_focal + 0.3 * u_size / (2.0 * u_focal);
    vec2 lim_neg = u_principal / u_focal + 0.3 * u_size / (2.0 * u_focal);
    vec2 t = z * min(lim_pos, max(-lim_neg, p.xy / z));
    mat3 jac = mat3(u_focal.x / z, 0.0, 0.0,
                    0.0, u_focal.y / z, 0.0,
                    -u_focal.x * t.x / (z * z), -u_focal.y * t.y / (z * z), 0.0);
    mat3 tm = jac * rot;
    mat3 cov = tm * sigma * transpose(tm);
    float a = cov[0][0] + LOWPASS, b = cov[0][1], d = cov[1][1] + LOWPASS;
    float det = a * d - b * b;
    if (!(det > 0.0)) { cull(); return; }
    v_conic = vec3(d / det, -b / det, a / det);

    float mid = 0.5 * (a + d);
    float rad = sqrt(max(0.25 * (a - d) * (a - d) + b * b, 0.0));
    float l1 = mid + rad, l2 = max(mid - rad, 1e-12);
    vec2 e1 = abs(b) > 1e-12 * (abs(a) + abs(d)) ? normalize(vec2(b, l1 - a)) : (a >= d ? vec2(1, 0) : vec2(0, 1));
    vec2 e2 = vec2(-e1.y, e1.x);
    vec2 offset = a_corner.x * sqrt(q_cut * l1) * e1 + a_corner.y * sqrt(q_cut * l2) * e2;
    vec2 center = u_focal * p.xy / z + u_principal;
    vec2 pix = center + offset;
    gl_Position = vec4(2.0 * pix / u_size - 1.0, 0.0, 1.0);
    v_offset = offset;
    v_opacity = opacity;
    if (u_mode == 0) {
        v_color = eval_sh(i, normalize(mo.xyz - u_campos));
    } else {
        v_color = vec3(z);
    }
}
"""

SPLAT_FRAGMENT = """
#version 330 core
in vec2 v_offset;
flat in vec3 v_conic;
flat in float v_opacity;
flat in vec3 v_color;
out vec4 f_color;

void main() {
    vec2 d = v_offset;
    float power = -0.5 * (v_conic.x * d.x * d.x + v_conic.z * d.y * d.y) - v_conic.y * d.x * d.y;
    if (power > 0.0) discard;
    float alpha = min(0.99, v_opacity * exp(power));
    if (alpha < 1.0 / 255.0) discard;
    f_color = vec4(v_color * alpha, alpha);   // premultiplied
}
"""

FULLSCREEN_VERTEX = """
#version 330 core
out vec2 v_uv;
uniform int u_flip;   // 1: flip rows (image row 0 at the top of the screen)
void main() {
    vec2 pos = vec2((gl_VertexID << 1) & 2, gl_VertexID & 2);   // (0,0) (2,0) (0,2): one big triangle
    v_uv = pos;
    if (u_flip == 1) v_uv.y = 1.0 - v_uv.y;
    gl_Position = vec4(pos * 2.0 - 1.0, 0.0, 1.0);
}
"""

# Eye buffers hold (premultiplied colour composited over the background, alpha) in colour mode and
# (depth * alpha, alpha) in depth mode. This pass turns one or two of them into display colours and lays them out.
COMPOSE_FRAGMENT = """
#version 330 core
in vec2 v_uv;
out vec4 f_color;
uniform sampler2D u_left;
uniform sampler2D u_right;
uniform int u_layout;      // 0 mono (left only), 1 side by side, 2 anaglyph (red from left, green+blue from right)
uniform int u_mode;        // 0 colour, 1 depth, 2 alpha
uniform vec4 u_depth_range_left;   // (near, far, -, -) of the depth grey ramp per eye
uniform vec4 u_depth_range_right;

vec3 shade(vec4 v, vec4 range) {
    if (u_mode == 0) return clamp(v.rgb, 0.0, 1.0);
    if (u_mode == 2) return vec3(clamp(v.a, 0.0, 1.0));
    if (v.a <= 0.5) return vec3(0.0);
    float depth = v.r / v.a;
    float g = 1.0 - (depth - range.x) / max(range.y - range.x, 1e-12);
    return vec3(clamp(g, 0.05, 1.0));
}

void main() {
    vec3 c;
    if (u_layout == 1) {
        if (v_uv.x < 0.5) c = shade(texture(u_left, vec2(2.0 * v_uv.x, v_uv.y)), u_depth_range_left);
        else c = shade(texture(u_right, vec2(2.0 * v_uv.x - 1.0, v_uv.y)), u_depth_range_right);
    } else if (u_layout == 2) {
        vec3 l = shade(texture(u_left, v_uv), u_depth_range_left);
        vec3 r = shade(texture(u_right, v_uv), u_depth_range_right);
        c = vec3(l.r, r.g, r.b);
    } else {
        c = shade(texture(u_left, v_uv), u_depth_range_left);
    }
    f_color = vec4(c, 1.0);
}
"""

BLIT_FRAGMENT = """
#version 330 core
in vec2 v_uv;
out vec4 f_color;
uniform sampler2D u_image;
void main() { f_color = vec4(texture(u_image, v_uv).rgb, 1.0); }
"""
