#include "worker/local_executor.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {

void StepHead::RowsForHead(const StepPlan& plan, std::vector<int32_t>* rows) {
  rows->clear();
  for (const SeqEntry& s : plan.seqs) {
    if (s.num_tokens == 0) continue;
    if (s.logits == LogitsMode::kAll) {
      for (int i = 0; i < s.num_tokens; ++i) rows->push_back(s.token_offset + i);
    } else if (s.logits == LogitsMode::kLast || s.sample) {
      rows->push_back(s.token_offset + s.num_tokens - 1);
    }
  }
}

void StepHead::Finish(const StepPlan& plan, const float* logits, StepResult* result) {
  const size_t n = plan.seqs.size();
  result->next_tokens.assign(n, -1);
  result->logits_offset.assign(n, 0);
  result->logits_rows.assign(n, 0);
  result->logits.clear();
  size_t head_row = 0;  // walks the rows RowsForHead produced
  int32_t out_rows = 0;
  for (size_t i = 0; i < n; ++i) {
    const SeqEntry& s = plan.seqs[i];
    if (s.num_tokens == 0) continue;
    int rows = 0;
    if (s.logits == LogitsMode::kAll) {
      rows = s.num_tokens;
    } else if (s.logits == LogitsMode::kLast || s.sample) {
      rows = 1;
    }
    const float* seq_logits = logits + head_row * vocab_;
    const float* last = seq_logits + static_cast<size_t>(rows - 1) * vocab_;
    if (s.sample) {
      result->next_tokens[i] =
          SampleToken(last, vocab_, s.sampling, s.sample_index, &sampling_scratch_);
    }
    if (s.logits != LogitsMode::kNone) {
      const int keep = s.logits == LogitsMode::kAll ? rows : 1;
      const float* from = s.logits == LogitsMode::kAll ? seq_logits : last;
      result->logits_offset[i] = out_rows;
      result->logits_rows[i] = keep;
      result->logits.insert(result->logits.end(), from,
                            from + static_cast<size_t>(keep) * vocab_);
      out_rows += keep;
    }
    head_row += rows;
  }
}

LocalExecutor::LocalExecutor(const ModelWeights& weights, const KvPoolOptions& kv,
                             const ForwardLimits& limits)
    : weights_(weights),
      kv_({.num_layers = weights.config().num_hidden_layers,
           .num_blocks = kv.num_blocks,
           .block_size = kv.block_size,
           .kv_dim = weights.config().kv_dim()}),
      moe_(weights, limits.max_tokens),
      forward_(weights, &kv_, &moe_, limits),
      head_(weights.config().vocab_size),
      hidden_(static_cast<size_t>(limits.max_tokens) * weights.config().hidden_size),
      logits_(static_cast<size_t>(limits.max_tokens) * weights.config().vocab_size) {
  head_rows_.reserve(limits.max_tokens);
}

absl::Status LocalExecutor::Execute(const StepPlan& plan, StepResult* result) {
  const int T = plan.total_tokens();
  if (T > forward_.limits().max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("step of ", T, " tokens exceeds the limit of ",
                                                   forward_.limits().max_tokens));
  }
  const int V = weights_.config().vocab_size;
  for (int32_t t : plan.tokens) {
    if (t < 0 || t >= V) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", t, " outside [0, ", V, ")"));
    }
  }
  ++steps_;
  forward_.Embed(plan.tokens.data(), T, hidden_.data());
  RETURN_IF_ERROR(forward_.RunLayers(plan.seqs, plan.block_tables.data(), hidden_.data()));
  StepHead::RowsForHead(plan, &head_rows_);
  forward_.Head(hidden_.data(), head_rows_, logits_.data());
  head_.Finish(plan, logits_.data(), result);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RankStatus>> LocalExecutor::CollectStatus() {
  const ShardSpec& spec = weights_.spec();
  RankStatus r;
  r.layer_begin = spec.layer_begin;
  r.layer_end = spec.layer_end;
  r.experts = spec.local_experts;
  r.weight_bytes = static_cast<int64_t>(weights_.resident_bytes());
  r.kv_bytes = static_cast<int64_t>(kv_.shape().bytes());
  r.steps = steps_;
  r.expert_tokens = moe_.expert_token_counts();
  return std::vector<RankStatus>{r};
}

}  // namespace switchyard
