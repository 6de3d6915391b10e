// Shared definitions for the torch-free CUDA core: host/device qualifiers, constants, the scratch allocator.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define GS_HD __host__ __device__ __forceinline__
#else
#define GS_HD inline
#endif
#if defined(__CUDA_ARCH__)
#define GS_UNROLL _Pragma("unroll")
#else
#define GS_UNROLL
#endif

namespace gs {

// The standard 3DGS constants; they match renderer/types.py and renderer/_torch_impl.py.
constexpr float kLowpass2D = 0.3f;         // added to the diagonal of every 2D covariance
constexpr float kAlphaMax = 0.99f;         // alpha is clamped to this
constexpr float kAlphaMin = 1.0f / 255.0f; // contributions below this are skipped
constexpr float kTransmittanceMin = 1e-4f; // a pixel stops before its transmittance falls below this
constexpr float kCutoffMargin = 1e-3f;     // margin on the alpha >= 1/255 cut-off used for culling and binning
constexpr int kTileSize = 16;              // the blend kernels are written for 16x16 tiles
constexpr int kTilePixels = kTileSize * kTileSize;

GS_HD bool finite(float x) {
#if defined(__CUDA_ARCH__)
    return isfinite(x);
#else
    return std::isfinite(x);
#endif
}

GS_HD int imin(int a, int b) { return a < b ? a : b; }
GS_HD int imax(int a, int b) { return a > b ? a : b; }

// Temporary device memory for one core call. ``alloc`` returns ``bytes`` of device memory (aligned to 256 bytes)
// that stays valid until the call returns and is ordered on the call's stream; the caller frees it afterwards.
struct ScratchAllocator {
    void* (*alloc)(void* ctx, size_t bytes);
    void* ctx;
    void* operator()(size_t bytes) const { return alloc(ctx, bytes); }
};

// Error code returned by the core's host entry points (0 = success; otherwise a cudaError_t value).
using Status = int;

}  // namespace gs
