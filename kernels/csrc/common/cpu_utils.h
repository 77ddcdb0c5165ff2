// Small helpers shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace uv {

// Dot product of two runs of n numbers. `omp simd reduction` lets the compiler vectorise the sum
// (it may reorder it) without -ffast-math.
template <typename T>
inline T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Split C channels into blocks so that `outer * blocks` tasks give every thread about
// `tasks_per_thread` tasks, with at least `min_block` channels per block. Returns the block size.
inline int64_t channel_block_size(int64_t outer, int64_t C, int64_t min_block = 8,
                                  int64_t tasks_per_thread = 8) {
  if (C <= 0) return 1;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t want = tasks_per_thread * threads;
  const int64_t o = std::max<int64_t>(outer, 1);
  int64_t blocks = (want + o - 1) / o;
  blocks = std::min(blocks, (C + min_block - 1) / min_block);
  blocks = std::max<int64_t>(blocks, 1);
  return (C + blocks - 1) / blocks;
}

// Channel block size for kernels that read (and scatter into) whole H x W planes of an NCHW map at
// random positions: small enough that the block's planes (`arrays` of them per channel, e.g. the
// features and their gradient) stay within `budget` bytes of cache, and small enough to give every
// thread several tasks.
inline int64_t plane_block_size(int64_t outer, int64_t C, int64_t plane_bytes, int64_t arrays,
                                int64_t budget = int64_t(4) << 20) {
  const int64_t by_cache = std::max<int64_t>(4, budget / std::max<int64_t>(1, arrays * plane_bytes));
  return std::max<int64_t>(1, std::min(by_cache, channel_block_size(outer, C, 4)));
}

// out[i] = sum_b parts[b * n + i] for b < blocks (a small serial reduction: no parallel region).
template <typename T>
inline void sum_blocks(const T* parts, int64_t blocks, int64_t n, T* out) {
  std::copy(parts, parts + n, out);
  for (int64_t b = 1; b < blocks; ++b) {
    const T* pb = parts + b * n;
    for (int64_t i = 0; i < n; ++i) out[i] += pb[i];
  }
}

// Like at::parallel_for, but the threads take chunks of `grain` tasks from a shared counter instead
// of one fixed slice each, so uneven tasks (RoIs of different sizes, images with more RoIs) or a
// thread that loses its core for a while do not leave the others idle. `body(begin, end)` is called
// once per chunk and must not throw.
template <typename F>
void parallel_dynamic(int64_t ntasks, int64_t grain, const F& body) {
  if (ntasks <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (ntasks + grain - 1) / grain;
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), chunks);
  if (workers <= 1 || at::in_parallel_region()) {
    body(0, ntasks);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      body(c * grain, std::min(ntasks, (c + 1) * grain));
    }
  });
}

}  // namespace uv
