// Runs whole steps in this process over a ModelWeights that holds the full model: the
// single-rank executor, and the reference the distributed job must match. It is the
// distributed orchestration (worker/distributed_executor.h) with EP = PP = 1 over a group of
// one rank (comm/self_communicator.h) and the CPU stage backend: one forward pass for every
// job size.
//
//   LocalExecutor exec(*weights, {.num_blocks = 256, .block_size = 16},
//                      {.max_tokens = 512, .max_context = 1024});
//   RETURN_IF_ERROR(exec.Execute(plan, &result));
#pragma once

#include <memory>
#include <vector>

#include "comm/self_communicator.h"
#include "worker/distributed_executor.h"
#include "worker/step.h"

namespace switchyard {

class LocalExecutor : public StepExecutor {
 public:
  LocalExecutor(const ModelWeights& weights, const KvPoolOptions& kv,
                const ForwardLimits& limits);
  absl::Status Execute(const StepPlan& plan, StepResult* result) override {
    return executor_.Execute(plan, result);
  }
  int max_step_tokens() const override { return executor_.max_step_tokens(); }
  absl::StatusOr<std::vector<RankStatus>> CollectStatus() override {
    return executor_.CollectStatus();
  }

 private:
  SelfCommunicator self_;
  DistributedWorker worker_;
  DistributedExecutor executor_;
};

}  // namespace switchyard
