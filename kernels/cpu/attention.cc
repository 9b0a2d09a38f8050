// Paged KV cache writes and causal grouped-query attention over the paged cache.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace switchyard::cpu {
namespace {

// Multiply-adds (score + value passes) below which attention runs on the calling thread only.
constexpr int64_t kParallelMacs = int64_t{1} << 15;

// out[j] = (q · k[j]) * scale for the 4 rows k[0..3] of length n.
inline void Dot4(const float* q, const float* const k[4], int n, float scale, float* out) {
#ifdef SY_SIMD
  using namespace simd;
  Vf a0 = VZero(), a1 = VZero(), a2 = VZero(), a3 = VZero();
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vf qv = VLoad(q + i);
    a0 = VFma(qv, VLoad(k[0] + i), a0);
    a1 = VFma(qv, VLoad(k[1] + i), a1);
    a2 = VFma(qv, VLoad(k[2] + i), a2);
    a3 = VFma(qv, VLoad(k[3] + i), a3);
  }
  if (i < n) {
    const int m = n - i;
    const Vf qv = VLoadN(q + i, m);
    a0 = VFma(qv, VLoadN(k[0] + i, m), a0);
    a1 = VFma(qv, VLoadN(k[1] + i, m), a1);
    a2 = VFma(qv, VLoadN(k[2] + i, m), a2);
    a3 = VFma(qv, VLoadN(k[3] + i, m), a3);
  }
  _mm_storeu_ps(out, _mm_mul_ps(VSum4(a0, a1, a2, a3), _mm_set1_ps(scale)));
#else
  for (int j = 0; j < 4; ++j) {
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += q[i] * k[j][i];
    out[j] = s * scale;
  }
#endif
}

// y[i] += sum_j p[j] * v[j][i] over the 4 rows v[0..3] of length n.
inline void Axpy4(const float p[4], const float* const v[4], float* y, int n) {
  int i = 0;
#ifdef SY_SIMD
  using namespace simd;
  const Vf p0 = VSet(p[0]), p1 = VSet(p[1]), p2 = VSet(p[2]), p3 = VSet(p[3]);
  for (; i + kLanes <= n; i += kLanes) {
    Vf acc = VLoad(y + i);
    acc = VFma(p0, VLoad(v[0] + i), acc);
    acc = VFma(p1, VLoad(v[1] + i), acc);
    acc = VFma(p2, VLoad(v[2] + i), acc);
    acc = VFma(p3, VLoad(v[3] + i), acc);
    VStore(y + i, acc);
  }
  if (i < n) {
    const int m = n - i;
    Vf acc = VLoadN(y + i, m);
    acc = VFma(p0, VLoadN(v[0] + i, m), acc);
    acc = VFma(p1, VLoadN(v[1] + i, m), acc);
    acc = VFma(p2, VLoadN(v[2] + i, m), acc);
    acc = VFma(p3, VLoadN(v[3] + i, m), acc);
    VStoreN(y + i, acc, m);
  }
#else
  for (; i < n; ++i) y[i] += p[0] * v[0][i] + p[1] * v[1][i] + p[2] * v[2][i] + p[3] * v[3][i];
#endif
}

// s[i] = exp(s[i] - max) for i < n; returns the sum.
inline float ExpShiftSum(float* s, int n, float max) {
  int i = 0;
  float sum = 0.0f;
#ifdef SY_SIMD
  using namespace simd;
  const Vf vm = VSet(max);
  Vf acc = VZero();
  for (; i + kLanes <= n; i += kLanes) {
    const Vf e = VExp(VSub(VLoad(s + i), vm));
    VStore(s + i, e);
    acc = VAdd(acc, e);
  }
  if (i < n) {
    const Vf e = VExp(VSub(VLoadN(s + i, n - i), vm));
    VStoreN(s + i, e, n - i);
    // Lanes past n hold exp(0 - max), not zero: sum only the live ones.
    alignas(64) float tmp[kLanes];
    VStore(tmp, e);
    for (int j = 0; j < n - i; ++j) sum += tmp[j];
  }
  sum += VSum(acc);
#else
  for (; i < n; ++i) {
    s[i] = std::exp(s[i] - max);
    sum += s[i];
  }
#endif
  return sum;
}

