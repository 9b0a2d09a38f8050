// SwiGLU expert: y (+)= scale * (silu(x W1^T) * (x W3^T)) W2^T.
#include <omp.h>

#include <cmath>
#include <cstdint>

#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace switchyard::cpu {
namespace {

// g[i] = silu(g[i]) * u[i] * scale, silu(x) = x / (1 + exp(-x)).
void SiluMul(float* g, const float* u, int n, float scale) {
  int i = 0;
#ifdef SY_SIMD
  using namespace simd;
  const Vf one = VSet(1.0f);
  const Vf vs = VSet(scale);
  for (; i + kLanes <= n; i += kLanes) {
    const Vf x = VLoad(g + i);
    const Vf silu = VDiv(x, VAdd(one, VExp(VSub(VZero(), x))));
    VStore(g + i, VMul(VMul(silu, VLoad(u + i)), vs));
  }
  if (i < n) {  // same arithmetic as the full vectors, so results do not depend on the split
    const int m = n - i;
    const Vf x = VLoadN(g + i, m);
    const Vf silu = VDiv(x, VAdd(one, VExp(VSub(VZero(), x))));
    VStoreN(g + i, VMul(VMul(silu, VLoadN(u + i, m)), vs), m);
  }
#else
  for (; i < n; ++i) {
    const float x = g[i];
    g[i] = x / (1.0f + std::exp(-x)) * u[i] * scale;
  }
#endif
}

// The expert over rows read through `x`, results written through `y`; `input_scale`
// scales the down projection's input rows (see SwiGluExpert).
void SwiGlu(const internal::InRows& x, int T, const WeightMatrix& w1, const WeightMatrix& w3,
            const WeightMatrix& w2, const internal::OutRows& y, float* scratch,
            const float* input_scale) {
  if (T <= 0) return;
  const int F = w1.rows;
  const int H = w2.rows;
  float* g = scratch;
  float* u = scratch + static_cast<int64_t>(T) * F;
  const int64_t macs = static_cast<int64_t>(T) * F * (w1.cols + w3.cols + w2.cols);
  const bool parallel = macs >= internal::kParallelMacs;
  const internal::OutRows g_out = internal::OutRows::Strided(g, F, false);
  const internal::OutRows u_out = internal::OutRows::Strided(u, F, false);
  const internal::InRows g_in = internal::InRows::Strided(g, F);
  // One OpenMP region: each thread computes the same rows of w1 and w3, so it can apply the
  // gate to those columns at once; one barrier, then the rows of w2.
#pragma omp parallel if (parallel)
  {
    const int nt = omp_get_num_threads();
    const int tid = omp_get_thread_num();
    int b, e;
    internal::SplitRows(F, tid, nt, &b, &e);
    internal::MatMulRows(x, T, w1, g_out, b, e);
    internal::MatMulRows(x, T, w3, u_out, b, e);
    if (b < e) {
      for (int t = 0; t < T; ++t) {
        const int64_t off = static_cast<int64_t>(t) * F + b;
        // The down projection is linear: scaling its input row scales its output row.
        SiluMul(g + off, u + off, e - b, input_scale ? input_scale[t] : 1.0f);
      }
    }
#pragma omp barrier
    internal::SplitRows(H, tid, nt, &b, &e);
    internal::MatMulRows(g_in, T, w2, y, b, e);
  }
}

}  // namespace

void SwiGluExpert(const float* x, int T, const WeightMatrix& w1, const WeightMatrix& w3,
                  const WeightMatrix& w2, float* y, float* scratch, const float* accumulate_scale) {
  SwiGlu(internal::InRows::Strided(x, w1.cols), T, w1, w3, w2,
         internal::OutRows::Strided(y, w2.rows, accumulate_scale != nullptr), scratch,
         accumulate_scale);
}

void SwiGluExpertRows(const float* const* x, int T, const WeightMatrix& w1,
                      const WeightMatrix& w3, const WeightMatrix& w2, float* const* y,
                      const float* scale, const uint8_t* accumulate, float* scratch) {
  internal::OutRows out;
  out.rows = y;
  out.scale = scale;
  out.accumulate_rows = accumulate;
  SwiGlu(internal::InRows::Gathered(x), T, w1, w3, w2, out, scratch, nullptr);
}

}  // namespace switchyard::cpu
