#include "common/npy.h"

#include <cstdio>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

TEST(Npy, RoundTrip) {
  std::string path = testing::TempDir() + "/rt.npy";
  std::vector<float> v = {1.f, -2.f, 3.5f, 4.f, 5.f, 6.f};
  ASSERT_TRUE(WriteNpyF32(path, v.data(), {2, 3}).ok());
  auto r = ReadNpyF32(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->shape, testing::ElementsAre(2, 3));
  EXPECT_EQ(r->data, v);
}

TEST(Npy, HeaderIsAlignedTo64Bytes) {
  std::string path = testing::TempDir() + "/al.npy";
  float x = 1;
  ASSERT_TRUE(WriteNpyF32(path, &x, {1}).ok());
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  EXPECT_EQ((static_cast<int64_t>(in.tellg()) - 4) % 64, 0);
}

TEST(Npy, RejectsNonNpy) {
  std::string path = testing::TempDir() + "/bad.npy";
  std::ofstream(path) << "hello world";
  auto r = ReadNpyF32(path);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), testing::HasSubstr("not a .npy file"));
}

}  // namespace
}  // namespace switchyard
