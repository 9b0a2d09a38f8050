#include "common/bf16.h"

#include <cmath>

#include "gtest/gtest.h"

namespace switchyard {
namespace {

TEST(Bf16, RoundTripsExactValues) {
  for (float f : {0.0f, 1.0f, -2.5f, 65536.0f, 0.15625f}) {
    EXPECT_EQ(Bf16ToFloat(FloatToBf16(f)), f);
  }
}

TEST(Bf16, RoundsToNearestEven) {
  // 1 + 2^-8 lies halfway between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  // Just above halfway rounds up.
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -12))),
            1.0f + std::ldexp(1.0f, -7));
}

TEST(Bf16, KeepsNan) { EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf(""))))); }

TEST(Half, ConvertsNormalsSubnormalsAndSpecials) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7c00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
}

}  // namespace
}  // namespace switchyard
