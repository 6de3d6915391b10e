// Helpers shared by the torch glue (.cpp files): input checks, the scratch allocator, stream, debug sync.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>
#include <optional>
#include <vector>

#include "common.h"

#define GS_CHECK_CUDA_TENSOR(x)                                                                           \
    TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor, got one on ", (x).device());                   \
    TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define GS_CHECK_FLOAT(x)  \
    GS_CHECK_CUDA_TENSOR(x); \
    TORCH_CHECK((x).scalar_type() == at::kFloat, #x " must be float32, got ", (x).scalar_type())
#define GS_CHECK_INT(x)    \
    GS_CHECK_CUDA_TENSOR(x); \
    TORCH_CHECK((x).scalar_type() == at::kInt, #x " must be int32, got ", (x).scalar_type())
#define GS_CHECK_SHAPE(x, ...)                                                                             \
    TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape ",                     \
                at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())
#define GS_CHECK_SAME_DEVICE(x, ref) \
    TORCH_CHECK((x).device() == (ref).device(), #x " is on ", (x).device(), " but expected ", (ref).device())

namespace gs {

// Scratch memory from the caching allocator; freed (stream-ordered) when this object goes away.
class TorchScratch {
  public:
    explicit TorchScratch(const at::Device& device) : options_(at::TensorOptions().dtype(at::kByte).device(device)) {}
    ScratchAllocator allocator() { return ScratchAllocator{&TorchScratch::alloc, this}; }

  private:
    static void* alloc(void* ctx, size_t bytes) {
        auto* self = static_cast<TorchScratch*>(ctx);
        self->buffers_.push_back(at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, self->options_));
        return self->buffers_.back().data_ptr();
    }
    at::TensorOptions options_;
    std::vector<at::Tensor> buffers_;
};

inline void* current_stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

// GSCACHE_NATIVE_SYNC=1: synchronise after every launch so that an error names the op that caused it.
inline bool debug_sync() {
    static const bool enabled = [] {
        const char* v = std::getenv("GSCACHE_NATIVE_SYNC");
        return v != nullptr && v[0] != '\0' && v[0] != '0';
    }();
    return enabled;
}

inline void check_status(Status status, const char* op) {
    TORCH_CHECK(status == 0, "gscache native ", op, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(status)));
    if (debug_sync()) {
        const cudaError_t err = cudaStreamSynchronize(static_cast<cudaStream_t>(current_stream()));
        TORCH_CHECK(err == cudaSuccess, "gscache native ", op, " failed (GSCACHE_NATIVE_SYNC): ",
                    cudaGetErrorString(err));
    }
}

inline const float* opt_ptr(const std::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() && t->numel() > 0 ? t->data_ptr<float>() : nullptr;
}

inline bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

}  // namespace gs
