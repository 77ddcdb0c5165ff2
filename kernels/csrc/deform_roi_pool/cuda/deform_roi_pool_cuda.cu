// CUDA kernels of deform_roi_pool: one thread per output element (RoI, channel, bin). The backward
// scatters into the input gradient and sums the offset gradient over channels with atomicAdd, in
// buffers of the accumulation type (float for half / bfloat16).
#include "deform_roi_pool/deform_roi_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/bilinear.h"
#include "common/cuda_utils.cuh"
#include "common/roi_geometry.h"

namespace uv {
namespace {

template <typename scalar_t>
__device__ __forceinline__ RoiGeometry<at::opmath_type<scalar_t>> load_roi(
    const scalar_t* rois, int64_t r, int64_t N, at::opmath_type<scalar_t> scale, int64_t PH,
    int64_t PW, int64_t sampling_ratio) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t roi[5];
#pragma unroll
  for (int k = 0; k < 5; ++k) roi[k] = static_cast<acc_t>(rois[r * 5 + k]);
  return roi_geometry<acc_t>(roi, N, scale, PH, PW, sampling_ratio);
}

template <typename scalar_t>
__global__ void deform_roi_pool_forward_kernel(int64_t total, const scalar_t* __restrict__ input,
                                               const scalar_t* __restrict__ rois,
                                               const scalar_t* __restrict__ offsets,
                                               scalar_t* __restrict__ out, int64_t N, int64_t C,
                                               int64_t H, int64_t W, int64_t PH, int64_t PW,
                                               at::opmath_type<scalar_t> scale,
                                               int64_t sampling_ratio,
                                               at::opmath_type<scalar_t> gamma) {
  using acc_t = at::opmath_type<scalar_t>;
  UV_CUDA_LOOP(i, total) {
    const int64_t pw = i % PW, ph = (i / PW) % PH, c = (i / (PW * PH)) % C, r = i / (PW * PH * C);
    const auto g = load_roi(rois, r, N, scale, PH, PW, sampling_ratio);
    if (g.batch < 0) {
      out[i] = static_cast<scalar_t>(0);
      continue;
    }
    const int64_t bin = ph * PW + pw;
    const acc_t ox = static_cast<acc_t>(offsets[(r * 2) * PH * PW + bin]);
    const acc_t oy = static_cast<acc_t>(offsets[(r * 2 + 1) * PH * PW + bin]);
    const acc_t sh = g.start_h + gamma * g.roi_h * oy;
    const acc_t sw = g.start_w + gamma * g.roi_w * ox;
    const scalar_t* pl = input + (g.batch * C + c) * H * W;
    acc_t sum = acc_t(0);
    Corners<acc_t> cr;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const acc_t y = roi_sample_y(g, sh, ph, iy);
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const acc_t x = roi_sample_x(g, sw, pw, ix);
        if (!clamp_corners(y, x, H, W, cr)) continue;
#pragma unroll
        for (int k = 0; k < 4; ++k) sum += cr.w[k] * static_cast<acc_t>(pl[cr.o[k]]);
      }
    }
    out[i] = static_cast<scalar_t>(sum / g.count);
  }
}

template <typename scalar_t>
__global__ void deform_roi_pool_backward_kernel(
    int64_t total, const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ rois, const scalar_t* __restrict__ offsets,
    at::opmath_type<scalar_t>* grad_input, at::opmath_type<scalar_t>* grad_offsets, int64_t N,
    int64_t C, int64_t H, int64_t W, int64_t PH, int64_t PW, at::opmath_type<scalar_t> scale,
    int64_t sampling_ratio, at::opmath_type<scalar_t> gamma) {
  using acc_t = at::opmath_type<scalar_t>;
  UV_CUDA_LOOP(i, total) {
    const int64_t pw = i % PW, ph = (i / PW) % PH, c = (i / (PW * PH)) % C, r = i / (PW * PH * C);
    const auto g = load_roi(rois, r, N, scale, PH, PW, sampling_ratio);
    if (g.batch < 0 || g.grid_h * g.grid_w == 0) continue;
    const int64_t bin = ph * PW + pw;
    const acc_t ox = static_cast<acc_t>(offsets[(r * 2) * PH * PW + bin]);
    const acc_t oy = static_cast<acc_t>(offsets[(r * 2 + 1) * PH * PW + bin]);
    const acc_t sh = g.start_h + gamma * g.roi_h * oy;
    const acc_t sw = g.start_w + gamma * g.roi_w * ox;
    const int64_t plane = (g.batch * C + c) * H * W;
    const scalar_t* pl = input + plane;
    const acc_t gb = static_cast<acc_t>(grad_output[i]) / g.count;
    acc_t sx = acc_t(0), sy = acc_t(0);
    Corners<acc_t> cr;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const acc_t y = roi_sample_y(g, sh, ph, iy);
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const acc_t x = roi_sample_x(g, sw, pw, ix);
        if (!clamp_corners(y, x, H, W, cr)) continue;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const acc_t v = static_cast<acc_t>(pl[cr.o[k]]);
          sx += cr.dx[k] * v;
          sy += cr.dy[k] * v;
          if (cr.w[k] != acc_t(0)) gpuAtomicAddNoReturn(grad_input + plane + cr.o[k], cr.w[k] * gb);
        }
      }
    }
    gpuAtomicAddNoReturn(grad_offsets + (r * 2) * PH * PW + bin, gb * sx * gamma * g.roi_w);
    gpuAtomicAddNoReturn(grad_offsets + (r * 2 + 1) * PH * PW + bin, gb * sy * gamma * g.roi_h);
  }
}

}  // namespace

at::Tensor deform_roi_pool_forward_cuda(const at::Tensor& input_, const at::Tensor& rois_,
                                        const at::Tensor& offsets_, int64_t PH, int64_t PW,
                                        double spatial_scale, int64_t sampling_ratio, double gamma) {
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const at::Tensor offsets = offsets_.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t R = rois.size(0);
  at::Tensor out = at::zeros({R, C, PH, PW}, input.options());
  const int64_t total = out.numel();
  if (total == 0 || H * W == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "deform_roi_pool_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    deform_roi_pool_forward_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
        total, input.const_data_ptr<scalar_t>(), rois.const_data_ptr<scalar_t>(),
        offsets.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, C, H, W, PH, PW,
        static_cast<acc_t>(spatial_scale), sampling_ratio, static_cast<acc_t>(gamma));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> deform_roi_pool_backward_cuda(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& rois_,
    const at::Tensor& offsets_, int64_t PH, int64_t PW, double spatial_scale,
    int64_t sampling_ratio, double gamma) {
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const at::Tensor offsets = offsets_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const auto acc = input.options().dtype(at::toOpMathType(input.scalar_type()));
  at::Tensor grad_input = at::zeros(input.sizes(), acc);
  at::Tensor grad_offsets = at::zeros(offsets.sizes(), acc);
  const int64_t total = grad_output.numel();
  if (total > 0 && H * W > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "deform_roi_pool_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      deform_roi_pool_backward_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
          total, grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
          rois.const_data_ptr<scalar_t>(), offsets.const_data_ptr<scalar_t>(),
          grad_input.mutable_data_ptr<acc_t>(), grad_offsets.mutable_data_ptr<acc_t>(), N, C, H, W,
          PH, PW, static_cast<acc_t>(spatial_scale), sampling_ratio, static_cast<acc_t>(gamma));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_input.to(input.scalar_type()), grad_offsets.to(offsets.scalar_type())};
}

}  // namespace uv
