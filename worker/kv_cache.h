// Paged KV cache storage of one rank: for each of its layers, fixed-size blocks of token
// slots. Which blocks a sequence owns is decided by the coordinator's BlockAllocator and
// travels in the step plan as a block table; this class only holds the memory.
//
//   PagedKvCache cache({.num_layers = 4, .num_blocks = 256, .block_size = 16, .kv_dim = 64});
//   cpu::KvLayer l0 = cache.layer(0);
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/ops.h"

namespace switchyard {

// What a KV cache stores per element. The same memory budget holds twice the blocks in bf16.
enum class KvDType { kF32, kBF16 };

constexpr uint64_t KvElementBytes(KvDType dtype) { return dtype == KvDType::kBF16 ? 2 : 4; }

// The element type of each executor's cache: PagedKvCache below (LocalExecutor,
// DistributedWorker) holds fp32; the CUDA executor (worker/cuda_executor.h) holds bf16.
inline constexpr KvDType kCpuKvDType = KvDType::kF32;
inline constexpr KvDType kCudaKvDType = KvDType::kBF16;

// KV-cache bytes per token position: K and V, kv_dim elements each, on each of num_layers
// layers. The one formula behind the CPU cache's size, the GPU cache's size and the sizing of
// either from a byte budget (ModelSession's kv_memory).
constexpr uint64_t KvBytesPerToken(int num_layers, int kv_dim, KvDType dtype) {
  return uint64_t{2} * static_cast<uint64_t>(num_layers) * static_cast<uint64_t>(kv_dim) *
         KvElementBytes(dtype);
}

struct KvCacheShape {
  int num_layers = 0;   // layers held by this rank
  int num_blocks = 0;
  int block_size = 16;  // token slots per block
  int kv_dim = 0;       // n_kv_heads * head_dim

  // Bytes of PagedKvCache's storage (fp32).
  uint64_t bytes() const {
    return KvBytesPerToken(num_layers, kv_dim, kCpuKvDType) * static_cast<uint64_t>(num_blocks) *
           static_cast<uint64_t>(block_size);
  }
};

class PagedKvCache {
 public:
  explicit PagedKvCache(const KvCacheShape& shape);
  const KvCacheShape& shape() const { return shape_; }
  // `local_layer` counts from the first layer this rank holds.
  cpu::KvLayer layer(int local_layer);

 private:
  KvCacheShape shape_;
  std::vector<float> k_;
  std::vector<float> v_;
};
static_assert(KvElementBytes(kCpuKvDType) == sizeof(float), "PagedKvCache stores floats");

}  // namespace switchyard