// One query row of one head: out[0, D) = softmax(q · K[0..ctx)^T * scale) · V[0..ctx).
// Positions go in groups of 4 within a block (a short last group repeats its first row and
// drops the extra results), so every score takes the same arithmetic path.
void AttendOne(const float* q, int ctx, const KvLayer& cache, const int32_t* block_table,
               int64_t head_off, int D, float scale, float* out, float* scores) {
  const int bs = cache.block_size;
  const int64_t kv_dim = cache.kv_dim;
  const float* rows[4];
  for (int p0 = 0; p0 < ctx; p0 += bs) {
    const int n = std::min(bs, ctx - p0);
    const float* k = cache.k + static_cast<int64_t>(block_table[p0 / bs]) * bs * kv_dim + head_off;
    for (int j = 0; j < n; j += 4) {
      const int m = std::min(4, n - j);
      for (int r = 0; r < 4; ++r) rows[r] = k + (j + (r < m ? r : 0)) * kv_dim;
      float s[4];
      Dot4(q, rows, D, scale, s);
      for (int r = 0; r < m; ++r) scores[p0 + j + r] = s[r];
    }
  }
  float max = -INFINITY;
  for (int p = 0; p < ctx; ++p) max = std::max(max, scores[p]);
  const float inv_sum = 1.0f / ExpShiftSum(scores, ctx, max);
  std::memset(out, 0, sizeof(float) * D);
  for (int p0 = 0; p0 < ctx; p0 += bs) {
    const int n = std::min(bs, ctx - p0);
    const float* v = cache.v + static_cast<int64_t>(block_table[p0 / bs]) * bs * kv_dim + head_off;
    for (int j = 0; j < n; j += 4) {
      const int m = std::min(4, n - j);
      float p[4];
      for (int r = 0; r < 4; ++r) {
        rows[r] = v + (j + (r < m ? r : 0)) * kv_dim;
        p[r] = r < m ? scores[p0 + j + r] * inv_sum : 0.0f;
      }
      Axpy4(p, rows, out, D);
    }
  }
}

}  // namespace

void KvWrite(const KvLayer& cache, const int32_t* block_table, int start_pos, const float* k,
             const float* v, int T) {
  const int bs = cache.block_size;
  const int64_t kv_dim = cache.kv_dim;
  for (int t = 0; t < T; ++t) {
    const int pos = start_pos + t;
    const int64_t off = (static_cast<int64_t>(block_table[pos / bs]) * bs + pos % bs) * kv_dim;
    std::memcpy(cache.k + off, k + t * kv_dim, sizeof(float) * kv_dim);
    std::memcpy(cache.v + off, v + t * kv_dim, sizeof(float) * kv_dim);
  }
}

int64_t AttentionScratchFloats(int context_len) {
  // Scores for every context position, rounded up to whole 64-byte lines.
  return (static_cast<int64_t>(std::max(context_len, 1)) + 15) / 16 * 16;
}

void Attention(const float* q, int T, int start_pos, const KvLayer& cache,
               const int32_t* block_table, const AttentionShape& shape, float* out, float* scratch,
               int scratch_threads) {
  const int H = shape.n_heads;
  const int D = shape.head_dim;
  const int group = H / shape.n_kv_heads;
  const int64_t q_row = static_cast<int64_t>(H) * D;
  const int64_t stride = AttentionScratchFloats(start_pos + T);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int items = T * H;
  const int64_t positions =
      static_cast<int64_t>(T) * start_pos + static_cast<int64_t>(T) * (T + 1) / 2;
  const int64_t macs = 2 * positions * H * D;
  const int threads = std::max(1, std::min(scratch_threads, omp_get_max_threads()));
  const bool parallel = threads > 1 && items > 1 && macs >= kParallelMacs;
  // Items run longest first (latest token) for balance under dynamic scheduling.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (parallel)
  for (int it = 0; it < items; ++it) {
    const int t = T - 1 - it / H;
    const int h = it % H;
    const int64_t head_off = static_cast<int64_t>(h / group) * D;
    float* scores = scratch + omp_get_thread_num() * stride;
    AttendOne(q + t * q_row + h * D, start_pos + t + 1, cache, block_table, head_off, D, scale,
              out + t * q_row + h * D, scores);
  }
}

}  // namespace switchyard::cpu
