// The unit of work the coordinator hands to workers: one forward step over a batch of
// sequence chunks (prefill chunks and decode tokens mixed), and what comes back.
//
//   StepPlan plan;
//   plan.AddSequence({.seq_id = 7, .start_pos = 0, .logits = LogitsMode::kLast, .sample = true},
//                    prompt_ids, block_table);
//   RETURN_IF_ERROR(executor->Execute(plan, &result));
//   int32_t next = result.next_tokens[0];
//
// Plans and results are flat (POD entries plus concatenated arrays) so they travel between
// ranks as a few byte buffers and can be reused step after step without allocating.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/sampling.h"

namespace switchyard {

enum class LogitsMode : uint8_t { kNone = 0, kLast = 1, kAll = 2 };

struct SeqEntry {
  int64_t seq_id = 0;
  int32_t dp_rank = 0;      // the data-parallel index that holds this sequence's KV cache
  int32_t start_pos = 0;    // position of the first token of this chunk
  int32_t num_tokens = 0;   // set by AddSequence
  int32_t token_offset = 0; // into StepPlan::tokens; set by AddSequence
  int32_t block_offset = 0; // into StepPlan::block_tables; set by AddSequence
  int32_t num_blocks = 0;   // set by AddSequence
  LogitsMode logits = LogitsMode::kNone;  // logits to return
  bool sample = false;      // sample a next token from the chunk's last row
  SamplingParams sampling;
  uint64_t sample_index = 0;  // RNG counter: index of the generated token within its request
};

struct StepPlan {
  std::vector<SeqEntry> seqs;
  std::vector<int32_t> tokens;        // all chunks, concatenated in seqs order
  std::vector<int32_t> block_tables;  // all block tables, concatenated

  void Clear() {
    seqs.clear();
    tokens.clear();
    block_tables.clear();
  }
  // Appends a sequence chunk; fills entry's offsets and counts.
  void AddSequence(SeqEntry entry, std::span<const int32_t> chunk,
                   std::span<const int32_t> block_table);
  int total_tokens() const { return static_cast<int>(tokens.size()); }
};

struct StepResult {
  std::vector<int32_t> next_tokens;   // per seq; -1 where not sampled
  std::vector<float> logits;          // rows of every seq that asked, concatenated
  std::vector<int32_t> logits_offset; // per seq: first row in `logits` (rows * vocab floats)
  std::vector<int32_t> logits_rows;   // per seq: number of rows (0 when none)

  std::span<const float> SeqLogits(int i, int vocab) const {
    return {logits.data() + static_cast<size_t>(logits_offset[i]) * vocab,
            static_cast<size_t>(logits_rows[i]) * vocab};
  }
};

// What one rank holds and has done, for observability.
struct RankStatus {
  int world_rank = 0;
  int stage = 0;
  int ep_rank = 0;
  int layer_begin = 0;  // [layer_begin, layer_end)
  int layer_end = 0;
  std::vector<std::vector<int>> experts;  // per held layer: global expert ids
  int64_t weight_bytes = 0;
  int64_t kv_bytes = 0;
  int64_t steps = 0;
  // Per held layer and expert: tokens this rank's router sent to that expert since start.
  std::vector<std::vector<int64_t>> expert_tokens;
};

// Executes steps. The coordinator owns one; the local implementation runs the whole model in
// this process, the distributed one drives every rank of the job.
class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  // Runs the step. Errors: kInvalidArgument for a plan over the executor's limits,
  // kUnavailable when a peer rank failed or timed out. Not thread-safe.
  virtual absl::Status Execute(const StepPlan& plan, StepResult* result) = 0;
  // The most tokens one step may carry (per data-parallel rank).
  virtual int max_step_tokens() const = 0;
  // One entry per rank, in world-rank order. Collective in the distributed case: call it
  // from the thread that calls Execute, between steps.
  virtual absl::StatusOr<std::vector<RankStatus>> CollectStatus() = 0;
};

}  // namespace switchyard
