#include "coordinator/block_allocator.h"

#include <set>

#include "gtest/gtest.h"

namespace switchyard {
namespace {

TEST(BlockAllocator, GrowsInWholeBlocksAndFreesEverything) {
  BlockAllocator a(8, 16);
  std::vector<int32_t> t;
  ASSERT_TRUE(a.Grow(&t, 1));
  EXPECT_EQ(t.size(), 1u);
  ASSERT_TRUE(a.Grow(&t, 16));
  EXPECT_EQ(t.size(), 1u);
  ASSERT_TRUE(a.Grow(&t, 17));
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(a.free_blocks(), 6);
  a.Free(&t);
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(a.free_blocks(), 8);
}

TEST(BlockAllocator, RefusesWithoutPartialAllocation) {
  BlockAllocator a(4, 16);
  std::vector<int32_t> t1, t2;
  ASSERT_TRUE(a.Grow(&t1, 48));
  EXPECT_FALSE(a.Grow(&t2, 32));
  EXPECT_TRUE(t2.empty());
  EXPECT_EQ(a.free_blocks(), 1);
  ASSERT_TRUE(a.Grow(&t2, 16));
  std::set<int32_t> all(t1.begin(), t1.end());
  all.insert(t2.begin(), t2.end());
  EXPECT_EQ(all.size(), 4u) << "blocks handed out twice";
}

}  // namespace
}  // namespace switchyard
