// Drives single sequences through a StepExecutor: chunked prefill, then decode until EOS or
// a token limit; or scoring (logits of every position). Used by the command-line tools and
// benchmarks; the server's scheduler batches many sequences instead.
//
//   SequenceRunner runner(&executor, &allocator, cfg);
//   ASSIGN_OR_RETURN(GenerateOutput out, runner.Generate(prompt, {.max_tokens = 32}, on_token));
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/block_allocator.h"
#include "coordinator/finish_reason.h"
#include "model/config.h"
#include "worker/step.h"

namespace switchyard {

struct GenerateOptions {
  int max_tokens = 64;
  SamplingParams sampling;
  bool stop_at_eos = true;
};

struct GenerateOutput {
  std::vector<int32_t> tokens;  // generated ids (EOS included when it ended the sequence)
  FinishReason finish = FinishReason::kLength;
};

class SequenceRunner {
 public:
  SequenceRunner(StepExecutor* executor, BlockAllocator* allocator, const ModelConfig& cfg);

  // Errors: kInvalidArgument for an empty prompt or one that with max_tokens exceeds the
  // context; kResourceExhausted when the KV pool cannot hold it; executor errors.
  // `on_token` (may be empty) is called with each generated id as it is produced.
  absl::StatusOr<GenerateOutput> Generate(std::span<const int32_t> prompt,
                                          const GenerateOptions& options,
                                          const std::function<void(int32_t)>& on_token);

  // Runs `tokens` and calls on_logits(first_position, rows, logits[rows * vocab]) for every
  // chunk, covering every position in order.
  absl::Status Score(std::span<const int32_t> tokens,
                     const std::function<void(int, int, const float*)>& on_logits);
  // Runs `tokens` and calls on_routing(first_position, rows, experts, weights) for every
  // chunk, covering every position in order: per row, the router's top-k experts and
  // weights of every layer ([rows][num_hidden_layers][top_k]).
  absl::Status Route(
      std::span<const int32_t> tokens,
      const std::function<void(int, int, const int32_t*, const float*)>& on_routing);

 private:
  // Runs `tokens` in chunks as one sequence with `entry`'s modes; on_chunk(first, rows) after
  // each step, with its result in result_.
  absl::Status Teacher(std::span<const int32_t> tokens, SeqEntry entry,
                       const std::function<void(int, int)>& on_chunk);
  absl::Status Reserve(std::vector<int32_t>* table, int tokens);

  StepExecutor* executor_;
  BlockAllocator* allocator_;
  ModelConfig cfg_;
  StepPlan plan_;
  StepResult result_;
  int64_t next_seq_id_ = 1;
};

}  // namespace switchyard
