// Internal pieces of MatMul for fused kernels that run inside their own OpenMP region (not
// part of the public kernel API).
#pragma once

#include <algorithm>
#include <cstdint>

#include "model/tensor.h"

namespace switchyard::cpu::internal {

// Below this many multiply-adds a matmul-like op runs on the calling thread only.
inline constexpr int64_t kParallelMacs = int64_t{1} << 15;

// The token rows a matmul reads: row t at rows[t] when `rows` is set (rows read in place
// wherever they are, e.g. in a receive buffer), otherwise at base + t * stride.
struct InRows {
  const float* base = nullptr;
  int64_t stride = 0;
  const float* const* rows = nullptr;

  static InRows Strided(const float* base, int64_t stride) { return {base, stride, nullptr}; }
  static InRows Gathered(const float* const* rows) { return {nullptr, 0, rows}; }
  const float* row(int64_t t) const { return rows ? rows[t] : base + t * stride; }
};

// Where a matmul writes result row t: rows[t] or base + t * stride. With `scale`, the row is
// scale[t] * result. It overwrites, or adds to what is there when `accumulate` (every row) or
// accumulate_rows[t] != 0.
struct OutRows {
  float* base = nullptr;
  int64_t stride = 0;
  float* const* rows = nullptr;
  const float* scale = nullptr;
  bool accumulate = false;
  const uint8_t* accumulate_rows = nullptr;

  static OutRows Strided(float* base, int64_t stride, bool accumulate) {
    return {base, stride, nullptr, nullptr, accumulate, nullptr};
  }
  float* row(int64_t t) const { return rows ? rows[t] : base + t * stride; }
  bool accumulates(int64_t t) const {
    return accumulate_rows ? accumulate_rows[t] != 0 : accumulate;
  }
};

// MatMul restricted to output rows [r_begin, r_end), on the calling thread.
void MatMulRows(const InRows& x, int T, const WeightMatrix& W, const OutRows& y, int r_begin,
                int r_end);

// Thread `tid` of `nt`'s share of n rows, split in whole 4-row tiles: [*begin, *end).
inline void SplitRows(int n, int tid, int nt, int* begin, int* end) {
  const int64_t tiles = (n + 3) / 4;
  *begin = std::min<int64_t>(n, tiles * tid / nt * 4);
  *end = std::min<int64_t>(n, tiles * (tid + 1) / nt * 4);
}

}  // namespace switchyard::cpu::internal
