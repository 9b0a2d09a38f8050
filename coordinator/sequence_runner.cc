#include "coordinator/sequence_runner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {

SequenceRunner::SequenceRunner(StepExecutor* executor, BlockAllocator* allocator,
                               const ModelConfig& cfg)
    : executor_(executor), allocator_(allocator), cfg_(cfg) {}

absl::Status SequenceRunner::Reserve(std::vector<int32_t>* table, int tokens) {
  if (!allocator_->Grow(table, tokens)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache too small: ", tokens, " positions need ", allocator_->BlocksFor(tokens),
        " blocks, ", allocator_->free_blocks(), " free"));
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerateOutput> SequenceRunner::Generate(
    std::span<const int32_t> prompt, const GenerateOptions& options,
    const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  if (options.max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be at least 1");
  const int total = static_cast<int>(prompt.size()) + options.max_tokens;
  if (total > cfg_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", prompt.size(), " tokens) + max_tokens (", options.max_tokens,
        ") exceeds the model's context of ", cfg_.max_position_embeddings));
  }
  std::vector<int32_t> table;
  // Positions written: the prompt and every generated token but the last.
  absl::Status st = Reserve(&table, total - 1);
  const int64_t seq_id = next_seq_id_++;
  GenerateOutput out;
  const int chunk = executor_->max_step_tokens();
  int pos = 0;
  int32_t next = -1;
  // Prefill in chunks; the last chunk samples the first token.
  while (st.ok() && pos < static_cast<int>(prompt.size())) {
    const int n = std::min<int>(chunk, prompt.size() - pos);
    const bool last = pos + n == static_cast<int>(prompt.size());
    plan_.Clear();
    plan_.AddSequence({.seq_id = seq_id, .start_pos = pos, .sample = last,
                       .sampling = options.sampling, .sample_index = 0},
                      prompt.subspan(pos, n), table);
    st = executor_->Execute(plan_, &result_);
    if (st.ok() && last) next = result_.next_tokens[0];
    pos += n;
  }
  while (st.ok()) {
    out.tokens.push_back(next);
    if (on_token) on_token(next);
    if (options.stop_at_eos && next == cfg_.eos_token_id) {
      out.finish = FinishReason::kEos;
      break;
    }
    if (static_cast<int>(out.tokens.size()) >= options.max_tokens) {
      out.finish = FinishReason::kLength;
      break;
    }
    plan_.Clear();
    plan_.AddSequence({.seq_id = seq_id, .start_pos = pos, .sample = true,
                       .sampling = options.sampling, .sample_index = out.tokens.size()},
                      std::span<const int32_t>(&next, 1), table);
    st = executor_->Execute(plan_, &result_);
    if (st.ok()) next = result_.next_tokens[0];
    ++pos;
  }
  allocator_->Free(&table);
  RETURN_IF_ERROR(st);
  return out;
}

absl::Status SequenceRunner::Score(std::span<const int32_t> tokens,
                                   const std::function<void(int, int, const float*)>& on_logits) {
  return Teacher(tokens, {.logits = LogitsMode::kAll}, [&](int pos, int n) {
    on_logits(pos, n, result_.SeqLogits(0, cfg_.vocab_size).data());
  });
}

absl::Status SequenceRunner::Route(
    std::span<const int32_t> tokens,
    const std::function<void(int, int, const int32_t*, const float*)>& on_routing) {
  const int row = cfg_.num_hidden_layers * cfg_.num_experts_per_tok;
  return Teacher(tokens, {.routing = RoutingMode::kAll}, [&](int pos, int n) {
    on_routing(pos, n, result_.SeqRoutingExperts(0, row).data(),
               result_.SeqRoutingWeights(0, row).data());
  });
}

absl::Status SequenceRunner::Teacher(std::span<const int32_t> tokens, SeqEntry entry,
                                     const std::function<void(int, int)>& on_chunk) {
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens given");
  if (static_cast<int>(tokens.size()) > cfg_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(tokens.size(),
                                                   " tokens exceed the model's context of ",
                                                   cfg_.max_position_embeddings));
  }
  std::vector<int32_t> table;
  absl::Status st = Reserve(&table, tokens.size());
  const int64_t seq_id = next_seq_id_++;
  const int chunk = executor_->max_step_tokens();
  for (int pos = 0; st.ok() && pos < static_cast<int>(tokens.size()); pos += chunk) {
    const int n = std::min<int>(chunk, tokens.size() - pos);
    plan_.Clear();
    entry.seq_id = seq_id;
    entry.start_pos = pos;
    plan_.AddSequence(entry, tokens.subspan(pos, n), table);
    st = executor_->Execute(plan_, &result_);
    if (st.ok()) on_chunk(pos, n);
  }
  allocator_->Free(&table);
  return st;
}

}  // namespace switchyard
