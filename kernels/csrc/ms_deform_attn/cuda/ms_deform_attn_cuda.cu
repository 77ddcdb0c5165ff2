// CUDA kernels of ms_deform_attn: one thread per output element (image, query, head, channel).
// The backward scatters into the value gradient and sums the location / weight gradients over the
// channels of a head with atomicAdd, in buffers of the accumulation type (float for half / bfloat16).
#include "ms_deform_attn/ms_deform_attn.h"

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
__global__ void ms_deform_attn_forward_kernel(int64_t total, const scalar_t* __restrict__ value,
                                              const int64_t* __restrict__ shapes,
                                              const int64_t* __restrict__ starts,
                                              const scalar_t* __restrict__ loc,
                                              const scalar_t* __restrict__ attn,
                                              scalar_t* __restrict__ out, int64_t S, int64_t M,
                                              int64_t D, int64_t Lq, int64_t L, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  UV_CUDA_LOOP(i, total) {
    const int64_t d = i % D, nqm = i / D, m = nqm % M, n = nqm / (M * Lq);
    acc_t sum = acc_t(0);
    Corners<acc_t> cr;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* vl = value + ((n * S + starts[l]) * M + m) * D + d;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t j = (nqm * L + l) * P + p;
        const acc_t x = static_cast<acc_t>(loc[2 * j]) * static_cast<acc_t>(W) - acc_t(0.5);
        const acc_t y = static_cast<acc_t>(loc[2 * j + 1]) * static_cast<acc_t>(H) - acc_t(0.5);
        if (!zero_pad_corners(y, x, H, W, cr)) continue;
        acc_t v = acc_t(0);
#pragma unroll
        for (int k = 0; k < 4; ++k) v += cr.w[k] * static_cast<acc_t>(vl[cr.o[k] * M * D]);
        sum += static_cast<acc_t>(attn[j]) * v;
      }
    }
    out[i] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
__global__ void ms_deform_attn_backward_kernel(
    int64_t total, const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
    const scalar_t* __restrict__ loc, const scalar_t* __restrict__ attn,
    at::opmath_type<scalar_t>* grad_value, at::opmath_type<scalar_t>* grad_loc,
    at::opmath_type<scalar_t>* grad_attn, int64_t S, int64_t M, int64_t D, int64_t Lq, int64_t L,
    int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  UV_CUDA_LOOP(i, total) {
    const int64_t d = i % D, nqm = i / D, m = nqm % M, n = nqm / (M * Lq);
    const acc_t g = static_cast<acc_t>(grad_output[i]);
    Corners<acc_t> cr;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const int64_t lbase = ((n * S + starts[l]) * M + m) * D + d;
      const scalar_t* vl = value + lbase;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t j = (nqm * L + l) * P + p;
        const acc_t x = static_cast<acc_t>(loc[2 * j]) * static_cast<acc_t>(W) - acc_t(0.5);
        const acc_t y = static_cast<acc_t>(loc[2 * j + 1]) * static_cast<acc_t>(H) - acc_t(0.5);
        if (!zero_pad_corners(y, x, H, W, cr)) continue;
        const acc_t a = static_cast<acc_t>(attn[j]);
        acc_t v = acc_t(0), vx = acc_t(0), vy = acc_t(0);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const acc_t vk = static_cast<acc_t>(vl[cr.o[k] * M * D]);
          v += cr.w[k] * vk;
          vx += cr.dx[k] * vk;
          vy += cr.dy[k] * vk;
          if (cr.w[k] != acc_t(0)) gpuAtomicAddNoReturn(grad_value + lbase + cr.o[k] * M * D, a * cr.w[k] * g);
        }
        gpuAtomicAddNoReturn(grad_attn + j, g * v);
        gpuAtomicAddNoReturn(grad_loc + 2 * j, g * a * vx * static_cast<acc_t>(W));
        gpuAtomicAddNoReturn(grad_loc + 2 * j + 1, g * a * vy * static_cast<acc_t>(H));
      }
    }
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value_, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations_,
                                       const at::Tensor& attention_weights_) {
  const c10::cuda::CUDAGuard guard(value_.device());
  const at::Tensor value = value_.contiguous();
  const at::Tensor shapes = spatial_shapes.to(at::kLong).contiguous();
  const at::Tensor starts = level_start_index.to(at::kLong).contiguous();
  const at::Tensor loc = sampling_locations_.contiguous();
  const at::Tensor attn = attention_weights_.contiguous();
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = loc.size(1), L = loc.size(3), P = loc.size(4);
  at::Tensor out = at::zeros({N, Lq, M * D}, value.options());
  const int64_t total = out.numel();
  if (total == 0 || L * P == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(),
                                  "ms_deform_attn_forward_cuda", [&] {
    ms_deform_attn_forward_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
        total, value.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(),
        starts.const_data_ptr<int64_t>(), loc.const_data_ptr<scalar_t>(),
        attn.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), S, M, D, Lq, L, P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output_, const at::Tensor& value_, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations_,
    const at::Tensor& attention_weights_) {
  const c10::cuda::CUDAGuard guard(value_.device());
  const at::Tensor value = value_.contiguous();
  const at::Tensor shapes = spatial_shapes.to(at::kLong).contiguous();
  const at::Tensor starts = level_start_index.to(at::kLong).contiguous();
  const at::Tensor loc = sampling_locations_.contiguous();
  const at::Tensor attn = attention_weights_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = loc.size(1), L = loc.size(3), P = loc.size(4);
  const auto acc = value.options().dtype(at::toOpMathType(value.scalar_type()));
  at::Tensor grad_value = at::zeros(value.sizes(), acc);
  at::Tensor grad_loc = at::zeros(loc.sizes(), acc);
  at::Tensor grad_attn = at::zeros(attn.sizes(), acc);
  const int64_t total = grad_output.numel();
  if (total > 0 && L * P > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(),
                                    "ms_deform_attn_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      ms_deform_attn_backward_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
          total, grad_output.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
          shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
          loc.const_data_ptr<scalar_t>(), attn.const_data_ptr<scalar_t>(),
          grad_value.mutable_data_ptr<acc_t>(), grad_loc.mutable_data_ptr<acc_t>(),
          grad_attn.mutable_data_ptr<acc_t>(), S, M, D, Lq, L, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_value.to(value.scalar_type()), grad_loc.to(loc.scalar_type()),
          grad_attn.to(attn.scalar_type())};
}

}  // namespace uv
