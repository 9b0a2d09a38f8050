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

struct KvCacheShape {
  int num_layers = 0;   // layers held by this rank
  int num_blocks = 0;
  int block_size = 16;  // token slots per block
  int kv_dim = 0;       // n_kv_heads * head_dim

  uint64_t bytes() const {
    return uint64_t{2} * num_layers * num_blocks * block_size * kv_dim * sizeof(float);
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

}  // namespace switchyard
