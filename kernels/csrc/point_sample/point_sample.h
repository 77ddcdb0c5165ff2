// Multi-point bilinear sampling: features (N, C, H, W), points (N, P, K, 2) in pixel units (x, y)
// with pixel centres at integer + 0.5  ->  output (N, P, K, C). Zero padding outside the map.
#pragma once

#include <ATen/core/Tensor.h>
#include <tuple>

namespace uv {

at::Tensor point_sample_forward_cpu(const at::Tensor& features, const at::Tensor& points);
// Returns (grad_features, grad_points).
std::tuple<at::Tensor, at::Tensor> point_sample_backward_cpu(const at::Tensor& grad_output,
                                                             const at::Tensor& features,
                                                             const at::Tensor& points);

#ifdef WITH_CUDA
at::Tensor point_sample_forward_cuda(const at::Tensor& features, const at::Tensor& points);
std::tuple<at::Tensor, at::Tensor> point_sample_backward_cuda(const at::Tensor& grad_output,
                                                              const at::Tensor& features,
                                                              const at::Tensor& points);
#endif

}  // namespace uv
