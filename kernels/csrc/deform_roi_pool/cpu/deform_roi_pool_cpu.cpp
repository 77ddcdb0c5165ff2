// CPU kernels of deform_roi_pool.
//
// Geometry of one RoI (aligned=True, as torchvision.ops.roi_align and mmcv DeformRoIPool):
//   start = roi_corner * spatial_scale - 0.5, size = end - start (no clamping to 1),
//   bin = size / pooled, grid = sampling_ratio > 0 ? sampling_ratio : ceil(size / pooled),
//   bin (ph, pw) is shifted by (gamma * roi_w * offsets[r, 0, ph, pw], gamma * roi_h * offsets[r, 1, ph, pw])
//   and averages grid_h x grid_w RoIAlign (clamped) bilinear samples.
//
// The kernels work on a channel-last copy of the input, so every bilinear corner is one contiguous
// row of channels (vectorised loops, one cache-friendly read per corner instead of one per channel).
// Forward: one task per (RoI, channel block); the bilinear corners of all the RoI's samples are
// computed once per task. Backward: one task per (image, channel block) walking the RoIs of that
// image; a task owns its channel slice of grad_input (no atomics) and writes a partial
// grad_offsets that is summed over channel blocks at the end.
#include "deform_roi_pool/deform_roi_pool.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "common/bilinear.h"
#include "common/cpu_utils.h"
#include "common/roi_geometry.h"

