// Binning kernels: warp-cooperative tile counting and key emission (FlashGS-style), cub radix sort over the
// bits needed, and per-tile range offsets by binary search.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "binning.h"

namespace gs {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kSerialMaxArea = 4;  // items with at most this many candidate tiles are tested by their own lane
constexpr int kBinThreads = 256;

// Broadcast of lane ``src``'s box to the whole warp.
__device__ TileBox shfl_box(const TileBox& b, int src) {
    TileBox o;
    o.x0 = __shfl_sync(kFullMask, b.x0, src);
    o.y0 = __shfl_sync(kFullMask, b.y0, src);
    o.span_x = __shfl_sync(kFullMask, b.span_x, src);
    o.area = __shfl_sync(kFullMask, b.area, src);
    o.mx = __shfl_sync(kFullMask, b.mx, src);
    o.my = __shfl_sync(kFullMask, b.my, src);
    o.ca = __shfl_sync(kFullMask, b.ca, src);
    o.cb = __shfl_sync(kFullMask, b.cb, src);
    o.cc = __shfl_sync(kFullMask, b.cc, src);
    o.q_cut = __shfl_sync(kFullMask, b.q_cut, src);
    return o;
}

// Depth sort keys of the items (camera, Gaussian): the float bits of the depth (positive for visible items).
__global__ void depth_keys_kernel(const BinArgs a, uint32_t* keys, int* items) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<int64_t>(a.C) * a.N) return;
    const bool visible = a.radii[2 * i] > 0 && a.radii[2 * i + 1] > 0;
    uint32_t bits;
    memcpy(&bits, a.depths + i, sizeof(bits));
    keys[i] = visible ? bits : 0xffffffffu;
    items[i] = static_cast<int>(i);
}

// One thread per slot j of the depth order; it handles item order[j] = c * N + n. Small items are tested by their
// own lane; items with many candidate tiles are tested by the whole warp, 32 tiles at a time. Without EMIT, writes
// each slot's pair count; with EMIT, writes (camera, tile) keys and Gaussian ids at the slot's offset, so that the
// pairs come out in depth order and a stable sort by (camera, tile) alone keeps that order within every tile.
template <bool EMIT>
__global__ void __launch_bounds__(kBinThreads) bin_kernel(const BinArgs a, const int* order, int* counts_or_cum,
                                                          uint32_t* keys, int* values) {
    const int64_t total = static_cast<int64_t>(a.C) * a.N;
    const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const int64_t i = j < total ? order[j] : 0;
    TileBox box;
    const bool active = j < total && tile_box(a, static_cast<int>(i), box);
    const int area = active ? box.area : 0;
    const int cam = active ? static_cast<int>(i / a.N) : 0;
    const int n = active ? static_cast<int>(i - static_cast<int64_t>(cam) * a.N) : 0;
    const int cam_base = cam * a.tiles_x * a.tiles_y;
    int start = 0;
    if (EMIT && active) start = j == 0 ? 0 : counts_or_cum[j - 1];
    int count = 0;
    if (area > 0 && area <= kSerialMaxArea) {
        for (int k = 0; k < area; ++k) {
            int tile;
            if (tile_hit(a, box, k, tile)) {
                if (EMIT) {
                    keys[start + count] = static_cast<uint32_t>(cam_base + tile);
                    values[start + count] = n;
                }
                ++count;
            }
        }
    }
    unsigned coop = __ballot_sync(kFullMask, area > kSerialMaxArea);
    while (coop) {
        const int src = __ffs(coop) - 1;
        coop &= coop - 1;
        const TileBox sb = shfl_box(box, src);
        const int s_base = __shfl_sync(kFullMask, cam_base, src);
        const int s_n = __shfl_sync(kFullMask, n, src);
        const int s_start = __shfl_sync(kFullMask, start, src);
        int running = 0;
        for (int k0 = 0; k0 < sb.area; k0 += 32) {
            const int k = k0 + lane;
            int tile = 0;
            const bool hit = k < sb.area && tile_hit(a, sb, k, tile);
            const unsigned mask = __ballot_sync(kFullMask, hit);
            if (EMIT && hit) {
                const int pos = s_start + running + __popc(mask & ((1u << lane) - 1u));
                keys[pos] = static_cast<uint32_t>(s_base + tile);
                values[pos] = s_n;
            }
            running += __popc(mask);
        }
        if (lane == src) count = running;
    }
    if (!EMIT && j < total) counts_or_cum[j] = count;
}

