// Display packing for the viewer: the renderer's float eye images -> display-ready RGBA8, in one pass.
// Mirrors COMPOSE_FRAGMENT (viewer/_glsl.py) and its torch reference viewer.interop.display_rgba8: per output pixel
// the eye it shows (mono: eye 0; side by side: left half eye 0, right half eye 1; anaglyph: red from eye 0, green and
// blue from eye 1), shaded by mode (colour clamped to [0, 1]; alpha as grey; depth as a grey ramp over a per-eye
// range where alpha > 0.5), converted to 8 bits with round-to-nearest-even, alpha 255. Output row y is image row y
// (the viewer's convention: GL texture row 0 holds the image's top row).
#pragma once

#include "common.h"

namespace gs {

enum DisplayMode : int { kDisplayRgb = 0, kDisplayDepth = 1, kDisplayAlpha = 2 };
enum DisplayLayout : int { kLayoutMono = 0, kLayoutSideBySide = 1, kLayoutAnaglyph = 2 };

struct DisplayArgs {
    const float* image;  // [C, H, W, 3] (rgb mode), else may be nullptr
    const float* alpha;  // [C, H, W] (depth and alpha modes), else may be nullptr
    const float* depth;  // [C, H, W] (depth mode), else may be nullptr
    int eyes;            // C: 1 (mono) or 2
    int width, height;   // per eye
    int mode;            // DisplayMode
    int layout;          // DisplayLayout
    float depth_lo[2];   // depth mode: the ramp's near end per eye
    float depth_span[2]; // depth mode: max(far - near, 1e-12) per eye (float32, as the reference computes it)
};

// Output size of a layout: side by side is two eyes wide.
GS_HD int display_width(const DisplayArgs& a) { return a.layout == kLayoutSideBySide ? 2 * a.width : a.width; }

// Writes display_width(a) x a.height uchar4 pixels into linear memory (row pitch display_width * 4 bytes).
Status display_to_buffer(const DisplayArgs& a, unsigned char* out, void* stream);

// Writes the same pixels into a 2D surface (a CUDA array bound to a surface object, e.g. a GL texture registered
// with cudaGraphicsRegisterFlagsSurfaceLoadStore) of at least that size.
Status display_to_surface(const DisplayArgs& a, unsigned long long surface, void* stream);

}  // namespace gs
