// Preprocess kernels: one thread per (camera, Gaussian) forward, one thread per Gaussian backward.
#include "preprocess.h"

namespace gs {
namespace {

__global__ void __launch_bounds__(256) preprocess_forward_kernel(const PreprocessArgs a) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<int64_t>(a.C) * a.N) return;
    const int c = static_cast<int>(i / a.N);
    const int n = static_cast<int>(i - static_cast<int64_t>(c) * a.N);
    preprocess_forward_one(a, c, n);
}

__global__ void __launch_bounds__(256) preprocess_backward_kernel(const PreprocessBackwardArgs a) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= a.N) return;
    preprocess_backward_one(a, n);
}

}  // namespace

Status preprocess_forward(const PreprocessArgs& args, void* stream) {
    const int64_t total = static_cast<int64_t>(args.C) * args.N;
    if (total == 0) return 0;
    const int threads = 256;
    const int blocks = static_cast<int>((total + threads - 1) / threads);
    preprocess_forward_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    return static_cast<Status>(cudaGetLastError());
}

Status preprocess_backward(const PreprocessBackwardArgs& args, void* stream) {
    if (args.N == 0) return 0;
    const int threads = 256;
    const int blocks = (args.N + threads - 1) / threads;
    preprocess_backward_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    return static_cast<Status>(cudaGetLastError());
}

}  // namespace gs
