#include "common/byte_size.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using ::testing::HasSubstr;

// The error for `text`, which must not parse.
std::string ErrorOf(const std::string& text) {
  absl::StatusOr<uint64_t> r = ParseByteSize(text);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << "'" << text << "'";
  return std::string(r.status().message());
}

TEST(ParseByteSize, PlainNumbers) {
  EXPECT_EQ(*ParseByteSize("1"), 1u);
  EXPECT_EQ(*ParseByteSize("1048576"), 1048576u);
  EXPECT_EQ(*ParseByteSize("007"), 7u);
  EXPECT_EQ(*ParseByteSize("18446744073709551615"), 18446744073709551615u);  // 2^64 - 1
}

TEST(ParseByteSize, EverySuffix) {
  EXPECT_EQ(*ParseByteSize("1B"), 1u);
  EXPECT_EQ(*ParseByteSize("2K"), 2000u);
  EXPECT_EQ(*ParseByteSize("2KB"), 2000u);
  EXPECT_EQ(*ParseByteSize("512M"), 512000000u);
  EXPECT_EQ(*ParseByteSize("512MB"), 512000000u);
  EXPECT_EQ(*ParseByteSize("80G"), 80000000000u);
  EXPECT_EQ(*ParseByteSize("80GB"), 80000000000u);
  EXPECT_EQ(*ParseByteSize("2T"), 2000000000000u);
  EXPECT_EQ(*ParseByteSize("2TB"), 2000000000000u);
  EXPECT_EQ(*ParseByteSize("1KiB"), 1024u);
  EXPECT_EQ(*ParseByteSize("1MiB"), 1048576u);
  EXPECT_EQ(*ParseByteSize("80GiB"), 85899345920u);
  EXPECT_EQ(*ParseByteSize("2TiB"), 2199023255552u);
  EXPECT_EQ(*ParseByteSize("80 GiB"), 85899345920u);  // spaces before the unit
}

TEST(ParseByteSize, FractionsRoundDown) {
  EXPECT_EQ(*ParseByteSize("1.5TiB"), 1649267441664u);
  EXPECT_EQ(*ParseByteSize("0.5KiB"), 512u);
  EXPECT_EQ(*ParseByteSize(".5K"), 500u);
  EXPECT_EQ(*ParseByteSize("1.9"), 1u);
  EXPECT_EQ(*ParseByteSize("1.0009K"), 1000u);
  // Digits past the 18th are ignored: they cannot change a whole byte count.
  EXPECT_EQ(*ParseByteSize("1.99999999999999999999999KiB"), 2047u);
}

TEST(ParseByteSize, Overflow) {
  EXPECT_THAT(ErrorOf("18446744073709551616"), HasSubstr("too large"));  // 2^64
  EXPECT_THAT(ErrorOf("99999999999999999999999999999999999999999"), HasSubstr("too large"));
  EXPECT_THAT(ErrorOf("16777216TiB"), HasSubstr("too large"));  // 2^24 x 2^40 = 2^64
  EXPECT_THAT(ErrorOf("18446744073709551615K"), HasSubstr("too large"));
  EXPECT_EQ(*ParseByteSize("16777215TiB"), 18446742974197923840u);  // just under 2^64
}

TEST(ParseByteSize, NegativeAndZero) {
  EXPECT_THAT(ErrorOf("-1"), HasSubstr("no number"));
  EXPECT_THAT(ErrorOf("-1GiB"), HasSubstr("no number"));
  EXPECT_THAT(ErrorOf("-0"), HasSubstr("no number"));
  EXPECT_THAT(ErrorOf("0"), HasSubstr("must be positive"));
  EXPECT_THAT(ErrorOf("0GiB"), HasSubstr("must be positive"));
  EXPECT_THAT(ErrorOf("0.0001K"), HasSubstr("must be positive"));  // rounds down to 0 bytes
}

TEST(ParseByteSize, Garbage) {
  for (const char* bad : {"", " ", "GiB", "abc", " 1", "+1", "1.2.3", "1e9", "0x10", "1,000",
                          "1 gib", "1gb", "1Gi", "1GiBs", "1x", "1 GiB B", "1\t", "GiB1"}) {
    ErrorOf(bad);
  }
  EXPECT_THAT(ErrorOf("1x"), HasSubstr("unknown unit 'x'"));
  EXPECT_THAT(ErrorOf("abc"), HasSubstr("no number"));
  // The message quotes the text and shows what is accepted.
  EXPECT_EQ(ErrorOf("12parsecs"),
            "'12parsecs' is not a byte size (unknown unit 'parsecs'; e.g. 1073741824, 512M, "
            "80GiB)");
}

}  // namespace
}  // namespace switchyard
