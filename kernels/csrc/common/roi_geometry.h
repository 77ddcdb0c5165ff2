// Geometry of one RoI, shared by the CPU and CUDA kernels of deform_roi_pool (aligned=True, as
// torchvision.ops.roi_align and mmcv DeformRoIPool), and for the CPU backward of RoIAlign (either
// `aligned`):
//   start = corner * spatial_scale - 0.5, size = end - start (no clamping to one pixel),
//   or, with aligned=False, start = corner * spatial_scale and size = max(end - start, 1),
//   bin = size / pooled, grid = sampling_ratio > 0 ? sampling_ratio : ceil(size / pooled),
//   count = max(grid_h * grid_w, 1).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/bilinear.h"

namespace uv {

template <typename T>
struct RoiGeometry {
  int64_t batch;  // -1 when the batch index is out of range (the RoI then pools zeros)
  T start_h, start_w, roi_h, roi_w, bin_h, bin_w, count;
  int64_t grid_h, grid_w;
};

// `roi` holds [batch_index, x1, y1, x2, y2] already converted to T.
template <typename T>
UV_HOST_DEVICE RoiGeometry<T> roi_geometry(const T roi[5], int64_t N, T scale, int64_t PH, int64_t PW,
                                           int64_t sampling_ratio, bool aligned = true) {
  RoiGeometry<T> g;
  const int64_t b = static_cast<int64_t>(roi[0]);
  g.batch = (b >= 0 && b < N) ? b : -1;
  const T offset = aligned ? T(0.5) : T(0);
  g.start_w = roi[1] * scale - offset;
  g.start_h = roi[2] * scale - offset;
  const T end_w = roi[3] * scale - offset;
  const T end_h = roi[4] * scale - offset;
  g.roi_w = end_w - g.start_w;
  g.roi_h = end_h - g.start_h;
  if (!aligned) {  // torchvision forces a malformed RoI to one pixel
    g.roi_w = g.roi_w < T(1) ? T(1) : g.roi_w;
    g.roi_h = g.roi_h < T(1) ? T(1) : g.roi_h;
  }
  g.bin_h = g.roi_h / static_cast<T>(PH);
  g.bin_w = g.roi_w / static_cast<T>(PW);
  if (sampling_ratio > 0) {
    g.grid_h = g.grid_w = sampling_ratio;
  } else {
    const T gh = ::ceil(g.roi_h / static_cast<T>(PH)), gw = ::ceil(g.roi_w / static_cast<T>(PW));
    // Negative or NaN sizes give an empty grid (and a zero output).
    g.grid_h = gh > T(0) ? static_cast<int64_t>(gh) : 0;
    g.grid_w = gw > T(0) ? static_cast<int64_t>(gw) : 0;
  }
  const int64_t n = g.grid_h * g.grid_w;
  g.count = static_cast<T>(n > 1 ? n : 1);
  return g;
}

// Index-space position of sample (iy, ix) of bin (ph, pw) whose start was shifted to (sh, sw).
template <typename T>
UV_HOST_DEVICE T roi_sample_y(const RoiGeometry<T>& g, T sh, int64_t ph, int64_t iy) {
  return sh + static_cast<T>(ph) * g.bin_h + static_cast<T>(iy + .5f) * g.bin_h / static_cast<T>(g.grid_h);
}
template <typename T>
UV_HOST_DEVICE T roi_sample_x(const RoiGeometry<T>& g, T sw, int64_t pw, int64_t ix) {
  return sw + static_cast<T>(pw) * g.bin_w + static_cast<T>(ix + .5f) * g.bin_w / static_cast<T>(g.grid_w);
}

}  // namespace uv
