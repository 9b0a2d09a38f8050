// The model head's bookkeeping for a step: which rows go through the head (HeadRows), and,
// from their logits, the sampled tokens and the logits each sequence asked for
// (ReturnedLogitRows). Shared by every stage backend that holds the head.
//
//   StepHead::RowsForHead(plan, &rows);       // rows of the step's hidden state
//   ... logits[i] = lm_head(final_norm(hidden[rows[i]])) ...
//   head.Finish(plan, logits, &result);
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/sampling.h"
#include "worker/step.h"

namespace switchyard {

class StepHead {
 public:
  explicit StepHead(int vocab) : vocab_(vocab) {}
  // The step's rows whose logits are needed, HeadRows(s) per sequence in plan order (the last
  // rows of each chunk). `rows` is cleared first.
  static void RowsForHead(const StepPlan& plan, std::vector<int32_t>* rows);
  // `logits` holds one row per entry of RowsForHead(plan), in that order. Fills every field
  // of `result`.
  void Finish(const StepPlan& plan, const float* logits, StepResult* result);

 private:
  int vocab_;
  SamplingScratch sampling_scratch_;
};

}  // namespace switchyard
