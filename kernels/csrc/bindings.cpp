// Python bindings of unified_vision._C: argument checks, then dispatch to the CPU or CUDA kernel
// by the device of the inputs. The Python side (unified_vision.ops) wraps these functions in
// torch.library custom ops with autograd.
#include <torch/extension.h>

#include "deform_roi_pool/deform_roi_pool.h"
#include "ms_deform_attn/ms_deform_attn.h"
#include "point_sample/point_sample.h"
#include "roi_align/roi_align.h"

namespace uv {
namespace {

bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* op, const char* an,
                const char* bn) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", an, " and ", bn, " must be on the same device");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", an, " (", a.scalar_type(), ") and ", bn,
              " (", b.scalar_type(), ") must have the same dtype");
}

#ifndef WITH_CUDA
[[noreturn]] void no_cuda(const char* op) {
  TORCH_CHECK(false, op, ": unified_vision._C was built without CUDA support; rebuild it on a "
                         "machine with a CUDA toolkit (or use the *_reference op)");
}
#endif

void check_point_sample(const at::Tensor& features, const at::Tensor& points) {
  TORCH_CHECK(features.dim() == 4, "point_sample: features must be (N, C, H, W), got ", features.sizes());
  TORCH_CHECK(points.dim() == 4 && points.size(3) == 2, "point_sample: points must be (N, P, K, 2), got ",
              points.sizes());
  TORCH_CHECK(points.size(0) == features.size(0), "point_sample: features and points disagree on N");
  check_same(features, points, "point_sample", "features", "points");
}

at::Tensor point_sample_forward(const at::Tensor& features, const at::Tensor& points) {
  check_point_sample(features, points);
  if (features.is_cuda()) {
#ifdef WITH_CUDA
    return point_sample_forward_cuda(features, points);
#else
    no_cuda("point_sample");
#endif
  }
  return point_sample_forward_cpu(features, points);
}

std::tuple<at::Tensor, at::Tensor> point_sample_backward(const at::Tensor& grad_output,
                                                         const at::Tensor& features,
                                                         const at::Tensor& points) {
  check_point_sample(features, points);
  check_same(grad_output, features, "point_sample", "grad_output", "features");
  if (features.is_cuda()) {
#ifdef WITH_CUDA
    return point_sample_backward_cuda(grad_output, features, points);
#else
    no_cuda("point_sample");
#endif
  }
  return point_sample_backward_cpu(grad_output, features, points);
}

void check_deform_roi_pool(const at::Tensor& input, const at::Tensor& rois, const at::Tensor& offsets,
                           int64_t ph, int64_t pw) {
  TORCH_CHECK(input.dim() == 4, "deform_roi_pool: input must be (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "deform_roi_pool: rois must be (R, 5), got ", rois.sizes());
  TORCH_CHECK(ph > 0 && pw > 0, "deform_roi_pool: output_size must be positive");
  TORCH_CHECK(offsets.dim() == 4 && offsets.size(0) == rois.size(0) && offsets.size(1) == 2 &&
                  offsets.size(2) == ph && offsets.size(3) == pw,
              "deform_roi_pool: offsets must be (R, 2, ", ph, ", ", pw, "), got ", offsets.sizes());
  check_same(input, rois, "deform_roi_pool", "input", "rois");
  check_same(input, offsets, "deform_roi_pool", "input", "offsets");
}

at::Tensor deform_roi_pool_forward(const at::Tensor& input, const at::Tensor& rois,
                                   const at::Tensor& offsets, int64_t ph, int64_t pw,
                                   double spatial_scale, int64_t sampling_ratio, double gamma) {
  check_deform_roi_pool(input, rois, offsets, ph, pw);
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return deform_roi_pool_forward_cuda(input, rois, offsets, ph, pw, spatial_scale, sampling_ratio, gamma);
#else
    no_cuda("deform_roi_pool");
#endif
  }
  return deform_roi_pool_forward_cpu(input, rois, offsets, ph, pw, spatial_scale, sampling_ratio, gamma);
}

std::tuple<at::Tensor, at::Tensor> deform_roi_pool_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
    const at::Tensor& offsets, int64_t ph, int64_t pw, double spatial_scale, int64_t sampling_ratio,
    double gamma) {
  check_deform_roi_pool(input, rois, offsets, ph, pw);
  check_same(grad_output, input, "deform_roi_pool", "grad_output", "input");
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return deform_roi_pool_backward_cuda(grad_output, input, rois, offsets, ph, pw, spatial_scale,
                                         sampling_ratio, gamma);
#else
    no_cuda("deform_roi_pool");
#endif
  }
  return deform_roi_pool_backward_cpu(grad_output, input, rois, offsets, ph, pw, spatial_scale,
                                      sampling_ratio, gamma);
}

