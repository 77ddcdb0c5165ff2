// CPU backward of RoIAlign, the same numbers as torchvision's kernel, in parallel.
//
// torchvision's CPU backward is one serial loop over the pooled outputs (RoI, channel, bin): for
// each it recomputes the bin's sample positions and bilinear weights and adds four weighted copies
// of the output gradient into the input gradient. The weights do not depend on the channel, so it
// recomputes them C times, on one thread.
//
// Here a task owns (image, block of channels) of grad_input. It walks the RoIs of its image in
// their order and, for every sample of every bin, computes the corners once and adds the four terms
// to each channel of its block. So every element of grad_input receives the same terms, computed
// by the same expressions, in the same order (RoI, bin, sample, corner) as in torchvision's loop,
// whatever the number of threads: the result is bit for bit torchvision's, and deterministic.
#include "roi_align/roi_align.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <vector>

#include "common/bilinear.h"
#include "common/cpu_utils.h"
#include "common/roi_geometry.h"

namespace uv {
namespace {

template <typename T>
void add_roi_gradient(const T* g, int64_t sn, int64_t sc, int64_t sh, int64_t sw, const T* roi, int64_t r,
                      int64_t N, T scale, int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned,
                      int64_t H, int64_t W, int64_t c0, int64_t c1, T* plane0) {
  const auto geo = roi_geometry<T>(roi, N, scale, PH, PW, sampling_ratio, aligned);
  const int64_t plane = H * W;
  Corners<T> k;
  for (int64_t ph = 0; ph < PH; ++ph) {
    for (int64_t pw = 0; pw < PW; ++pw) {
      const T* gbin = g + r * sn + ph * sh + pw * sw;
      for (int64_t iy = 0; iy < geo.grid_h; ++iy) {
        const T y = roi_sample_y(geo, geo.start_h, ph, iy);
        for (int64_t ix = 0; ix < geo.grid_w; ++ix) {
          const T x = roi_sample_x(geo, geo.start_w, pw, ix);
          if (!clamp_corners(y, x, H, W, k)) continue;
          for (int64_t c = c0; c < c1; ++c) {
            const T go = gbin[c * sc];
            T* p = plane0 + c * plane;
            p[k.o[0]] += go * k.w[0] / geo.count;
            p[k.o[1]] += go * k.w[1] / geo.count;
            p[k.o[2]] += go * k.w[2] / geo.count;
            p[k.o[3]] += go * k.w[3] / geo.count;
          }
        }
      }
    }
  }
}

}  // namespace

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois_, double spatial_scale,
                                  int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                                  int64_t sampling_ratio, bool aligned) {
  auto grad_input = at::zeros({N, C, H, W}, grad.options());
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input;
  const auto rois = rois_.contiguous();
  const int64_t R = rois.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using T = scalar_t;
    const T* rp = rois.const_data_ptr<T>();
    std::vector<std::vector<int64_t>> of_image(N);  // the RoIs of each image, in order
    for (int64_t r = 0; r < R; ++r) {
      const int64_t b = static_cast<int64_t>(rp[r * 5]);
      if (b >= 0 && b < N) of_image[b].push_back(r);
    }
    const int64_t block = plane_block_size(N, C, H * W * int64_t(sizeof(T)), 1);
    const int64_t blocks = (C + block - 1) / block;
    const T* g = grad.const_data_ptr<T>();
    const int64_t sn = grad.stride(0), sc = grad.stride(1), sh = grad.stride(2), sw = grad.stride(3);
    T* gi = grad_input.mutable_data_ptr<T>();
    parallel_dynamic(N * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / blocks, c0 = (t % blocks) * block, c1 = std::min(C, c0 + block);
        for (const int64_t r : of_image[b]) {
          add_roi_gradient<T>(g, sn, sc, sh, sw, rp + r * 5, r, N, static_cast<T>(spatial_scale), PH, PW,
                              sampling_ratio, aligned, H, W, c0, c1, gi + b * C * H * W);
        }
      }
    });
  });
  return grad_input;
}

}  // namespace uv
