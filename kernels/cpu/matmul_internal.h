// Internal pieces of MatMul for fused kernels that run inside their own OpenMP region (not
// part of the public kernel API).
#pragma once

#include <algorithm>
#include <cstdint>

#include "model/tensor.h"

namespace switchyard::cpu::internal {

// Below this many multiply-adds a matmul-like op runs on the calling thread only.
inline constexpr int64_t kParallelMacs = int64_t{1} << 15;

// MatMul restricted to output rows [r_begin, r_end), on the calling thread.
void MatMulRows(const float* x, int T, const WeightMatrix& W, float* y, bool accumulate,
                int r_begin, int r_end);

// Thread `tid` of `nt`'s share of n rows, split in whole 4-row tiles: [*begin, *end).
inline void SplitRows(int n, int tid, int nt, int* begin, int* end) {
  const int64_t tiles = (n + 3) / 4;
  *begin = std::min<int64_t>(n, tiles * tid / nt * 4);
  *end = std::min<int64_t>(n, tiles * (tid + 1) / nt * 4);
}

}  // namespace switchyard::cpu::internal
