#include "common/run_spread.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

TEST(RunSpreadWarning, QuietRunsPassAndScatteredOnesAreNamed) {
  EXPECT_EQ(RunSpreadWarning({100, 101, 99, 102}, "tokens/s"), "");
  EXPECT_EQ(RunSpreadWarning({100}, "tokens/s"), "");
  // The first-hour report: median 20 vs best 689 tokens/s.
  const std::string w = RunSpreadWarning({20, 689, 18, 25, 19}, "tokens/s");
  EXPECT_THAT(w, testing::HasSubstr("the 5 runs spread widely: 18.0 (worst), 20.0 (median), "
                                    "689.0 (best) tokens/s"));
  EXPECT_NE(RunSpreadWarning({100, 100, 160}, "tokens/s"), "");  // best > 1.5x worst
}

}  // namespace
}  // namespace switchyard
