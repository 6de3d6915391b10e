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

// Depth sort keys of the items (camera, Gaussian): the float bits of the depth (positive for visible items), and the
// number of visible items per camera (one atomic per warp where the warp sees one camera).
__global__ void depth_keys_kernel(const BinArgs a, uint32_t* keys, int* items, int* visible_counts) {
    const int64_t total = static_cast<int64_t>(a.C) * a.N;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const bool in_range = i < total;
    const bool visible = in_range && a.radii[2 * i] > 0 && a.radii[2 * i + 1] > 0;
    if (in_range) {
        uint32_t bits;
        memcpy(&bits, a.depths + i, sizeof(bits));
        keys[i] = visible ? bits : 0xffffffffu;
        items[i] = static_cast<int>(i);
    }
    // counts: per warp into the block's counter when the warp sees only the block's first camera, else directly
    __shared__ int s_count;
    const int block_cam = static_cast<int>(static_cast<int64_t>(blockIdx.x) * blockDim.x / a.N);
    if (threadIdx.x == 0) s_count = 0;
    __syncthreads();
    const int cam = in_range ? static_cast<int>(i / a.N) : -1;
    const unsigned mask = __ballot_sync(kFullMask, visible);
    if (__all_sync(kFullMask, cam == block_cam || !visible)) {
        if ((threadIdx.x & 31) == 0 && mask != 0) atomicAdd(&s_count, __popc(mask));
    } else if (visible) {
        atomicAdd(visible_counts + cam, 1);
    }
    __syncthreads();
    if (threadIdx.x == 0 && s_count > 0) atomicAdd(visible_counts + block_cam, s_count);
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

// 2. pair counts in ``order`` (written into ``cum``), and their inclusive sum in place.
Status count_pairs(const BinArgs& args, const int* order, int* cum, ScratchAllocator scratch, cudaStream_t stream) {
    const int n = args.C * args.N;
    const int blocks = (n + kBinThreads - 1) / kBinThreads;
    bin_kernel<false><<<blocks, kBinThreads, 0, stream>>>(args, order, cum, nullptr, nullptr);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    size_t temp_bytes = 0;
    err = cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, cum, cum, n, stream);
    if (err != cudaSuccess) return err;
    void* temp = scratch(temp_bytes);
    return cub::DeviceScan::InclusiveSum(temp, temp_bytes, cum, cum, n, stream);
}

}  // namespace

Status bin_count(const BinArgs& args, uint32_t* keys0, uint32_t* keys1, int* items0, int* order, int* cum,
                 int* visible_counts, bool presorted, ScratchAllocator scratch, void* stream_ptr) {
    const auto stream = static_cast<cudaStream_t>(stream_ptr);
    const int64_t total = static_cast<int64_t>(args.C) * args.N;
    if (total == 0) return 0;
    const int n = static_cast<int>(total);
    const int blocks = static_cast<int>((total + kBinThreads - 1) / kBinThreads);
    // 1. order the items front to back (once per item, not per pair); double buffers: no extra copy inside cub.
    //    Presorted items keep their index order: the kernel's identity items are the order (and it counts).
    depth_keys_kernel<<<blocks, kBinThreads, 0, stream>>>(args, keys0, presorted ? order : items0, visible_counts);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    if (presorted) return count_pairs(args, order, cum, scratch, stream);
    cub::DoubleBuffer<uint32_t> d_keys(keys0, keys1);
    cub::DoubleBuffer<int> d_items(items0, order);
    size_t temp_bytes = 0;
    err = cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, d_keys, d_items, n, 0, 32, stream);
    if (err != cudaSuccess) return err;
    void* temp = scratch(temp_bytes);
    err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, d_keys, d_items, n, 0, 32, stream);
    if (err != cudaSuccess) return err;
    if (d_items.Current() != order) {
        err = cudaMemcpyAsync(order, d_items.Current(), total * sizeof(int), cudaMemcpyDeviceToDevice, stream);
        if (err != cudaSuccess) return err;
    }
    return count_pairs(args, order, cum, scratch, stream);
}

Status bin_emit(const BinArgs& args, const int* order, const int* cum, uint32_t* keys, int* values, void* stream_ptr) {
    const int64_t total = static_cast<int64_t>(args.C) * args.N;
    if (total == 0) return 0;
    const int blocks = static_cast<int>((total + kBinThreads - 1) / kBinThreads);
    bin_kernel<true><<<blocks, kBinThreads, 0, static_cast<cudaStream_t>(stream_ptr)>>>(args, order,
                                                                                        const_cast<int*>(cum), keys,
                                                                                        values);
    return cudaGetLastError();
}

Status bin_sort(const BinArgs& args, int num_pairs, uint32_t* keys0, uint32_t* keys1, int* values0, int* values1,
                int* selector, int* tile_offsets, ScratchAllocator scratch, void* stream_ptr) {
    const auto stream = static_cast<cudaStream_t>(stream_ptr);
    const int64_t num_ranges = static_cast<int64_t>(args.C) * args.tiles_x * args.tiles_y;
    cudaError_t err;
    const uint32_t* keys_sorted = keys0;
    *selector = 0;
    if (num_pairs > 0) {
        // Stable LSD radix sort over the (camera, tile) bits only: depth order within a tile is kept.
        const int end_bit = bits_for(num_ranges);
        cub::DoubleBuffer<uint32_t> d_keys(keys0, keys1);
        cub::DoubleBuffer<int> d_values(values0, values1);
        size_t temp_bytes = 0;
        err = cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, d_keys, d_values, num_pairs, 0, end_bit, stream);
        if (err != cudaSuccess) return err;
        void* temp = scratch(temp_bytes);
        err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, d_keys, d_values, num_pairs, 0, end_bit, stream);
        if (err != cudaSuccess) return err;
        keys_sorted = d_keys.Current();
        *selector = d_values.Current() == values0 ? 0 : 1;
    }
    const int threads = 256;
    const int blocks = static_cast<int>((num_ranges + 1 + threads - 1) / threads);
    tile_offsets_kernel<<<blocks, threads, 0, stream>>>(keys_sorted, num_pairs, static_cast<int>(num_ranges),
                                                        tile_offsets);
    return cudaGetLastError();
}

}  // namespace gs
