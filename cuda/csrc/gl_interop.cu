// Display packing kernel of the viewer's CUDA path (see gl_interop.h); the GL interop itself is host code in
// gl_interop_op.cpp.
#include "gl_interop.h"

#include <surface_indirect_functions.h>

namespace gs {
namespace {

__device__ __forceinline__ float clamp01(float v) { return fminf(fmaxf(v, 0.0f), 1.0f); }

__device__ __forceinline__ unsigned char to_u8(float v) {  // v in [0, 1]
    return static_cast<unsigned char>(__float2uint_rn(v * 255.0f));
}

// Display colour of eye ``eye`` at pixel (x, y), as COMPOSE_FRAGMENT's shade().
__device__ __forceinline__ float3 shade(const DisplayArgs& a, int eye, int x, int y) {
    const int64_t p = (static_cast<int64_t>(eye) * a.height + y) * a.width + x;
    if (a.mode == kDisplayRgb) {
        const float* c = a.image + 3 * p;
        return make_float3(clamp01(c[0]), clamp01(c[1]), clamp01(c[2]));
    }
    const float alpha = a.alpha[p];
    if (a.mode == kDisplayAlpha) {
        const float g = clamp01(alpha);
        return make_float3(g, g, g);
    }
    if (alpha <= 0.5f) return make_float3(0.0f, 0.0f, 0.0f);
    const float g = fminf(fmaxf(1.0f - (a.depth[p] - a.depth_lo[eye]) / a.depth_span[eye], 0.05f), 1.0f);
    return make_float3(g, g, g);
}

__device__ __forceinline__ uchar4 display_pixel(const DisplayArgs& a, int x, int y) {
    float3 c;
    if (a.layout == kLayoutSideBySide) {
        const int eye = x >= a.width ? 1 : 0;
        c = shade(a, eye, x - eye * a.width, y);
    } else if (a.layout == kLayoutAnaglyph) {
        const float3 l = shade(a, 0, x, y), r = shade(a, 1, x, y);
        c = make_float3(l.x, r.y, r.z);
    } else {
        c = shade(a, 0, x, y);
    }
    return make_uchar4(to_u8(c.x), to_u8(c.y), to_u8(c.z), 255);
}

__global__ void __launch_bounds__(256) display_buffer_kernel(const DisplayArgs a, uchar4* out) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    const int w = display_width(a);
    if (x >= w || y >= a.height) return;
    out[static_cast<int64_t>(y) * w + x] = display_pixel(a, x, y);
}

__global__ void __launch_bounds__(256) display_surface_kernel(const DisplayArgs a, cudaSurfaceObject_t surface) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= display_width(a) || y >= a.height) return;
    surf2Dwrite(display_pixel(a, x, y), surface, x * static_cast<int>(sizeof(uchar4)), y);
}

dim3 display_grid(const DisplayArgs& a, dim3 block) {
    return dim3((display_width(a) + block.x - 1) / block.x, (a.height + block.y - 1) / block.y);
}

}  // namespace

Status display_to_buffer(const DisplayArgs& a, unsigned char* out, void* stream) {
    if (a.width <= 0 || a.height <= 0) return 0;
    const dim3 block(32, 8);
    display_buffer_kernel<<<display_grid(a, block), block, 0, static_cast<cudaStream_t>(stream)>>>(
        a, reinterpret_cast<uchar4*>(out));
    return static_cast<Status>(cudaGetLastError());
}

Status display_to_surface(const DisplayArgs& a, unsigned long long surface, void* stream) {
    if (a.width <= 0 || a.height <= 0) return 0;
    const dim3 block(32, 8);
    display_surface_kernel<<<display_grid(a, block), block, 0, static_cast<cudaStream_t>(stream)>>>(
        a, static_cast<cudaSurfaceObject_t>(surface));
    return static_cast<Status>(cudaGetLastError());
}

}  // namespace gs
