// Internal SIMD helpers shared by the CPU kernels (not part of the public kernel API).
//
// One vector type `Vf` of kLanes fp32 lanes is chosen at compile time:
//   AVX-512 (F+BW+VL): __m512, 16 lanes, masked loads for tails
//   AVX2 + FMA + F16C: __m256, 8 lanes, tails through a zero-padded stack copy
// Without either, SY_SIMD is undefined and callers use their scalar loops.
//
//   Vf acc = VZero();
//   for (; i + kLanes <= n; i += kLanes) acc = VFma(VLoad(a + i), VLoad(b + i), acc);
//   if (i < n) acc = VFma(VLoadN(a + i, n - i), VLoadN(b + i, n - i), acc);
//   float s = VSum(acc);
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "model/tensor.h"

#if defined(__AVX512F__) || defined(__AVX2__)
// GCC 12 flags the deliberately undefined registers inside the AVX-512 intrinsics
// (-Wmaybe-uninitialized, GCC bug 105593, fixed in GCC 13) wherever they are inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SY_SIMD 512
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SY_SIMD 256
#endif

namespace switchyard::cpu::simd {

#if SY_SIMD == 512

using Vf = __m512;
inline constexpr int kLanes = 16;

inline __mmask16 TailMask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }

inline Vf VZero() { return _mm512_setzero_ps(); }
inline Vf VSet(float v) { return _mm512_set1_ps(v); }
inline Vf VLoad(const float* p) { return _mm512_loadu_ps(p); }
inline Vf VLoadN(const float* p, int n) { return _mm512_maskz_loadu_ps(TailMask(n), p); }
inline void VStore(float* p, Vf v) { _mm512_storeu_ps(p, v); }
inline void VStoreN(float* p, Vf v, int n) { _mm512_mask_storeu_ps(p, TailMask(n), v); }
inline Vf VAdd(Vf a, Vf b) { return _mm512_add_ps(a, b); }
inline Vf VSub(Vf a, Vf b) { return _mm512_sub_ps(a, b); }
inline Vf VMul(Vf a, Vf b) { return _mm512_mul_ps(a, b); }
inline Vf VDiv(Vf a, Vf b) { return _mm512_div_ps(a, b); }
inline Vf VMax(Vf a, Vf b) { return _mm512_max_ps(a, b); }
inline Vf VFma(Vf a, Vf b, Vf c) { return _mm512_fmadd_ps(a, b, c); }
inline float VSum(Vf v) { return _mm512_reduce_add_ps(v); }
inline float VMaxReduce(Vf v) { return _mm512_reduce_max_ps(v); }

// Widening loads of kLanes weights starting at element 0 of p.
inline Vf VLoadBf16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
inline Vf VLoadBf16N(const uint16_t* p, int n) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(TailMask(n), p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
inline Vf VLoadF16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline Vf VLoadF16N(const uint16_t* p, int n) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(TailMask(n), p));
}

// exp(x), Cephes-style polynomial (about 2 ulp over the normal range); -inf -> 0.
inline Vf VExp(Vf x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7228f)), _mm512_set1_ps(-104.0f));
  const Vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  Vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  Vf y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// Sums of four vectors: {sum(a), sum(b), sum(c), sum(d)}.
inline __m128 VSum4(Vf a, Vf b, Vf c, Vf d) {
  auto fold = [](Vf v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  };
  const __m256 ab = _mm256_hadd_ps(fold(a), fold(b));
  const __m256 cd = _mm256_hadd_ps(fold(c), fold(d));
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

#elif SY_SIMD == 256

using Vf = __m256;
inline constexpr int kLanes = 8;

inline Vf VZero() { return _mm256_setzero_ps(); }
inline Vf VSet(float v) { return _mm256_set1_ps(v); }
inline Vf VLoad(const float* p) { return _mm256_loadu_ps(p); }
inline Vf VLoadN(const float* p, int n) {
  alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, p, sizeof(float) * n);
  return _mm256_load_ps(buf);
}
inline void VStore(float* p, Vf v) { _mm256_storeu_ps(p, v); }
inline void VStoreN(float* p, Vf v, int n) {
  alignas(32) float buf[8];
  _mm256_store_ps(buf, v);
  std::memcpy(p, buf, sizeof(float) * n);
}
inline Vf VAdd(Vf a, Vf b) { return _mm256_add_ps(a, b); }
inline Vf VSub(Vf a, Vf b) { return _mm256_sub_ps(a, b); }
inline Vf VMul(Vf a, Vf b) { return _mm256_mul_ps(a, b); }
inline Vf VDiv(Vf a, Vf b) { return _mm256_div_ps(a, b); }
inline Vf VMax(Vf a, Vf b) { return _mm256_max_ps(a, b); }
inline Vf VFma(Vf a, Vf b, Vf c) { return _mm256_fmadd_ps(a, b, c); }
inline float VSum(Vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float VMaxReduce(Vf v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline Vf VLoadBf16(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline Vf VLoadBf16N(const uint16_t* p, int n) {
  alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, p, sizeof(uint16_t) * n);
  return VLoadBf16(buf);
}
inline Vf VLoadF16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline Vf VLoadF16N(const uint16_t* p, int n) {
  alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, p, sizeof(uint16_t) * n);
  return VLoadF16(buf);
}

// exp(x), Cephes-style polynomial; results below ~1e-38 flush to 0.
inline Vf VExp(Vf x) {
  const Vf lo = _mm256_set1_ps(-87.3f);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  const Vf under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  const Vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  Vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  Vf y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n: n in [-126, 128) here; 128 (x near the top) is split as 2^(n-1) * 2.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i top = _mm256_cmpgt_epi32(ni, _mm256_set1_epi32(127));
  const __m256i e = _mm256_sub_epi32(ni, _mm256_and_si256(top, _mm256_set1_epi32(1)));
  Vf pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
  pow2 = _mm256_mul_ps(
      pow2, _mm256_blendv_ps(_mm256_set1_ps(1.0f), _mm256_set1_ps(2.0f), _mm256_castsi256_ps(top)));
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, pow2));
}

inline __m128 VSum4(Vf a, Vf b, Vf c, Vf d) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

#endif  // SY_SIMD

#ifdef SY_SIMD
// Loads kLanes (or n < kLanes) weights of type D starting at element index i, widened to fp32.
template <DType D>
inline Vf VLoadW(const void* base, int64_t i) {
  if constexpr (D == DType::kF32) {
    return VLoad(static_cast<const float*>(base) + i);
  } else if constexpr (D == DType::kBF16) {
    return VLoadBf16(static_cast<const uint16_t*>(base) + i);
  } else {
    return VLoadF16(static_cast<const uint16_t*>(base) + i);
  }
}
template <DType D>
inline Vf VLoadWN(const void* base, int64_t i, int n) {
  if constexpr (D == DType::kF32) {
    return VLoadN(static_cast<const float*>(base) + i, n);
  } else if constexpr (D == DType::kBF16) {
    return VLoadBf16N(static_cast<const uint16_t*>(base) + i, n);
  } else {
    return VLoadF16N(static_cast<const uint16_t*>(base) + i, n);
  }
}
#endif

}  // namespace switchyard::cpu::simd
