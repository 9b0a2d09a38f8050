// Embedding, RMSNorm, RoPE and the residual add.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/bf16.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace switchyard::cpu {
namespace {

// Element counts below which an operation runs on the calling thread only.
constexpr int64_t kParallelElems = int64_t{1} << 16;

// Widens n values of type `dtype` at src to fp32.
void WidenRow(const void* src, DType dtype, int n, float* out) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out, src, sizeof(float) * n);
      return;
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      int i = 0;
#ifdef SY_SIMD
      for (; i + simd::kLanes <= n; i += simd::kLanes)
        simd::VStore(out + i, simd::VLoadBf16(s + i));
#endif
      for (; i < n; ++i) out[i] = Bf16ToFloat(s[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      int i = 0;
#ifdef SY_SIMD
      for (; i + simd::kLanes <= n; i += simd::kLanes) simd::VStore(out + i, simd::VLoadF16(s + i));
#endif
      for (; i < n; ++i) out[i] = HalfToFloat(s[i]);
      return;
    }
  }
}

void RmsNormRow(const float* x, const float* weight, int H, float eps, float* out) {
  int i = 0;
  float ss = 0.0f;
#ifdef SY_SIMD
  using namespace simd;
  Vf a0 = VZero(), a1 = VZero();
  for (; i + 2 * kLanes <= H; i += 2 * kLanes) {
    const Vf v0 = VLoad(x + i);
    const Vf v1 = VLoad(x + i + kLanes);
    a0 = VFma(v0, v0, a0);
    a1 = VFma(v1, v1, a1);
  }
  for (; i + kLanes <= H; i += kLanes) {
    const Vf v = VLoad(x + i);
    a0 = VFma(v, v, a0);
  }
  if (i < H) {
    const Vf v = VLoadN(x + i, H - i);
    a0 = VFma(v, v, a0);
  }
  ss = VSum(VAdd(a0, a1));
#else
  for (; i < H; ++i) ss += x[i] * x[i];
#endif
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(H) + eps);
  // As the reference: (x * inv) rounded to fp32, then * weight.
  i = 0;
#ifdef SY_SIMD
  const Vf vinv = VSet(inv);
  for (; i + kLanes <= H; i += kLanes) {
    VStore(out + i, VMul(VMul(VLoad(x + i), vinv), VLoad(weight + i)));
  }
  if (i < H) {
    const int n = H - i;
    VStoreN(out + i, VMul(VMul(VLoadN(x + i, n), vinv), VLoadN(weight + i, n)), n);
  }
#else
  for (; i < H; ++i) out[i] = (x[i] * inv) * weight[i];
#endif
}

}  // namespace

void Embedding(const WeightMatrix& table, const int32_t* ids, int T, float* out) {
  const int H = table.cols;
  for (int t = 0; t < T; ++t) {
    WidenRow(table.row(ids[t]), table.dtype, H, out + static_cast<int64_t>(t) * H);
  }
}

void RmsNorm(const float* x, const float* weight, int T, int H, float eps, float* out) {
  const bool parallel = static_cast<int64_t>(T) * H >= kParallelElems;
#pragma omp parallel for schedule(static) if (parallel)
  for (int t = 0; t < T; ++t) {
    const int64_t off = static_cast<int64_t>(t) * H;
    RmsNormRow(x + off, weight, H, eps, out + off);
  }
}

void RopeInvFreq(int head_dim, double theta, float* inv_freq) {
  // torch: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all in float32.
  const float base = static_cast<float>(theta);
  for (int i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(base, exponent);
  }
}

void Rope(float* x, int T, int n_heads, int head_dim, const int32_t* positions,
          const float* inv_freq) {
  const int half = head_dim / 2;
  const int64_t row = static_cast<int64_t>(n_heads) * head_dim;
  constexpr int kMaxHalf = 512;
#pragma omp parallel for schedule(static) if (T * row >= kParallelElems)
  for (int t = 0; t < T; ++t) {
    float* xt = x + t * row;
    const float pos = static_cast<float>(positions[t]);
    // cos/sin of each frequency once per token, shared by all heads.
    float cs[kMaxHalf], sn[kMaxHalf];
    for (int c0 = 0; c0 < half; c0 += kMaxHalf) {
      const int c1 = std::min(half, c0 + kMaxHalf);
      for (int i = c0; i < c1; ++i) {
        const float a = pos * inv_freq[i];
        cs[i - c0] = std::cos(a);
        sn[i - c0] = std::sin(a);
      }
      for (int h = 0; h < n_heads; ++h) {
        float* lo = xt + static_cast<int64_t>(h) * head_dim;
        float* hi = lo + half;
        int i = c0;
#ifdef SY_SIMD
        using namespace simd;
        for (; i + kLanes <= c1; i += kLanes) {
          const Vf a = VLoad(lo + i), b = VLoad(hi + i);
          const Vf c = VLoad(cs + i - c0), s = VLoad(sn + i - c0);
          VStore(lo + i, VSub(VMul(a, c), VMul(b, s)));
          VStore(hi + i, VAdd(VMul(b, c), VMul(a, s)));
        }
#endif
        for (; i < c1; ++i) {
          const float a = lo[i], b = hi[i];
          const float c = cs[i - c0], s = sn[i - c0];
          lo[i] = a * c - b * s;
          hi[i] = b * c + a * s;
        }
      }
    }
  }
}

void AddInPlace(float* x, const float* y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= 4 * kParallelElems)
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace switchyard::cpu