// tile_offsets[t] = first pair whose (camera, tile) >= t, for t in [0, num_ranges].
__global__ void tile_offsets_kernel(const uint32_t* keys, int num_pairs, int num_ranges, int* offsets) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t > num_ranges) return;
    int lo = 0, hi = num_pairs;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (static_cast<int64_t>(keys[mid]) < t) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    offsets[t] = lo;
}

int bits_for(int64_t values) {  // bits needed to hold 0 .. values - 1 (at least 1)
    int bits = 1;
    while ((int64_t{1} << bits) < values) ++bits;
    return bits;
}

}  // namespace

Status bin_count(const BinArgs& args, int* order, int* cum, ScratchAllocator scratch, void* stream_ptr) {
    const auto stream = static_cast<cudaStream_t>(stream_ptr);
    const int64_t total = static_cast<int64_t>(args.C) * args.N;
    if (total == 0) return 0;
    const int n = static_cast<int>(total);
    const int blocks = static_cast<int>((total + kBinThreads - 1) / kBinThreads);
    // 1. order the items front to back (once per item, not per pair)
    uint32_t* depth_keys = static_cast<uint32_t*>(scratch(total * sizeof(uint32_t)));
    uint32_t* depth_keys_sorted = static_cast<uint32_t*>(scratch(total * sizeof(uint32_t)));
    int* items = static_cast<int*>(scratch(total * sizeof(int)));
    depth_keys_kernel<<<blocks, kBinThreads, 0, stream>>>(args, depth_keys, items);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    size_t temp_bytes = 0;
    err = cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, depth_keys, depth_keys_sorted, items, order, n, 0, 32,
                                          stream);
    if (err != cudaSuccess) return err;
    void* temp = scratch(temp_bytes);
    err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, depth_keys, depth_keys_sorted, items, order, n, 0, 32,
                                          stream);
    if (err != cudaSuccess) return err;
    // 2. pair counts in that order, and their inclusive sum
    int* counts = static_cast<int*>(scratch(total * sizeof(int)));
    bin_kernel<false><<<blocks, kBinThreads, 0, stream>>>(args, order, counts, nullptr, nullptr);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    temp_bytes = 0;
    err = cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, counts, cum, n, stream);
    if (err != cudaSuccess) return err;
    temp = scratch(temp_bytes);
    return cub::DeviceScan::InclusiveSum(temp, temp_bytes, counts, cum, n, stream);
}

Status bin_emit_sort(const BinArgs& args, const int* order, const int* cum, int num_pairs, int* gaussian_ids,
                     int* tile_offsets, ScratchAllocator scratch, void* stream_ptr) {
    const auto stream = static_cast<cudaStream_t>(stream_ptr);
    const int64_t total = static_cast<int64_t>(args.C) * args.N;
    const int64_t num_ranges = static_cast<int64_t>(args.C) * args.tiles_x * args.tiles_y;
    cudaError_t err;
    uint32_t* keys_sorted = nullptr;
    if (num_pairs > 0) {
        uint32_t* keys = static_cast<uint32_t*>(scratch(num_pairs * sizeof(uint32_t)));
        keys_sorted = static_cast<uint32_t*>(scratch(num_pairs * sizeof(uint32_t)));
        int* values = static_cast<int*>(scratch(num_pairs * sizeof(int)));
        const int blocks = static_cast<int>((total + kBinThreads - 1) / kBinThreads);
        bin_kernel<true><<<blocks, kBinThreads, 0, stream>>>(args, order, const_cast<int*>(cum), keys, values);
        err = cudaGetLastError();
        if (err != cudaSuccess) return err;
        // Stable LSD radix sort over the (camera, tile) bits only: depth order within a tile is kept.
        const int end_bit = bits_for(num_ranges);
        size_t temp_bytes = 0;
        err = cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, keys_sorted, values, gaussian_ids, num_pairs,
                                              0, end_bit, stream);
        if (err != cudaSuccess) return err;
        void* temp = scratch(temp_bytes);
        err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, keys_sorted, values, gaussian_ids, num_pairs, 0,
                                              end_bit, stream);
        if (err != cudaSuccess) return err;
    }
    const int threads = 256;
    const int blocks = static_cast<int>((num_ranges + 1 + threads - 1) / threads);
    tile_offsets_kernel<<<blocks, threads, 0, stream>>>(keys_sorted, num_pairs, static_cast<int>(num_ranges),
                                                        tile_offsets);
    return cudaGetLastError();
}

}  // namespace gs
