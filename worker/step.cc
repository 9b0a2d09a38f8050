#include "worker/step.h"

namespace switchyard {

void StepPlan::AddSequence(SeqEntry entry, std::span<const int32_t> chunk,
                           std::span<const int32_t> block_table) {
  entry.num_tokens = static_cast<int32_t>(chunk.size());
  entry.token_offset = static_cast<int32_t>(tokens.size());
  entry.block_offset = static_cast<int32_t>(block_tables.size());
  entry.num_blocks = static_cast<int32_t>(block_table.size());
  tokens.insert(tokens.end(), chunk.begin(), chunk.end());
  block_tables.insert(block_tables.end(), block_table.begin(), block_table.end());
  seqs.push_back(entry);
}

}  // namespace switchyard
