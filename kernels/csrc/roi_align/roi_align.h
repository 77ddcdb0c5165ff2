// RoIAlign backward on the CPU: the gradient of torchvision.ops.roi_align with respect to its input,
// bit for bit what torchvision's own CPU kernel returns, computed in parallel.
#pragma once

#include <ATen/core/Tensor.h>

namespace uv {

// grad (R, C, PH, PW) of the pooled output, rois (R, 5) -> grad_input (N, C, H, W). The arguments
// are those of torchvision's `_roi_align_backward` op.
at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned);

}  // namespace uv
