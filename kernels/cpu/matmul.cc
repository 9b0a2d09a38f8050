// MatMul: y[T, N] (+)= x[T, K] · W[N, K]^T with W in BF16/F16/F32, fp32 accumulation.
//
// Work is split over output rows (weight rows): each OpenMP thread owns a contiguous range of
// rows, so each weight byte is read from memory by one thread. Inside a range:
//   T == 1 (decode, memory-bound GEMV): tiles of 4 weight rows share each x load and keep 4
//     independent FMA chains; the 4 sums are reduced together and stored as one 4-float vector.
//   T > 1 (prefill): rows are walked in L2-sized groups; for each block of kTokBlock tokens
//     every 4-row tile is computed as a 4 x kTokBlock register tile, so each widened weight
//     vector feeds kTokBlock FMAs and each weight row group is read from memory once.
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "common/bf16.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace switchyard::cpu {
namespace {

// Weight bytes per row group in the prefill path (kept L2-resident across token blocks).
constexpr int64_t kRowGroupBytes = 192 * 1024;

// Decode streams each weight row once. Weights are usually a memory-mapped checkpoint in 4 KiB
// pages, where the hardware prefetchers stop at every page boundary; prefetching this far
// ahead in each row keeps the stream going. On the 2-core reference machine a plain read of
// mapped memory went from 18 to 40 GB/s with it, and decode of a Mixtral-shaped layer (1 GB
// of weights per token) about 15% faster; prefill reuses rows from L2 and needs none.
constexpr int kPrefetchBytes = 1024;

#ifdef SY_SIMD
using namespace simd;

#if SY_SIMD == 512
constexpr int kTokBlock = 4;  // 16 accumulators + 8 operands of 32 zmm
#else
constexpr int kTokBlock = 2;  // 8 accumulators + 6 operands of 16 ymm
#endif

// Computes the R x TT dot products of weight rows w[r*K ...] (r < R) with token rows xs[t]
// (t < TT) and stores them at ys[t][r] (times scale[t] when scaling; added to what is there
// when acc[t]).
template <DType D, int R, int TT>
inline void Tile(const float* const* xs, const void* w, int K, float* const* ys, int r0,
                 const float* scale, const bool* acc) {
  Vf acc_v[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) acc_v[r][t] = VZero();
  int k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    Vf xv[TT];
    for (int t = 0; t < TT; ++t) xv[t] = VLoad(xs[t] + k);
    for (int r = 0; r < R; ++r) {
      if constexpr (TT == 1) {
        // One prefetch per 64-byte line: every (64 / bytes per step)-th step.
        constexpr int kStepBytes = kLanes * (D == DType::kF32 ? 4 : 2);
        if (kStepBytes >= 64 || (k / kLanes) % (64 / kStepBytes) == 0) {
          _mm_prefetch(static_cast<const char*>(w) +
                           (static_cast<int64_t>(r) * K + k) * DTypeSize(D) + kPrefetchBytes,
                       _MM_HINT_T0);
        }
      }
      const Vf wv = VLoadW<D>(w, static_cast<int64_t>(r) * K + k);
      for (int t = 0; t < TT; ++t) acc_v[r][t] = VFma(wv, xv[t], acc_v[r][t]);
    }
  }
  if (k < K) {
    const int n = K - k;
    Vf xv[TT];
    for (int t = 0; t < TT; ++t) xv[t] = VLoadN(xs[t] + k, n);
    for (int r = 0; r < R; ++r) {
      const Vf wv = VLoadWN<D>(w, static_cast<int64_t>(r) * K + k, n);
      for (int t = 0; t < TT; ++t) acc_v[r][t] = VFma(wv, xv[t], acc_v[r][t]);
    }
  }
  for (int t = 0; t < TT; ++t) {
    float* yt = ys[t] + r0;
    if constexpr (R == 4) {
      __m128 s = VSum4(acc_v[0][t], acc_v[1][t], acc_v[2][t], acc_v[3][t]);
      if (scale) s = _mm_mul_ps(s, _mm_set1_ps(scale[t]));
      if (acc[t]) s = _mm_add_ps(s, _mm_loadu_ps(yt));
      _mm_storeu_ps(yt, s);
    } else {
      for (int r = 0; r < R; ++r) {
        float s = VSum(acc_v[r][t]);
        if (scale) s *= scale[t];
        yt[r] = acc[t] ? yt[r] + s : s;
      }
    }
  }
}