namespace uv {
namespace {

// Bilinear corners of every sample of every bin of one RoI, bin-major.
template <typename T>
void roi_samples(const RoiGeometry<T>& g, const T* off, T gamma, int64_t PH, int64_t PW, int64_t H,
                 int64_t W, std::vector<Corners<T>>& out) {
  const int64_t per_bin = g.grid_h * g.grid_w;
  out.resize(PH * PW * per_bin);
  const T* off_x = off;
  const T* off_y = off + PH * PW;
  int64_t s = 0;
  for (int64_t ph = 0; ph < PH; ++ph) {
    for (int64_t pw = 0; pw < PW; ++pw) {
      const int64_t bin = ph * PW + pw;
      const T sh = g.start_h + gamma * g.roi_h * off_y[bin];
      const T sw = g.start_w + gamma * g.roi_w * off_x[bin];
      for (int64_t iy = 0; iy < g.grid_h; ++iy) {
        const T y = roi_sample_y(g, sh, ph, iy);
        for (int64_t ix = 0; ix < g.grid_w; ++ix) {
          const T x = roi_sample_x(g, sw, pw, ix);
          clamp_corners(y, x, H, W, out[s++]);
        }
      }
    }
  }
}

}  // namespace

at::Tensor deform_roi_pool_forward_cpu(const at::Tensor& input_, const at::Tensor& rois_,
                                       const at::Tensor& offsets_, int64_t PH, int64_t PW,
                                       double spatial_scale, int64_t sampling_ratio, double gamma) {
  // Channel-last input: each bilinear corner is one contiguous row of C numbers (a copy unless the
  // input already is channels_last).
  const at::Tensor input = input_.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor rois = rois_.contiguous();
  const at::Tensor offsets = offsets_.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t R = rois.size(0);
  if (R * C * PH * PW == 0 || H * W == 0) return at::zeros({R, C, PH, PW}, input.options());
  at::Tensor out = at::empty({R, C, PH, PW}, input.options());  // every entry is written below
  const int64_t cs = channel_block_size(R, C, 64);
  const int64_t nb = (C + cs - 1) / cs;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_roi_pool_forward_cpu", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* rp = rois.const_data_ptr<scalar_t>();
    const scalar_t* op = offsets.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t scale = static_cast<scalar_t>(spatial_scale);
    const scalar_t gam = static_cast<scalar_t>(gamma);
    const int64_t HW = H * W, PHW = PH * PW;
    parallel_dynamic(R * nb, 2, [&](int64_t begin, int64_t end) {
      std::vector<Corners<scalar_t>> samples;
      std::vector<scalar_t> acc_buf(cs);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t r = t / nb, blk = t % nb;
        const int64_t c0 = blk * cs, cn = std::min(C, c0 + cs) - c0;
        const auto g = roi_geometry<scalar_t>(rp + r * 5, N, scale, PH, PW, sampling_ratio);
        if (g.batch < 0) {  // batch index out of range: zeros
          std::fill(o + (r * C + c0) * PHW, o + (r * C + c0 + cn) * PHW, scalar_t(0));
          continue;
        }
        roi_samples(g, op + r * 2 * PHW, gam, PH, PW, H, W, samples);
        const int64_t per_bin = g.grid_h * g.grid_w;
        const scalar_t* img = in + g.batch * HW * C + c0;
        scalar_t* __restrict__ acc = acc_buf.data();
        const Corners<scalar_t>* s = samples.data();
        for (int64_t bin = 0; bin < PHW; ++bin) {
          std::fill(acc, acc + cn, scalar_t(0));
          for (int64_t k = 0; k < per_bin; ++k, ++s) {
            const scalar_t w0 = s->w[0], w1 = s->w[1], w2 = s->w[2], w3 = s->w[3];
            if (w0 == 0 && w1 == 0 && w2 == 0 && w3 == 0) continue;  // outside the map
            const scalar_t* __restrict__ r0 = img + s->o[0] * C;
            const scalar_t* __restrict__ r1 = img + s->o[1] * C;
            const scalar_t* __restrict__ r2 = img + s->o[2] * C;
            const scalar_t* __restrict__ r3 = img + s->o[3] * C;
            for (int64_t c = 0; c < cn; ++c) acc[c] += w0 * r0[c] + w1 * r1[c] + w2 * r2[c] + w3 * r3[c];
          }
          scalar_t* ob = o + (r * C + c0) * PHW + bin;
          for (int64_t c = 0; c < cn; ++c) ob[c * PHW] = acc[c] / g.count;
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> deform_roi_pool_backward_cpu(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& rois_,
    const at::Tensor& offsets_, int64_t PH, int64_t PW, double spatial_scale,
    int64_t sampling_ratio, double gamma) {
  const at::Tensor input = input_.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor rois = rois_.contiguous();
  const at::Tensor offsets = offsets_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t R = rois.size(0);
  // The input gradient is accumulated channel-last and returned as a channels_last tensor (the
  // layout the reference's autograd produces too).
  at::Tensor grad_input = at::empty(input.sizes(), input.options(), at::MemoryFormat::ChannelsLast);
  if (R == 0 || C == 0 || H * W == 0 || PH * PW == 0) return {grad_input.zero_(), at::zeros_like(offsets)};
  // grad_input is zeroed by the tasks, each its own channel slice, right before they scatter.
  const int64_t cs = channel_block_size(N, C, 16);
  const int64_t nb = (C + cs - 1) / cs;
  // Per-block partial offset gradients (zero for RoIs that no task visits), summed at the end.
  at::Tensor partial = at::zeros({nb, R, 2, PH, PW}, offsets.options());
  at::Tensor grad_offsets = nb == 1 ? partial[0] : at::empty_like(offsets);

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_roi_pool_backward_cpu", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* rp = rois.const_data_ptr<scalar_t>();
    const scalar_t* op = offsets.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    scalar_t* part = partial.mutable_data_ptr<scalar_t>();
    const scalar_t scale = static_cast<scalar_t>(spatial_scale);
    const scalar_t gam = static_cast<scalar_t>(gamma);
    const int64_t HW = H * W, PHW = PH * PW;
    parallel_dynamic(N * nb, 1, [&](int64_t begin, int64_t end) {
      std::vector<Corners<scalar_t>> samples;
      // g: upstream gradient of the bin; u, v: sum over the bin's samples and corners of
      // (d w / d x) * row and (d w / d y) * row, so that the offset gradient is one dot per bin.
      std::vector<scalar_t> buf(3 * cs);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / nb, blk = t % nb;
        const int64_t c0 = blk * cs, cn = std::min(C, c0 + cs) - c0;
        const scalar_t* img = in + n * HW * C + c0;
        scalar_t* gimg = gi + n * HW * C + c0;
        for (int64_t px = 0; px < HW; ++px) std::fill(gimg + px * C, gimg + px * C + cn, scalar_t(0));
        scalar_t* __restrict__ gb = buf.data();
        scalar_t* __restrict__ u = buf.data() + cs;
        scalar_t* __restrict__ v = buf.data() + 2 * cs;
        for (int64_t r = 0; r < R; ++r) {
          const auto g = roi_geometry<scalar_t>(rp + r * 5, N, scale, PH, PW, sampling_ratio);
          if (g.batch != n) continue;
          const int64_t per_bin = g.grid_h * g.grid_w;
          if (per_bin == 0) continue;  // empty RoI: zero output, zero gradients
          roi_samples(g, op + r * 2 * PHW, gam, PH, PW, H, W, samples);
          scalar_t* pr = part + (blk * R + r) * 2 * PHW;
          const scalar_t fx = gam * g.roi_w, fy = gam * g.roi_h;
          const Corners<scalar_t>* s = samples.data();
          for (int64_t bin = 0; bin < PHW; ++bin) {
            const scalar_t* gob = go + (r * C + c0) * PHW + bin;
            for (int64_t c = 0; c < cn; ++c) gb[c] = gob[c * PHW] / g.count;
            std::fill(u, u + cn, scalar_t(0));
            std::fill(v, v + cn, scalar_t(0));
            for (int64_t k = 0; k < per_bin; ++k, ++s) {
              for (int q = 0; q < 4; ++q) {
                const scalar_t w = s->w[q], dx = s->dx[q], dy = s->dy[q];
                if (w == 0 && dx == 0 && dy == 0) continue;  // outside the map
                const scalar_t* __restrict__ row = img + s->o[q] * C;
                scalar_t* __restrict__ grow = gimg + s->o[q] * C;
                for (int64_t c = 0; c < cn; ++c) {
                  u[c] += dx * row[c];
                  v[c] += dy * row[c];
                  grow[c] += w * gb[c];
                }
              }
            }
            pr[bin] = dot(gb, u, cn) * fx;
            pr[PHW + bin] = dot(gb, v, cn) * fy;
          }
        }
      }
    });
  });
  if (nb > 1) {
    AT_DISPATCH_FLOATING_TYPES(offsets.scalar_type(), "deform_roi_pool_backward_cpu_sum", [&] {
      sum_blocks(partial.const_data_ptr<scalar_t>(), nb, R * 2 * PH * PW, grad_offsets.mutable_data_ptr<scalar_t>());
    });
  }
  return {grad_input, grad_offsets};
}

}  // namespace uv
