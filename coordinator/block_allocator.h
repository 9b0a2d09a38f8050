// KV-cache block accounting for one data-parallel index: which of the pool's blocks are free,
// and the block table of each sequence.
//
//   BlockAllocator alloc(/*num_blocks=*/256, /*block_size=*/16);
//   std::vector<int32_t> table;
//   if (!alloc.Grow(&table, prompt_len + 1)) { /* wait or refuse */ }
//   ...
//   alloc.Free(&table);
//
// Not thread-safe: owned by the scheduler thread.
#pragma once

#include <cstdint>
#include <vector>

namespace switchyard {

class BlockAllocator {
 public:
  BlockAllocator(int num_blocks, int block_size);
  int BlocksFor(int tokens) const { return (tokens + block_size_ - 1) / block_size_; }
  // Extends `table` to cover `tokens` positions. Returns false, leaving it unchanged, when not
  // enough blocks are free.
  bool Grow(std::vector<int32_t>* table, int tokens);
  // Returns the table's blocks to the pool and clears it.
  void Free(std::vector<int32_t>* table);
  int free_blocks() const { return static_cast<int>(free_.size()); }
  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }

 private:
  int num_blocks_;
  int block_size_;
  std::vector<int32_t> free_;  // a stack; lowest ids handed out first
};

}  // namespace switchyard
