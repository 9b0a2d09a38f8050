#include "worker/step.h"

#include "absl/strings/str_cat.h"

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

int HeadRows(const SeqEntry& s) {
  if (s.num_tokens <= 0) return 0;
  if (s.logits == LogitsMode::kAll) return s.num_tokens;
  return s.logits == LogitsMode::kLast || s.sample ? 1 : 0;
}

int ReturnedLogitRows(const SeqEntry& s) {
  if (s.num_tokens <= 0) return 0;
  if (s.logits == LogitsMode::kAll) return s.num_tokens;
  return s.logits == LogitsMode::kLast ? 1 : 0;
}

int RoutingRows(const SeqEntry& s) {
  if (s.num_tokens <= 0) return 0;
  if (s.routing == RoutingMode::kAll) return s.num_tokens;
  return s.routing == RoutingMode::kLast ? 1 : 0;
}

int StepResult::SizeRouting(const StepPlan& plan, int row_entries) {
  const size_t n = plan.seqs.size();
  routing_offset.assign(n, 0);
  routing_rows.assign(n, 0);
  int32_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    routing_offset[i] = total;
    routing_rows[i] = RoutingRows(plan.seqs[i]);
    total += routing_rows[i];
  }
  routing_experts.resize(static_cast<size_t>(total) * row_entries);
  routing_weights.resize(static_cast<size_t>(total) * row_entries);
  return total;
}

absl::Status ValidatePlan(const StepPlan& plan, const PlanLimits& limits) {
  const int64_t T = static_cast<int64_t>(plan.tokens.size());
  const int64_t B = static_cast<int64_t>(plan.block_tables.size());
  std::vector<int64_t> per_dp(std::max(limits.dp_size, 1), 0);
  for (const SeqEntry& s : plan.seqs) {
    if (s.dp_rank < 0 || s.dp_rank >= limits.dp_size) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id, ": dp_rank ",
                                                     s.dp_rank, " outside [0, ",
                                                     limits.dp_size, ")"));
    }
    if (s.logits > LogitsMode::kAll || s.routing > RoutingMode::kAll) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id, ": logits mode ",
                                                     static_cast<int>(s.logits), ", routing mode ",
                                                     static_cast<int>(s.routing), " unknown"));
    }
    if (s.start_pos < 0 || s.num_tokens < 0 || s.token_offset < 0 ||
        s.token_offset + int64_t{s.num_tokens} > T || s.num_blocks < 0 || s.block_offset < 0 ||
        s.block_offset + int64_t{s.num_blocks} > B) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", s.seq_id, ": start_pos ", s.start_pos, ", tokens [", s.token_offset, ", +",
          s.num_tokens, ") of ", T, ", blocks [", s.block_offset, ", +", s.num_blocks, ") of ",
          B, " do not describe a chunk of the plan"));
    }
    per_dp[s.dp_rank] += s.num_tokens;
    if (per_dp[s.dp_rank] > limits.max_step_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", s.seq_id, ": data-parallel rank ", s.dp_rank, " would get more than ",
          limits.max_step_tokens, " tokens in one step"));
    }
    for (int i = 0; i < s.num_tokens; ++i) {
      const int32_t t = plan.tokens[s.token_offset + i];
      if (t < 0 || t >= limits.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id, ": token id ", t,
                                                       " outside [0, ", limits.vocab_size, ")"));
      }
    }
    if (s.num_tokens == 0) continue;
    const int64_t ctx = int64_t{s.start_pos} + s.num_tokens;
    if (ctx > limits.max_context) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id, " reaches position ",
                                                     ctx, ", over the context limit ",
                                                     limits.max_context));
    }
    const int64_t needed = (ctx + limits.block_size - 1) / limits.block_size;
    if (s.num_blocks < needed) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id, " has ",
                                                     s.num_blocks, " KV blocks, needs ", needed));
    }
    for (int64_t b = 0; b < needed; ++b) {
      const int32_t id = plan.block_tables[s.block_offset + b];
      if (id < 0 || id >= limits.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id, ": KV block id ",
                                                       id, " outside [0, ", limits.num_blocks,
                                                       ")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace switchyard
