// Sort stage: pair every visible Gaussian with each 16x16 tile its alpha >= 1/255 ellipse touches (exact
// ellipse-versus-tile test on the tile's pixel centres), and sort the pairs by (camera, tile, depth) with a radix
// sort over only the bits needed. Mirrors renderer/_torch_impl.py::_bin_tiles.
#pragma once

#include <cstring>

#include "project_math.h"

namespace gs {

struct BinArgs {
    int C, N;
    int width, height;
    int tiles_x, tiles_y;
    const float* means2d;    // [C, N, 2]
    const float* conics;     // [C, N, 3]
    const float* opacities;  // [C, N]
    const float* depths;     // [C, N] sort keys (the depths, or the caller's order keys; >= 0 where visible)
    const int* radii;        // [C, N, 2]
};

// The candidate tile rectangle of one (camera, Gaussian) item and what the exact test needs.
struct TileBox {
    int x0, y0, span_x, area;  // tiles [x0, x0 + span_x) x [y0, y0 + area / span_x)
    float mx, my;              // centre in pixels
    float ca, cb, cc;          // conic
    float q_cut;               // alpha >= 1/255 cut-off on the Mahalanobis power
};

// Fills ``box`` for item i = c * N + n; returns false (area 0) for culled items.
GS_HD bool tile_box(const BinArgs& a, int i, TileBox& box) {
    box.area = 0;
    box.span_x = 1;
    box.x0 = box.y0 = 0;
    const int rx = a.radii[2 * i], ry = a.radii[2 * i + 1];
    if (rx <= 0 || ry <= 0) return false;
    box.mx = a.means2d[2 * i];
    box.my = a.means2d[2 * i + 1];
    const float ts = static_cast<float>(kTileSize);
    const float frx = static_cast<float>(rx), fry = static_cast<float>(ry);
    const int x0 = static_cast<int>(fminf(fmaxf(floorf((box.mx - frx) / ts), 0.f), static_cast<float>(a.tiles_x)));
    const int x1 = static_cast<int>(fminf(fmaxf(floorf((box.mx + frx) / ts) + 1.f, 0.f), static_cast<float>(a.tiles_x)));
    const int y0 = static_cast<int>(fminf(fmaxf(floorf((box.my - fry) / ts), 0.f), static_cast<float>(a.tiles_y)));
    const int y1 = static_cast<int>(fminf(fmaxf(floorf((box.my + fry) / ts) + 1.f, 0.f), static_cast<float>(a.tiles_y)));
    if (x1 <= x0 || y1 <= y0) return false;
    box.x0 = x0;
    box.y0 = y0;
    box.span_x = x1 - x0;
    box.area = (x1 - x0) * (y1 - y0);
    box.ca = a.conics[3 * i];
    box.cb = a.conics[3 * i + 1];
    box.cc = a.conics[3 * i + 2];
    box.q_cut = alpha_cutoff(a.opacities[i]);
    return true;
}

// Whether the k-th tile of ``box`` (row-major inside the box) is touched; writes its tile index (x + y * TX).
GS_HD bool tile_hit(const BinArgs& a, const TileBox& box, int k, int& tile) {
    const int tx = box.x0 + k % box.span_x;
    const int ty = box.y0 + k / box.span_x;
    tile = ty * a.tiles_x + tx;
    const float lox = static_cast<float>(tx * kTileSize) + 0.5f - box.mx;
    const float loy = static_cast<float>(ty * kTileSize) + 0.5f - box.my;
    const float hix = static_cast<float>(imin((tx + 1) * kTileSize, a.width)) - 0.5f - box.mx;
    const float hiy = static_cast<float>(imin((ty + 1) * kTileSize, a.height)) - 0.5f - box.my;
    return min_power_over_rect(box.ca, box.cb, box.cc, lox, loy, hix, hiy) <= box.q_cut;
}

// Sort key of one pair as a single 64-bit value: (camera * tiles + tile) in the high 32 bits, the bits of the
// positive float depth in the low 32 (the order the CUDA path reaches with a depth sort then a stable tile sort).
GS_HD uint64_t pair_key(int cam_tile, float depth) {
    uint32_t bits;
    memcpy(&bits, &depth, sizeof(bits));
    return (static_cast<uint64_t>(cam_tile) << 32) | bits;
}

// Host entry points. The pairs are found in passes so that only the total needs a host sync, and so that the
// caller can free each buffer as soon as it is spent (peak memory):
// bin_count: ``order`` [C * N] receives the items (c * N + n) sorted front to back, ``cum`` [C * N] the inclusive
// prefix sum of their pair counts in that order (the caller reads the total, cum[C * N - 1]), ``visible_counts``
// [C] (zeroed by the caller) the visible items per camera. ``keys0``, ``keys1`` [C * N] and ``items0`` [C * N] are
// the depth sort's double buffers. ``presorted``: the items are front to back in index order already; ``order`` is
// then the identity and the depth sort is skipped.
Status bin_count(const BinArgs& args, uint32_t* keys0, uint32_t* keys1, int* items0, int* order, int* cum,
                 int* visible_counts, bool presorted, ScratchAllocator scratch, void* stream);
// bin_emit: writes the (camera, tile) ``keys`` [num_pairs] and Gaussian ids ``values`` [num_pairs] in depth order.
Status bin_emit(const BinArgs& args, const int* order, const int* cum, uint32_t* keys, int* values, void* stream);
// bin_sort: stable sort of the pairs by (camera, tile) over the double buffers (keys0/values0 hold the emitted
// pairs); ``*selector`` says which values buffer holds the sorted Gaussian ids (0: values0, 1: values1), and
// ``tile_offsets`` [C * tiles + 1] receives the start of each (camera, tile) range.
Status bin_sort(const BinArgs& args, int num_pairs, uint32_t* keys0, uint32_t* keys1, int* values0, int* values1,
                int* selector, int* tile_offsets, ScratchAllocator scratch, void* stream);

}  // namespace gs
