// CUDA kernels of point_sample: one thread per output element (point, channel); the backward
// scatters with atomicAdd into buffers of the accumulation type (float for half / bfloat16).
#include "point_sample/point_sample.h"

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

namespace uv {
namespace {

template <typename scalar_t>
__global__ void point_sample_forward_kernel(int64_t total, const scalar_t* __restrict__ f,
                                            const scalar_t* __restrict__ pts,
                                            scalar_t* __restrict__ out, int64_t C, int64_t H,
                                            int64_t W, int64_t PK) {
  using acc_t = at::opmath_type<scalar_t>;
  UV_CUDA_LOOP(i, total) {
    const int64_t c = i % C, pt = i / C, n = pt / PK;
    const acc_t x = static_cast<acc_t>(pts[2 * pt]) - acc_t(0.5);
    const acc_t y = static_cast<acc_t>(pts[2 * pt + 1]) - acc_t(0.5);
    Corners<acc_t> cr;
    acc_t v = acc_t(0);
    if (zero_pad_corners(y, x, H, W, cr)) {
      const scalar_t* pl = f + (n * C + c) * H * W;
#pragma unroll
      for (int k = 0; k < 4; ++k) v += cr.w[k] * static_cast<acc_t>(pl[cr.o[k]]);
    }
    out[i] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t>
__global__ void point_sample_backward_kernel(int64_t total, const scalar_t* __restrict__ go,
                                             const scalar_t* __restrict__ f,
                                             const scalar_t* __restrict__ pts,
                                             at::opmath_type<scalar_t>* grad_f,
                                             at::opmath_type<scalar_t>* grad_p, int64_t C, int64_t H,
                                             int64_t W, int64_t PK) {
  using acc_t = at::opmath_type<scalar_t>;
  UV_CUDA_LOOP(i, total) {
    const int64_t c = i % C, pt = i / C, n = pt / PK;
    const acc_t x = static_cast<acc_t>(pts[2 * pt]) - acc_t(0.5);
    const acc_t y = static_cast<acc_t>(pts[2 * pt + 1]) - acc_t(0.5);
    Corners<acc_t> cr;
    if (!zero_pad_corners(y, x, H, W, cr)) continue;
    const acc_t g = static_cast<acc_t>(go[i]);
    const int64_t plane = (n * C + c) * H * W;
    const scalar_t* pl = f + plane;
    acc_t gx = acc_t(0), gy = acc_t(0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (cr.w[k] == acc_t(0) && cr.dx[k] == acc_t(0) && cr.dy[k] == acc_t(0)) continue;  // outside
      const acc_t v = static_cast<acc_t>(pl[cr.o[k]]);
      gx += cr.dx[k] * v;
      gy += cr.dy[k] * v;
      gpuAtomicAddNoReturn(grad_f + plane + cr.o[k], cr.w[k] * g);
    }
    gpuAtomicAddNoReturn(grad_p + 2 * pt, gx * g);
    gpuAtomicAddNoReturn(grad_p + 2 * pt + 1, gy * g);
  }
}

}  // namespace

at::Tensor point_sample_forward_cuda(const at::Tensor& features_, const at::Tensor& points_) {
  const c10::cuda::CUDAGuard guard(features_.device());
  const at::Tensor features = features_.contiguous();
  const at::Tensor points = points_.contiguous();
  const int64_t N = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t P = points.size(1), K = points.size(2);
  at::Tensor out = at::empty({N, P, K, C}, features.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  if (H * W == 0) return out.zero_();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(),
                                  "point_sample_forward_cuda", [&] {
    point_sample_forward_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
        total, features.const_data_ptr<scalar_t>(), points.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), C, H, W, P * K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> point_sample_backward_cuda(const at::Tensor& grad_output_,
                                                              const at::Tensor& features_,
                                                              const at::Tensor& points_) {
  const c10::cuda::CUDAGuard guard(features_.device());
  const at::Tensor features = features_.contiguous();
  const at::Tensor points = points_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t P = points.size(1), K = points.size(2);
  const auto acc = features.options().dtype(at::toOpMathType(features.scalar_type()));
  at::Tensor grad_f = at::zeros(features.sizes(), acc);
  at::Tensor grad_p = at::zeros(points.sizes(), acc);
  const int64_t total = grad_output.numel();
  if (total > 0 && H * W > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(),
                                    "point_sample_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      point_sample_backward_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
          total, grad_output.const_data_ptr<scalar_t>(), features.const_data_ptr<scalar_t>(),
          points.const_data_ptr<scalar_t>(), grad_f.mutable_data_ptr<acc_t>(),
          grad_p.mutable_data_ptr<acc_t>(), C, H, W, P * K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_f.to(features.scalar_type()), grad_p.to(points.scalar_type())};
}

}  // namespace uv
