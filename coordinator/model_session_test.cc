#include "coordinator/model_session.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/kv_cache.h"

namespace switchyard {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;

// models/brown-moe: 4 layers, 2 KV heads of 32 (kv_dim 64), a context of 1024 positions
// (64 blocks of 16).
ModelConfig BrownMoe() {
  return *LoadModelConfig(std::string(SWITCHYARD_SOURCE_ROOT) + "/models/brown-moe/config.json");
}

PlacementPlan OneStage() { return {.ep = 1, .pp = 1, .stage_layers = {{0, 4}}}; }

SessionOptions ByMemory(uint64_t kv_memory, int max_sequences = 64) {
  return {.block_size = 16, .kv_memory = kv_memory, .kv_max_sequences = max_sequences};
}

int Blocks(const SessionOptions& options, KvDType dtype, const PlacementPlan& plan = OneStage()) {
  absl::StatusOr<int> blocks = KvPoolBlocks(options, BrownMoe(), plan, dtype);
  EXPECT_TRUE(blocks.ok()) << blocks.status();
  return blocks.value_or(-1);
}

TEST(KvPoolBlocks, BudgetHoldsTwiceTheBlocksInBf16) {
  // A 16-position block: 2 (K, V) x 4 layers x 64 x 16 = 8192 elements: 32 KiB in fp32 (the
  // CPU executors), 16 KiB in bf16 (the CUDA executor).
  EXPECT_EQ(Blocks(ByMemory(20 * kMiB), kCpuKvDType), 640);
  EXPECT_EQ(Blocks(ByMemory(20 * kMiB), kCudaKvDType), 1280);
  // Rounded down to whole blocks.
  EXPECT_EQ(Blocks(ByMemory(20000000), KvDType::kF32), 610);   // 20000000 / 32768 = 610.4
  EXPECT_EQ(Blocks(ByMemory(20000000), KvDType::kBF16), 1220);  // 20000000 / 16384 = 1220.7
  // Either way the pool takes the bytes asked for, in the device's own element size.
  EXPECT_EQ(KvBytesPerToken(4, 64, kCpuKvDType) * 16 * 640, 20 * kMiB);
  EXPECT_EQ(KvBytesPerToken(4, 64, kCudaKvDType) * 16 * 1280, 20 * kMiB);
}

TEST(KvPoolBlocks, CountsTheStageWithTheMostLayers) {
  // pp = 2 with stages of 3 and 1 layers: the 3-layer stage's cache must fit the budget.
  const PlacementPlan uneven{.ep = 1, .pp = 2, .stage_layers = {{0, 3}, {3, 4}}};
  EXPECT_EQ(Blocks(ByMemory(20 * kMiB), KvDType::kF32, uneven), 853);   // / 24576
  EXPECT_EQ(Blocks(ByMemory(20 * kMiB), KvDType::kBF16, uneven), 1706);  // / 12288
}

TEST(KvPoolBlocks, AtLeastOneContextAtMostMaxSequences) {
  for (KvDType dtype : {KvDType::kF32, KvDType::kBF16}) {
    EXPECT_EQ(Blocks(ByMemory(0), dtype), 64) << "no budget: one full context";
    EXPECT_EQ(Blocks(ByMemory(1024), dtype), 64) << "never less than one context";
    EXPECT_EQ(Blocks(ByMemory(1024 * kMiB, 3), dtype), 3 * 64) << "capped by max sequences";
    EXPECT_EQ(Blocks(ByMemory(~uint64_t{0}, 5), dtype), 5 * 64) << "a budget past 2^63";
    SessionOptions exact = ByMemory(1024 * kMiB);
    exact.kv_blocks = 100;
    EXPECT_EQ(Blocks(exact, dtype), 100) << "kv_blocks wins over kv_memory";
  }
}

TEST(KvPoolBlocks, Errors) {
  SessionOptions huge = ByMemory(0);
  huge.kv_blocks = (1 << 30) + 1;
  absl::StatusOr<int> r = KvPoolBlocks(huge, BrownMoe(), OneStage(), KvDType::kF32);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("1073741825 blocks is too large"));
  SessionOptions no_block = ByMemory(20 * kMiB);
  no_block.block_size = 0;
  r = KvPoolBlocks(no_block, BrownMoe(), OneStage(), KvDType::kF32);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace switchyard
