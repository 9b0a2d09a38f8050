// Runs whole steps in this process over a ModelWeights that holds the full model: the
// single-rank executor, and the reference the distributed one must match.
//
//   LocalExecutor exec(*weights, {.num_blocks = 256, .block_size = 16},
//                      {.max_tokens = 512, .max_context = 1024});
//   RETURN_IF_ERROR(exec.Execute(plan, &result));
#pragma once

#include <memory>
#include <vector>

#include "worker/kv_cache.h"
#include "worker/moe.h"
#include "worker/shard_forward.h"
#include "worker/step.h"

namespace switchyard {

struct KvPoolOptions {
  int num_blocks = 256;
  int block_size = 16;
};

// Samples and copies out what a plan asked for, from logits of the rows RowsForHead chose.
// Shared by every executor that owns a model head.
class StepHead {
 public:
  explicit StepHead(int vocab) : vocab_(vocab) {}
  // Rows of the step whose logits are needed: every row of kAll sequences, the last row of
  // kLast or sampling ones. `rows` is cleared first.
  static void RowsForHead(const StepPlan& plan, std::vector<int32_t>* rows);
  // `logits` holds one row per entry of RowsForHead(plan), in that order.
  void Finish(const StepPlan& plan, const float* logits, StepResult* result);

 private:
  int vocab_;
  SamplingScratch sampling_scratch_;
};

class LocalExecutor : public StepExecutor {
 public:
  LocalExecutor(const ModelWeights& weights, const KvPoolOptions& kv,
                const ForwardLimits& limits);
  absl::Status Execute(const StepPlan& plan, StepResult* result) override;
  int max_step_tokens() const override { return forward_.limits().max_tokens; }
  absl::StatusOr<std::vector<RankStatus>> CollectStatus() override;

 private:
  const ModelWeights& weights_;
  int64_t steps_ = 0;
  PagedKvCache kv_;
  LocalMoe moe_;
  ShardForward forward_;
  StepHead head_;
  std::vector<float> hidden_;
  std::vector<int32_t> head_rows_;
  std::vector<float> logits_;
};

}  // namespace switchyard
