// Deformable RoI pooling (DCN v1, as used by TSD / mmcv DeformRoIPool) with aligned=True RoIAlign
// sampling: input (N, C, H, W), rois (R, 5) [batch_index, x1, y1, x2, y2], offsets (R, 2, PH, PW)
// normalised by the RoI size and scaled by gamma  ->  output (R, C, PH, PW).
#pragma once

#include <ATen/core/Tensor.h>
#include <tuple>

namespace uv {

at::Tensor deform_roi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                       const at::Tensor& offsets, int64_t pooled_height,
                                       int64_t pooled_width, double spatial_scale,
                                       int64_t sampling_ratio, double gamma);
// Returns (grad_input, grad_offsets).
std::tuple<at::Tensor, at::Tensor> deform_roi_pool_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
    const at::Tensor& offsets, int64_t pooled_height, int64_t pooled_width, double spatial_scale,
    int64_t sampling_ratio, double gamma);

#ifdef WITH_CUDA
at::Tensor deform_roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                        const at::Tensor& offsets, int64_t pooled_height,
                                        int64_t pooled_width, double spatial_scale,
                                        int64_t sampling_ratio, double gamma);
std::tuple<at::Tensor, at::Tensor> deform_roi_pool_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
    const at::Tensor& offsets, int64_t pooled_height, int64_t pooled_width, double spatial_scale,
    int64_t sampling_ratio, double gamma);
#endif

}  // namespace uv
