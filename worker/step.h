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
#include "worker/rank_status.h"

namespace switchyard {

enum class LogitsMode : uint8_t { kNone = 0, kLast = 1, kAll = 2 };
// Which rows of a chunk return the router's choices (every layer's top-k experts and
// weights): none, the last row (the one a sampled token comes from), or every row.
enum class RoutingMode : uint8_t { kNone = 0, kLast = 1, kAll = 2 };

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
  RoutingMode routing = RoutingMode::kNone;  // router choices to return
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

// The rows of a sequence's chunk the model head computes: every row for kAll, the last row
// for kLast or sampling, none otherwise (or when the chunk is empty).
int HeadRows(const SeqEntry& s);
// The rows of logits a sequence gets back in StepResult: num_tokens for kAll, 1 for kLast,
// 0 otherwise (or when the chunk is empty).
int ReturnedLogitRows(const SeqEntry& s);

// The rows of a sequence's chunk whose routing comes back in StepResult: num_tokens for kAll,
// 1 for kLast, 0 otherwise (or when the chunk is empty). They are the chunk's last rows.
int RoutingRows(const SeqEntry& s);

// What a plan must respect to run on a job (every executor checks it once, with
// ValidatePlan, before any rank starts the step).
struct PlanLimits {
  int vocab_size = 0;
  int dp_size = 1;          // data-parallel indices: SeqEntry::dp_rank in [0, dp_size)
  int max_step_tokens = 0;  // per data-parallel index
  int max_context = 0;      // positions
  int num_blocks = 0;       // KV blocks of each data-parallel index's cache
  int block_size = 16;
};

// OK, or kInvalidArgument naming the sequence and the field: dp_rank out of range, too many
// tokens for one data-parallel index, a token id outside the vocabulary, negative or
// inconsistent offsets and counts, a position past the context, too few KV blocks, a block id
// outside the cache.
absl::Status ValidatePlan(const StepPlan& plan, const PlanLimits& limits);

struct StepResult {
  std::vector<int32_t> next_tokens;   // per seq; -1 where not sampled
  std::vector<float> logits;          // rows of every seq that asked, concatenated
  std::vector<int32_t> logits_offset; // per seq: first row in `logits` (rows * vocab floats)
  std::vector<int32_t> logits_rows;   // per seq: number of rows (0 when none)

  // The router's choices for the rows of every seq that asked (SeqEntry::routing), rows of
  // all seqs concatenated; one row is [num_hidden_layers][top_k] expert ids (descending
  // weight) and their weights, every layer of the model whichever ranks ran it.
  std::vector<int32_t> routing_experts;
  std::vector<float> routing_weights;
  std::vector<int32_t> routing_offset;  // per seq: first row in routing_*
  std::vector<int32_t> routing_rows;    // per seq: number of rows (0 when none)

  std::span<const float> SeqLogits(int i, int vocab) const {
    return {logits.data() + static_cast<size_t>(logits_offset[i]) * vocab,
            static_cast<size_t>(logits_rows[i]) * vocab};
  }
  // Seq i's routing: routing_rows[i] rows of `row_entries` (layers * top_k) entries.
  std::span<const int32_t> SeqRoutingExperts(int i, int row_entries) const {
    return {routing_experts.data() + static_cast<size_t>(routing_offset[i]) * row_entries,
            static_cast<size_t>(routing_rows[i]) * row_entries};
  }
  std::span<const float> SeqRoutingWeights(int i, int row_entries) const {
    return {routing_weights.data() + static_cast<size_t>(routing_offset[i]) * row_entries,
            static_cast<size_t>(routing_rows[i]) * row_entries};
  }
  // Sets routing_offset/routing_rows for `plan` (RoutingRows of each seq) and sizes the
  // routing arrays for `row_entries` entries per row; returns the total rows.
  int SizeRouting(const StepPlan& plan, int row_entries);
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
  // Whether steps return routing (SeqEntry::routing); an executor that does not refuses
  // plans that ask for it.
  virtual bool records_routing() const { return true; }
  // One entry per rank, in world-rank order. Collective in the distributed case: call it
  // from the thread that calls Execute, between steps.
  virtual absl::StatusOr<std::vector<RankStatus>> CollectStatus() = 0;
};

}  // namespace switchyard
