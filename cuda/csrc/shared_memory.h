// Device memory that another API can import: a CUDA virtual-memory-management allocation exported as a POSIX file
// descriptor. The viewer imports it into GL once (GL_EXT_memory_object_fd) as the storage of a buffer texture, so
// that a frame reaches GL with no per-frame cudaGraphicsMap/Unmap (which costs ~0.35 ms on the GPU timeline on a
// Hopper GPU, more than the display kernel itself; see benchmarks/viewer_overhead.py).
//
// The driver API functions come from libcuda through dlopen/dlsym: the extension links the CUDA runtime only, and
// libcuda.so (not its stub) is present wherever a CUDA GPU is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace gs {

struct SharedAllocation {
    uint64_t handle = 0;     // CUmemGenericAllocationHandle
    uint64_t address = 0;    // CUdeviceptr of the mapping (read/write for `device`)
    size_t size = 0;         // bytes, the requested size rounded up to the allocation granularity
    int device = 0;
};

// Allocates at least `bytes` on CUDA device `device` and exports it: on success fills `out`, sets `*fd` to a new
// file descriptor the caller owns (GL takes ownership when an import succeeds) and returns ""; on failure returns
// the reason (nothing is left allocated).
std::string shared_allocate(size_t bytes, int device, SharedAllocation* out, int* fd);

// Unmaps and frees an allocation (the caller makes sure no GPU work still uses it); returns "" or the reason.
std::string shared_free(const SharedAllocation& allocation);

}  // namespace gs
