#include "coordinator/server/proto_convert.h"

#include "gtest/gtest.h"

namespace switchyard {
namespace {

constexpr FinishReason kAll[] = {FinishReason::kLength, FinishReason::kEos, FinishReason::kStop,
                                 FinishReason::kCancelled};

TEST(FinishReasonProto, RoundTripsEveryReason) {
  for (FinishReason r : kAll) {
    const v1::FinishReason proto = FinishReasonToProto(r);
    EXPECT_NE(proto, v1::FINISH_REASON_UNSPECIFIED) << FinishReasonName(r);
    EXPECT_EQ(FinishReasonFromProto(proto), r) << FinishReasonName(r);
  }
  // Not the last message of a stream, or a value from a newer server.
  EXPECT_EQ(FinishReasonFromProto(v1::FINISH_REASON_UNSPECIFIED), std::nullopt);
  EXPECT_EQ(FinishReasonFromProto(static_cast<v1::FinishReason>(99)), std::nullopt);
}

TEST(FinishReasonProto, OneNameEverywhere) {
  // The names `generate --json`, KServe's finish_reason and `switchyard client` print.
  EXPECT_STREQ(FinishReasonName(FinishReason::kLength), "length");
  EXPECT_STREQ(FinishReasonName(FinishReason::kEos), "eos");
  EXPECT_STREQ(FinishReasonName(FinishReason::kStop), "stop");
  EXPECT_STREQ(FinishReasonName(FinishReason::kCancelled), "cancelled");
}

}  // namespace
}  // namespace switchyard
