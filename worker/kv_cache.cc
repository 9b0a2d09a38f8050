#include "worker/kv_cache.h"

namespace switchyard {

PagedKvCache::PagedKvCache(const KvCacheShape& shape)
    : shape_(shape),
      k_(static_cast<size_t>(shape.num_layers) * shape.num_blocks * shape.block_size *
         shape.kv_dim),
      v_(k_.size()) {}

cpu::KvLayer PagedKvCache::layer(int local_layer) {
  const size_t per_layer = static_cast<size_t>(shape_.num_blocks) * shape_.block_size * shape_.kv_dim;
  return {k_.data() + per_layer * local_layer, v_.data() + per_layer * local_layer,
          shape_.block_size, shape_.kv_dim};
}

}  // namespace switchyard
