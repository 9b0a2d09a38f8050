// bfloat16 and IEEE half conversions used by the loaders and the CPU kernels.
//
//   uint16_t b = FloatToBf16(1.5f);
//   float f = Bf16ToFloat(b);   // 1.5f
#pragma once

#include <cstdint>
#include <cstring>

namespace switchyard {

inline float Bf16ToFloat(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round-to-nearest-even, NaN preserved.
inline uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float HalfToFloat(uint16_t h);

}  // namespace switchyard
