// Bilinear interpolation helpers shared by the CPU and CUDA kernels of unified_vision.
//
// Two border conventions live here, both in *index space* (pixel (i, j) of an H x W map sits at
// continuous coordinate (y, x) = (i, j)):
//
//  * `zero_pad_corners` -- grid_sample(align_corners=False, padding_mode="zeros") style: the four
//    integer neighbours of (y, x) are read with the usual bilinear weights and every neighbour that
//    falls outside the map contributes zero. Used by point_sample and ms_deform_attn.
//  * `clamp_corners` -- the RoIAlign convention of torchvision / Detectron2 / mmcv: a sample more
//    than one pixel outside the map is zero, otherwise the position is clamped into the map.
//    Used by deform_roi_pool so that zero offsets reproduce torchvision.ops.roi_align exactly.
//
// Both fill a `Corners` record: four flat offsets (y * W + x) into a map, four weights and the
// derivatives of the weights with respect to x and y. Out-of-map corners get offset 0 and weight 0,
// so the callers can read all four corners without branches.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define UV_HOST_DEVICE __host__ __device__ __forceinline__
#define UV_UNROLL _Pragma("unroll")
#else
#define UV_HOST_DEVICE inline
#define UV_UNROLL
#endif

namespace uv {

template <typename T>
struct Corners {
  int64_t o[4];  // flat offsets of the (y0,x0), (y0,x1), (y1,x0), (y1,x1) neighbours
  T w[4];        // bilinear weights (0 for an out-of-map neighbour)
  T dx[4];       // d w / d x
  T dy[4];       // d w / d y
};

// Zero-padding bilinear corners at index-space position (y, x). Returns false (and zero weights)
// when no neighbour is inside the map.
template <typename T>
UV_HOST_DEVICE bool zero_pad_corners(T y, T x, int64_t H, int64_t W, Corners<T>& c) {
UV_UNROLL
  for (int i = 0; i < 4; ++i) {
    c.o[i] = 0;
    c.w[i] = T(0);
    c.dx[i] = T(0);
    c.dy[i] = T(0);
  }
  // Written so that NaN positions are rejected as well.
  if (H <= 0 || W <= 0) return false;
  if (!(y > T(-1) && y < static_cast<T>(H) && x > T(-1) && x < static_cast<T>(W))) return false;
  const T yf = ::floor(y), xf = ::floor(x);
  const int64_t y0 = static_cast<int64_t>(yf), x0 = static_cast<int64_t>(xf);
  const int64_t y1 = y0 + 1, x1 = x0 + 1;
  const T ly = y - yf, lx = x - xf;
  const T hy = T(1) - ly, hx = T(1) - lx;
  const bool vy0 = y0 >= 0, vy1 = y1 < H, vx0 = x0 >= 0, vx1 = x1 < W;
  if (vy0 && vx0) { c.o[0] = y0 * W + x0; c.w[0] = hy * hx; c.dx[0] = -hy; c.dy[0] = -hx; }
  if (vy0 && vx1) { c.o[1] = y0 * W + x1; c.w[1] = hy * lx; c.dx[1] = hy;  c.dy[1] = -lx; }
  if (vy1 && vx0) { c.o[2] = y1 * W + x0; c.w[2] = ly * hx; c.dx[2] = -ly; c.dy[2] = hx; }
  if (vy1 && vx1) { c.o[3] = y1 * W + x1; c.w[3] = ly * lx; c.dx[3] = ly;  c.dy[3] = lx; }
  return true;
}

// RoIAlign (torchvision) bilinear corners at index-space position (y, x). The derivative of a
// coordinate is zero where it was clamped (the interpolated value does not move with it there).
template <typename T>
UV_HOST_DEVICE bool clamp_corners(T y, T x, int64_t H, int64_t W, Corners<T>& c) {
UV_UNROLL
  for (int i = 0; i < 4; ++i) {
    c.o[i] = 0;
    c.w[i] = T(0);
    c.dx[i] = T(0);
    c.dy[i] = T(0);
  }
  if (!(y >= T(-1) && y <= static_cast<T>(H) && x >= T(-1) && x <= static_cast<T>(W))) return false;
  if (H <= 0 || W <= 0) return false;
  T gy = T(1), gx = T(1);  // 1 where the coordinate moves freely, 0 where it is clamped
  if (y <= T(0)) { y = T(0); gy = T(0); }
  if (x <= T(0)) { x = T(0); gx = T(0); }
  int64_t y0 = static_cast<int64_t>(y), x0 = static_cast<int64_t>(x), y1, x1;
  if (y0 >= H - 1) { y0 = y1 = H - 1; y = static_cast<T>(y0); gy = T(0); } else { y1 = y0 + 1; }
  if (x0 >= W - 1) { x0 = x1 = W - 1; x = static_cast<T>(x0); gx = T(0); } else { x1 = x0 + 1; }
  const T ly = y - static_cast<T>(y0), lx = x - static_cast<T>(x0);
  const T hy = T(1) - ly, hx = T(1) - lx;
  c.o[0] = y0 * W + x0; c.o[1] = y0 * W + x1; c.o[2] = y1 * W + x0; c.o[3] = y1 * W + x1;
  c.w[0] = hy * hx; c.w[1] = hy * lx; c.w[2] = ly * hx; c.w[3] = ly * lx;
  c.dx[0] = -hy * gx; c.dx[1] = hy * gx; c.dx[2] = -ly * gx; c.dx[3] = ly * gx;
  c.dy[0] = -hx * gy; c.dy[1] = -lx * gy; c.dy[2] = hx * gy; c.dy[3] = lx * gy;
  return true;
}

}  // namespace uv
