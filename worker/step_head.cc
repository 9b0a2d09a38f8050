#include "worker/step_head.h"

namespace switchyard {

void StepHead::RowsForHead(const StepPlan& plan, std::vector<int32_t>* rows) {
  rows->clear();
  for (const SeqEntry& s : plan.seqs) {
    const int n = HeadRows(s);
    for (int i = s.num_tokens - n; i < s.num_tokens; ++i) rows->push_back(s.token_offset + i);
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
    const int rows = HeadRows(s);
    if (rows == 0) continue;
    const float* seq_logits = logits + head_row * vocab_;
    const float* last = seq_logits + static_cast<size_t>(rows - 1) * vocab_;
    if (s.sample) {
      result->next_tokens[i] =
          SampleToken(last, vocab_, s.sampling, s.sample_index, &sampling_scratch_);
    }
    const int keep = ReturnedLogitRows(s);
    if (keep > 0) {
      const float* from = last - static_cast<size_t>(keep - 1) * vocab_;
      result->logits_offset[i] = out_rows;
      result->logits_rows[i] = keep;
      result->logits.insert(result->logits.end(), from, from + static_cast<size_t>(keep) * vocab_);
      out_rows += keep;
    }
    head_row += rows;
  }
}

}  // namespace switchyard
