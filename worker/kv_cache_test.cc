#include "worker/kv_cache.h"

#include "gtest/gtest.h"

namespace switchyard {
namespace {

TEST(KvBytesPerToken, KAndVOnEveryLayerInTheElementSize) {
  // brown-moe: 4 layers, kv_dim 64.
  EXPECT_EQ(KvBytesPerToken(4, 64, KvDType::kF32), 2u * 4 * 64 * 4);
  EXPECT_EQ(KvBytesPerToken(4, 64, KvDType::kBF16), 2u * 4 * 64 * 2);
  EXPECT_EQ(KvElementBytes(kCpuKvDType), sizeof(float));
  EXPECT_EQ(KvElementBytes(kCudaKvDType), 2u);
  // No int overflow on large models: 2 x 80 layers x 1024 x 4 = 655360 bytes per token.
  EXPECT_EQ(KvBytesPerToken(80, 1024, KvDType::kF32), 655360u);
}

TEST(KvCacheShape, BytesAreWhatPagedKvCacheHolds) {
  const KvCacheShape shape{.num_layers = 3, .num_blocks = 5, .block_size = 16, .kv_dim = 64};
  EXPECT_EQ(shape.bytes(), KvBytesPerToken(3, 64, kCpuKvDType) * 5 * 16);
  PagedKvCache cache(shape);
  // Layers are consecutive in one K and one V buffer: the last layer ends where the buffer's
  // floats, counted by bytes() (half for K, half for V), end.
  const cpu::KvLayer first = cache.layer(0);
  const cpu::KvLayer last = cache.layer(shape.num_layers - 1);
  const size_t per_layer = size_t{5} * 16 * 64;
  EXPECT_EQ(static_cast<size_t>(last.k + per_layer - first.k) * sizeof(float) * 2, shape.bytes());
  EXPECT_EQ(first.block_size, 16);
  EXPECT_EQ(first.kv_dim, 64);
}

}  // namespace
}  // namespace switchyard