// Tokens [t0, t0 + TT) against weight rows [r_begin, r_end).
template <DType D, int TT>
inline void TokenBlock(const internal::InRows& x, int t0, const WeightMatrix& W,
                       const internal::OutRows& y, int r_begin, int r_end) {
  const int K = W.cols;
  const float* xs[TT];
  float* ys[TT];
  float scale[TT];
  bool acc[TT];
  for (int t = 0; t < TT; ++t) {
    xs[t] = x.row(t0 + t);
    ys[t] = y.row(t0 + t);
    if (y.scale) scale[t] = y.scale[t0 + t];
    acc[t] = y.accumulates(t0 + t);
  }
  const float* sc = y.scale ? scale : nullptr;
  int r = r_begin;
  for (; r + 4 <= r_end; r += 4) Tile<D, 4, TT>(xs, W.row(r), K, ys, r, sc, acc);
  for (; r < r_end; ++r) Tile<D, 1, TT>(xs, W.row(r), K, ys, r, sc, acc);
}

template <DType D>
void RowRange(const internal::InRows& x, int T, const WeightMatrix& W, const internal::OutRows& y,
              int r_begin, int r_end) {
  const int K = W.cols;
  if (T == 1) {
    TokenBlock<D, 1>(x, 0, W, y, r_begin, r_end);
    return;
  }
  const int64_t row_bytes = std::max<int64_t>(1, static_cast<int64_t>(K) * DTypeSize(D));
  const int group = std::max<int>(4, static_cast<int>(kRowGroupBytes / row_bytes) & ~3);
  for (int g = r_begin; g < r_end; g += group) {
    const int g_end = std::min(r_end, g + group);
    int t = 0;
    for (; t + kTokBlock <= T; t += kTokBlock) TokenBlock<D, kTokBlock>(x, t, W, y, g, g_end);
    for (; t < T; ++t) TokenBlock<D, 1>(x, t, W, y, g, g_end);
  }
}

#else  // portable scalar fallback

template <DType D>
inline float WAt(const void* base, int64_t i) {
  if constexpr (D == DType::kF32) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (D == DType::kBF16) {
    return Bf16ToFloat(static_cast<const uint16_t*>(base)[i]);
  } else {
    return HalfToFloat(static_cast<const uint16_t*>(base)[i]);
  }
}

template <DType D>
void RowRange(const internal::InRows& x, int T, const WeightMatrix& W, const internal::OutRows& y,
              int r_begin, int r_end) {
  const int K = W.cols;
  for (int r = r_begin; r < r_end; ++r) {
    const void* w = W.row(r);
    for (int t = 0; t < T; ++t) {
      const float* xt = x.row(t);
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int k = 0;
      for (; k + 4 <= K; k += 4) {
        s0 += WAt<D>(w, k) * xt[k];
        s1 += WAt<D>(w, k + 1) * xt[k + 1];
        s2 += WAt<D>(w, k + 2) * xt[k + 2];
        s3 += WAt<D>(w, k + 3) * xt[k + 3];
      }
      for (; k < K; ++k) s0 += WAt<D>(w, k) * xt[k];
      float s = (s0 + s1) + (s2 + s3);
      if (y.scale) s *= y.scale[t];
      float& out = y.row(t)[r];
      out = y.accumulates(t) ? out + s : s;
    }
  }
}

#endif  // SY_SIMD

}  // namespace

void internal::MatMulRows(const InRows& x, int T, const WeightMatrix& W, const OutRows& y,
                          int r_begin, int r_end) {
  if (T <= 0 || r_begin >= r_end) return;
  switch (W.dtype) {
    case DType::kBF16:
      RowRange<DType::kBF16>(x, T, W, y, r_begin, r_end);
      break;
    case DType::kF16:
      RowRange<DType::kF16>(x, T, W, y, r_begin, r_end);
      break;
    case DType::kF32:
      RowRange<DType::kF32>(x, T, W, y, r_begin, r_end);
      break;
  }
}

void MatMul(const float* x, int T, const WeightMatrix& W, float* y, bool accumulate) {
  const int N = W.rows;
  if (T <= 0 || N <= 0) return;
  const int64_t macs = static_cast<int64_t>(T) * N * W.cols;
  const bool parallel = macs >= internal::kParallelMacs && N > 4;
#pragma omp parallel if (parallel)
  {
    int r_begin, r_end;
    internal::SplitRows(N, omp_get_thread_num(), omp_get_num_threads(), &r_begin, &r_end);
    internal::MatMulRows(internal::InRows::Strided(x, W.cols), T, W,
                         internal::OutRows::Strided(y, W.rows, accumulate), r_begin, r_end);
  }
}

}  // namespace switchyard::cpu