void check_ms_deform_attn(const at::Tensor& value, const at::Tensor& spatial_shapes,
                          const at::Tensor& level_start_index, const at::Tensor& loc,
                          const at::Tensor& attn) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be (L, 2), got ", spatial_shapes.sizes());
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L,
              "ms_deform_attn: level_start_index must be (L,) with L = ", L);
  TORCH_CHECK(loc.dim() == 6 && loc.size(0) == value.size(0) && loc.size(2) == value.size(2) &&
                  loc.size(3) == L && loc.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), got ", loc.sizes());
  TORCH_CHECK(attn.dim() == 5 && attn.sizes() == loc.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights must be (N, Lq, M, L, P), got ", attn.sizes());
  TORCH_CHECK(!at::isFloatingType(spatial_shapes.scalar_type()) &&
                  !at::isFloatingType(level_start_index.scalar_type()),
              "ms_deform_attn: spatial_shapes and level_start_index must be integer tensors");
  TORCH_CHECK(spatial_shapes.device() == value.device() && level_start_index.device() == value.device(),
              "ms_deform_attn: spatial_shapes and level_start_index must be on the device of value");
  check_same(value, loc, "ms_deform_attn", "value", "sampling_locations");
  check_same(value, attn, "ms_deform_attn", "value", "attention_weights");
}

at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index, const at::Tensor& loc,
                                  const at::Tensor& attn) {
  check_ms_deform_attn(value, spatial_shapes, level_start_index, loc, attn);
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_forward_cuda(value, spatial_shapes, level_start_index, loc, attn);
#else
    no_cuda("ms_deform_attn");
#endif
  }
  return ms_deform_attn_forward_cpu(value, spatial_shapes, level_start_index, loc, attn);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& loc, const at::Tensor& attn) {
  check_ms_deform_attn(value, spatial_shapes, level_start_index, loc, attn);
  check_same(grad_output, value, "ms_deform_attn", "grad_output", "value");
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_backward_cuda(grad_output, value, spatial_shapes, level_start_index, loc, attn);
#else
    no_cuda("ms_deform_attn");
#endif
  }
  return ms_deform_attn_backward_cpu(grad_output, value, spatial_shapes, level_start_index, loc, attn);
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                              int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                              int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(grad.is_cpu() && rois.is_cpu(), "roi_align_backward: CPU tensors only (on a GPU, torchvision's own "
                                              "CUDA kernel is the fast one)");
  TORCH_CHECK(grad.dim() == 4 && grad.size(1) == channels && grad.size(2) == pooled_height &&
                  grad.size(3) == pooled_width,
              "roi_align_backward: grad must be (R, ", channels, ", ", pooled_height, ", ", pooled_width, "), got ",
              grad.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5 && rois.size(0) == grad.size(0),
              "roi_align_backward: rois must be (R, 5) with R = ", grad.size(0), ", got ", rois.sizes());
  check_same(grad, rois, "roi_align_backward", "grad", "rois");
  return roi_align_backward_cpu(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                                height, width, sampling_ratio, aligned);
}

}  // namespace
}  // namespace uv

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "unified_vision compiled ops: point_sample, deform_roi_pool, ms_deform_attn (CPU + CUDA)";
  m.def("has_cuda", &uv::has_cuda, "True when the CUDA kernels were compiled in");
  m.def("point_sample_forward", &uv::point_sample_forward, "point_sample forward",
        py::arg("features"), py::arg("points"));
  m.def("point_sample_backward", &uv::point_sample_backward,
        "point_sample backward -> (grad_features, grad_points)", py::arg("grad_output"),
        py::arg("features"), py::arg("points"));
  m.def("deform_roi_pool_forward", &uv::deform_roi_pool_forward, "deform_roi_pool forward",
        py::arg("input"), py::arg("rois"), py::arg("offsets"), py::arg("pooled_height"),
        py::arg("pooled_width"), py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("gamma"));
  m.def("deform_roi_pool_backward", &uv::deform_roi_pool_backward,
        "deform_roi_pool backward -> (grad_input, grad_offsets)", py::arg("grad_output"),
        py::arg("input"), py::arg("rois"), py::arg("offsets"), py::arg("pooled_height"),
        py::arg("pooled_width"), py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("gamma"));
  m.def("ms_deform_attn_forward", &uv::ms_deform_attn_forward, "ms_deform_attn forward",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"),
        py::arg("sampling_locations"), py::arg("attention_weights"));
  m.def("ms_deform_attn_backward", &uv::ms_deform_attn_backward,
        "ms_deform_attn backward -> (grad_value, grad_sampling_locations, grad_attention_weights)",
        py::arg("grad_output"), py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_locations"), py::arg("attention_weights"));
  m.def("roi_align_backward", &uv::roi_align_backward,
        "torchvision's _roi_align_backward (same arguments, same result bit for bit), in parallel on the CPU",
        py::arg("grad"), py::arg("rois"), py::arg("spatial_scale"), py::arg("pooled_height"),
        py::arg("pooled_width"), py::arg("batch_size"), py::arg("channels"), py::arg("height"), py::arg("width"),
        py::arg("sampling_ratio"), py::arg("aligned"));
}
