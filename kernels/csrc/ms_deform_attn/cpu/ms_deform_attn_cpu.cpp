// CPU kernels of ms_deform_attn.
//
// The value tensor is channel-last (N, S, M, D), so every bilinear corner is a contiguous row of D
// numbers. Forward: one task per (image, query), all heads. Backward: one task per (image, head);
// a task owns grad_value[n, :, m, :] (no atomics) and every (query, level, point) of that head, so
// the gradients of the sampling locations and attention weights are written directly.
#include "ms_deform_attn/ms_deform_attn.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

#include "common/bilinear.h"
#include "common/cpu_utils.h"

namespace uv {
namespace {

struct Levels {
  std::vector<int64_t> H, W, start;
};

Levels read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S) {
  const at::Tensor shapes = spatial_shapes.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor starts = level_start_index.to(at::kCPU, at::kLong).contiguous();
  const int64_t L = shapes.size(0);
  Levels lv;
  const int64_t* sp = shapes.const_data_ptr<int64_t>();
  const int64_t* st = starts.const_data_ptr<int64_t>();
  for (int64_t l = 0; l < L; ++l) {
    const int64_t h = sp[2 * l], w = sp[2 * l + 1], s0 = st[l];
    TORCH_CHECK(h >= 0 && w >= 0 && s0 >= 0 && s0 + h * w <= S, "ms_deform_attn: level ", l,
                " (H=", h, ", W=", w, ", start=", s0, ") does not fit in the ", S,
                " value positions");
    lv.H.push_back(h);
    lv.W.push_back(w);
    lv.start.push_back(s0);
  }
  return lv;
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value_, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations_,
                                      const at::Tensor& attention_weights_) {
  const at::Tensor value = value_.contiguous();
  const at::Tensor loc = sampling_locations_.contiguous();
  const at::Tensor attn = attention_weights_.contiguous();
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = loc.size(1), L = loc.size(3), P = loc.size(4);
  const Levels lv = read_levels(spatial_shapes, level_start_index, S);
  at::Tensor out = at::empty({N, Lq, M * D}, value.options());  // zeroed row by row by the tasks
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const scalar_t* lp = loc.const_data_ptr<scalar_t>();
    const scalar_t* ap = attn.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t row = M * D;  // stride between spatial positions in value
    const int64_t grain = std::max<int64_t>(1, 256 / std::max<int64_t>(1, M * L * P));
    parallel_dynamic(N * Lq, grain, [&](int64_t begin, int64_t end) {
      Corners<scalar_t> c;
      for (int64_t nq = begin; nq < end; ++nq) {
        const int64_t n = nq / Lq;
        for (int64_t m = 0; m < M; ++m) {
          scalar_t* om = o + (nq * M + m) * D;
          std::fill(om, om + D, scalar_t(0));
          const int64_t base = (nq * M + m) * L * P;
          for (int64_t l = 0; l < L; ++l) {
            const int64_t H = lv.H[l], W = lv.W[l];
            const scalar_t* vl = v + ((n * S + lv.start[l]) * M + m) * D;
            for (int64_t p = 0; p < P; ++p) {
              const int64_t j = base + l * P + p;
              const scalar_t x = lp[2 * j] * static_cast<scalar_t>(W) - scalar_t(0.5);
              const scalar_t y = lp[2 * j + 1] * static_cast<scalar_t>(H) - scalar_t(0.5);
              if (!zero_pad_corners(y, x, H, W, c)) continue;
              const scalar_t a = ap[j];
              const scalar_t a0 = a * c.w[0], a1 = a * c.w[1], a2 = a * c.w[2], a3 = a * c.w[3];
              const scalar_t* r0 = vl + c.o[0] * row;
              const scalar_t* r1 = vl + c.o[1] * row;
              const scalar_t* r2 = vl + c.o[2] * row;
              const scalar_t* r3 = vl + c.o[3] * row;
              for (int64_t d = 0; d < D; ++d) om[d] += a0 * r0[d] + a1 * r1[d] + a2 * r2[d] + a3 * r3[d];
            }
          }
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output_, const at::Tensor& value_, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations_,
    const at::Tensor& attention_weights_) {
  const at::Tensor value = value_.contiguous();
  const at::Tensor loc = sampling_locations_.contiguous();
  const at::Tensor attn = attention_weights_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = loc.size(1), L = loc.size(3), P = loc.size(4);
  const Levels lv = read_levels(spatial_shapes, level_start_index, S);
  if (N * Lq * M * L * P == 0 || D == 0)
    return {at::zeros_like(value), at::zeros_like(loc), at::zeros_like(attn)};
  // Every entry is written by the task of its (image, head): grad_value is zeroed there right
  // before the scatter, the location / weight gradients are written point by point.
  at::Tensor grad_value = at::empty_like(value);
  at::Tensor grad_loc = at::empty_like(loc);
  at::Tensor grad_attn = at::empty_like(attn);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const scalar_t* lp = loc.const_data_ptr<scalar_t>();
    const scalar_t* ap = attn.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gv = grad_value.mutable_data_ptr<scalar_t>();
    scalar_t* gl = grad_loc.mutable_data_ptr<scalar_t>();
    scalar_t* ga = grad_attn.mutable_data_ptr<scalar_t>();
    const int64_t row = M * D;
    parallel_dynamic(N * M, 1, [&](int64_t begin, int64_t end) {
      Corners<scalar_t> c;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / M, m = t % M;
        for (int64_t sp = 0; sp < S; ++sp) {
          scalar_t* gr = gv + ((n * S + sp) * M + m) * D;
          std::fill(gr, gr + D, scalar_t(0));
        }
        for (int64_t q = 0; q < Lq; ++q) {
          const int64_t nqm = (n * Lq + q) * M + m;
          const scalar_t* g = go + nqm * D;
          for (int64_t l = 0; l < L; ++l) {
            const int64_t H = lv.H[l], W = lv.W[l];
            const int64_t lbase = ((n * S + lv.start[l]) * M + m) * D;
            const scalar_t* vl = v + lbase;
            scalar_t* gvl = gv + lbase;
            for (int64_t p = 0; p < P; ++p) {
              const int64_t j = (nqm * L + l) * P + p;
              const scalar_t x = lp[2 * j] * static_cast<scalar_t>(W) - scalar_t(0.5);
              const scalar_t y = lp[2 * j + 1] * static_cast<scalar_t>(H) - scalar_t(0.5);
              if (!zero_pad_corners(y, x, H, W, c)) {  // reads nothing: zero gradients
                ga[j] = scalar_t(0);
                gl[2 * j] = scalar_t(0);
                gl[2 * j + 1] = scalar_t(0);
                continue;
              }
              const scalar_t a = ap[j];
              // Per corner, one (vectorised) dot of the upstream gradient with the value row gives
              // all three reductions over the head's channels.
              scalar_t sa = 0, sx = 0, sy = 0;
              for (int k = 0; k < 4; ++k) {
                if (c.w[k] == 0 && c.dx[k] == 0 && c.dy[k] == 0) continue;  // outside the map
                const scalar_t d = dot(g, vl + c.o[k] * row, D);
                sa += c.w[k] * d;
                sx += c.dx[k] * d;
                sy += c.dy[k] * d;
              }
              ga[j] = sa;
              gl[2 * j] = a * sx * static_cast<scalar_t>(W);
              gl[2 * j + 1] = a * sy * static_cast<scalar_t>(H);
              // Scatter into the value gradient, one corner at a time (corners outside the map
              // have weight 0 and may share offset 0 with a real corner).
              for (int k = 0; k < 4; ++k) {
                const scalar_t aw = a * c.w[k];
                if (aw == scalar_t(0)) continue;
                scalar_t* gr = gvl + c.o[k] * row;
                for (int64_t d = 0; d < D; ++d) gr[d] += aw * g[d];
              }
            }
          }
        }
      }
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace uv
