// CPU kernels of point_sample.
//
// Two paths, following the memory format of the features (unified_vision.ops.point_sample makes
// them channels_last when the points read the map densely, 4 * points per image >= pixels):
//  * channel-last (NHWC): each bilinear corner is one contiguous, vectorisable row of channels; one
//    task per group of points (forward) or per (image, block of channels) (backward); the feature
//    gradient is returned channels_last too.
//  * channel-first (NCHW), for large maps read sparsely (e.g. a stride-4 COCO level): one task per
//    (image, block of channels), visiting the image's points sorted by the map row they read, so
//    the part of each plane in use is a thin band that stays in cache.
// Backward: tasks own disjoint channel slices of grad_features (no atomics) and write partial point
// gradients that are summed over the channel blocks at the end.
#include "point_sample/point_sample.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "common/bilinear.h"
#include "common/cpu_utils.h"

namespace uv {
namespace {

// The kernels follow the memory format of the features: channels_last input takes the
// channel-last path (the Python wrapper converts dense cases), anything else the channel-first one.
bool use_channels_last(const at::Tensor& features) {
  return !features.is_contiguous() && features.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// For every image, the indices of its points ordered by the map row they read (a counting sort).
template <typename scalar_t>
std::vector<int64_t> row_order(const scalar_t* pts, int64_t N, int64_t PK, int64_t H) {
  std::vector<int64_t> order(N * PK), count(H + 3);
  for (int64_t n = 0; n < N; ++n) {
    std::fill(count.begin(), count.end(), 0);
    const scalar_t* pn = pts + n * PK * 2;
    auto bucket = [&](int64_t pk) -> int64_t {
      const scalar_t y = pn[2 * pk + 1] - scalar_t(0.5);
      if (!(y > scalar_t(-1) && y < static_cast<scalar_t>(H))) return H + 1;  // outside (or NaN)
      return static_cast<int64_t>(std::floor(y)) + 1;                        // 0 .. H
    };
    for (int64_t pk = 0; pk < PK; ++pk) ++count[bucket(pk) + 1];
    for (int64_t b = 1; b < H + 3; ++b) count[b] += count[b - 1];
    int64_t* on = order.data() + n * PK;
    for (int64_t pk = 0; pk < PK; ++pk) on[count[bucket(pk)]++] = pk;
  }
  return order;
}

template <typename T>
inline bool corner_unused(const Corners<T>& c, int k) {
  return c.w[k] == T(0) && c.dx[k] == T(0) && c.dy[k] == T(0);
}

}  // namespace

at::Tensor point_sample_forward_cpu(const at::Tensor& features_, const at::Tensor& points_) {
  const at::Tensor points = points_.contiguous();
  const int64_t N = features_.size(0), C = features_.size(1), H = features_.size(2), W = features_.size(3);
  const int64_t P = points.size(1), K = points.size(2), PK = P * K, HW = H * W;
  at::Tensor out = at::empty({N, P, K, C}, features_.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  if (HW == 0) return out.zero_();

  if (use_channels_last(features_)) {
    const at::Tensor& features = features_;
    AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "point_sample_forward_cpu_nhwc", [&] {
      const scalar_t* f = features.const_data_ptr<scalar_t>();
      const scalar_t* pts = points.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      parallel_dynamic(N * PK, std::max<int64_t>(1, 2048 / C), [&](int64_t begin, int64_t end) {
        Corners<scalar_t> c;
        for (int64_t i = begin; i < end; ++i) {
          scalar_t* __restrict__ oi = o + i * C;
          const scalar_t x = pts[2 * i] - scalar_t(0.5), y = pts[2 * i + 1] - scalar_t(0.5);
          if (!zero_pad_corners(y, x, H, W, c)) {
            std::fill(oi, oi + C, scalar_t(0));
            continue;
          }
          const scalar_t* img = f + (i / PK) * HW * C;
          const scalar_t* __restrict__ r0 = img + c.o[0] * C;
          const scalar_t* __restrict__ r1 = img + c.o[1] * C;
          const scalar_t* __restrict__ r2 = img + c.o[2] * C;
          const scalar_t* __restrict__ r3 = img + c.o[3] * C;
          const scalar_t w0 = c.w[0], w1 = c.w[1], w2 = c.w[2], w3 = c.w[3];
          for (int64_t ch = 0; ch < C; ++ch) oi[ch] = w0 * r0[ch] + w1 * r1[ch] + w2 * r2[ch] + w3 * r3[ch];
        }
      });
    });
    return out;
  }

  const at::Tensor features = features_.contiguous();
  const int64_t cs = channel_block_size(N, C, 8);
  const int64_t nb = (C + cs - 1) / cs;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "point_sample_forward_cpu", [&] {
    const scalar_t* f = features.const_data_ptr<scalar_t>();
    const scalar_t* pts = points.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const std::vector<int64_t> order = row_order(pts, N, PK, H);
    parallel_dynamic(N * nb, 1, [&](int64_t begin, int64_t end) {
      Corners<scalar_t> c;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / nb, blk = t % nb;
        const int64_t c0 = blk * cs, cn = std::min(C, c0 + cs) - c0;
        const scalar_t* fn = f + (n * C + c0) * HW;
        for (int64_t j = 0; j < PK; ++j) {
          const int64_t i = n * PK + order[n * PK + j];
          scalar_t* oi = o + i * C + c0;
          const scalar_t x = pts[2 * i] - scalar_t(0.5), y = pts[2 * i + 1] - scalar_t(0.5);
          if (!zero_pad_corners(y, x, H, W, c)) {
            std::fill(oi, oi + cn, scalar_t(0));
            continue;
          }
          const int64_t o0 = c.o[0], o1 = c.o[1], o2 = c.o[2], o3 = c.o[3];
          const scalar_t w0 = c.w[0], w1 = c.w[1], w2 = c.w[2], w3 = c.w[3];
          for (int64_t ch = 0; ch < cn; ++ch) {
            const scalar_t* pl = fn + ch * HW;
            oi[ch] = w0 * pl[o0] + w1 * pl[o1] + w2 * pl[o2] + w3 * pl[o3];
          }
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> point_sample_backward_cpu(const at::Tensor& grad_output_,
                                                             const at::Tensor& features_,
                                                             const at::Tensor& points_) {
  const at::Tensor points = points_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t N = features_.size(0), C = features_.size(1), H = features_.size(2), W = features_.size(3);
  const int64_t P = points.size(1), K = points.size(2), PK = P * K, HW = H * W;
  const auto opts = features_.options().memory_format(at::MemoryFormat::Contiguous);
  const bool nhwc = use_channels_last(features_);
  if (N * PK == 0 || C == 0 || HW == 0)
    return {at::empty({N, C, H, W}, features_.options(),
                      nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous).zero_(),
            at::zeros_like(points)};
  const at::Tensor features = nhwc ? features_ : features_.contiguous();
  // grad_features is accumulated in the layout being read: (N, H, W, C) or (N, C, H, W). Every
  // task zeroes the part it owns right before scattering into it (one pass, cache-hot, and no
  // separate parallel fill), so the buffers start uninitialised.
  at::Tensor grad_buf = nhwc ? at::empty({N, H, W, C}, opts) : at::empty({N, C, H, W}, opts);
  at::Tensor grad_points = at::empty_like(points);

  const int64_t cs = channel_block_size(N, C, nhwc ? 16 : 8);
  const int64_t nb = (C + cs - 1) / cs;
  // Per-block partial point gradients (every entry is written), summed at the end.
  at::Tensor partial = nb == 1 ? grad_points : at::empty({nb, N, P, K, 2}, points.options());

  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "point_sample_backward_cpu", [&] {
    const scalar_t* f = features.const_data_ptr<scalar_t>();
    const scalar_t* pts = points.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gf = grad_buf.mutable_data_ptr<scalar_t>();
    scalar_t* part = partial.mutable_data_ptr<scalar_t>();
    const std::vector<int64_t> order = nhwc ? std::vector<int64_t>() : row_order(pts, N, PK, H);
    parallel_dynamic(N * nb, 1, [&](int64_t begin, int64_t end) {
      Corners<scalar_t> c;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / nb, blk = t % nb;
        const int64_t c0 = blk * cs, cn = std::min(C, c0 + cs) - c0;
        scalar_t* pp = part + (blk * N + n) * PK * 2;
        if (nhwc) {
          scalar_t* gimg = gf + n * HW * C + c0;
          for (int64_t px = 0; px < HW; ++px) std::fill(gimg + px * C, gimg + px * C + cn, scalar_t(0));
        } else {
          std::fill(gf + (n * C + c0) * HW, gf + (n * C + c0 + cn) * HW, scalar_t(0));
        }
        for (int64_t j = 0; j < PK; ++j) {
          const int64_t pk = nhwc ? j : order[n * PK + j], i = n * PK + pk;
          const scalar_t x = pts[2 * i] - scalar_t(0.5), y = pts[2 * i + 1] - scalar_t(0.5);
          if (!zero_pad_corners(y, x, H, W, c)) {
            pp[2 * pk] = scalar_t(0);
            pp[2 * pk + 1] = scalar_t(0);
            continue;
          }
          const scalar_t* __restrict__ g = go + i * C + c0;
          scalar_t gx = 0, gy = 0;
          if (nhwc) {
            const scalar_t* img = f + n * HW * C + c0;
            scalar_t* gimg = gf + n * HW * C + c0;
            for (int k = 0; k < 4; ++k) {
              if (corner_unused(c, k)) continue;  // outside the map
              const scalar_t* __restrict__ row = img + c.o[k] * C;
              scalar_t* __restrict__ grow = gimg + c.o[k] * C;
              const scalar_t w = c.w[k];
              const scalar_t d = dot(g, row, cn);
              for (int64_t ch = 0; ch < cn; ++ch) grow[ch] += w * g[ch];
              gx += c.dx[k] * d;
              gy += c.dy[k] * d;
            }
          } else {
            const scalar_t* fn = f + (n * C + c0) * HW;
            scalar_t* gfn = gf + (n * C + c0) * HW;
            const int64_t o0 = c.o[0], o1 = c.o[1], o2 = c.o[2], o3 = c.o[3];
            const scalar_t w0 = c.w[0], w1 = c.w[1], w2 = c.w[2], w3 = c.w[3];
            const scalar_t dx0 = c.dx[0], dx1 = c.dx[1], dx2 = c.dx[2], dx3 = c.dx[3];
            const scalar_t dy0 = c.dy[0], dy1 = c.dy[1], dy2 = c.dy[2], dy3 = c.dy[3];
            for (int64_t ch = 0; ch < cn; ++ch) {
              const scalar_t gc = g[ch];
              const scalar_t* pl = fn + ch * HW;
              scalar_t* gpl = gfn + ch * HW;
              const scalar_t v0 = pl[o0], v1 = pl[o1], v2 = pl[o2], v3 = pl[o3];
              gx += gc * (dx0 * v0 + dx1 * v1 + dx2 * v2 + dx3 * v3);
              gy += gc * (dy0 * v0 + dy1 * v1 + dy2 * v2 + dy3 * v3);
              gpl[o0] += w0 * gc;
              gpl[o1] += w1 * gc;
              gpl[o2] += w2 * gc;
              gpl[o3] += w3 * gc;
            }
          }
          pp[2 * pk] = gx;
          pp[2 * pk + 1] = gy;
        }
      }
    });
  });
  if (nb > 1) {
    AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "point_sample_backward_cpu_sum", [&] {
      sum_blocks(partial.const_data_ptr<scalar_t>(), nb, N * PK * 2, grad_points.mutable_data_ptr<scalar_t>());
    });
  }
  // In the channel-last case the gradient is returned channels_last, like the features.
  at::Tensor grad_features = nhwc ? grad_buf.permute({0, 3, 1, 2}) : grad_buf;
  return {grad_features, grad_points};
}

}  // namespace uv
