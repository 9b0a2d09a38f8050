// Steps across every rank of an mpirun job: world = PP stages x EP ranks, world rank =
// stage * EP + ep_rank.
//
// Rank 0 (the coordinator) calls DistributedExecutor::Execute; every other rank runs
// RunWorkerLoop until rank 0 shuts the job down. For one step:
// 1. rank 0 broadcasts the plan to every rank;
// 2. each rank takes the sequences of its data-parallel index (SeqEntry::dp_rank == its EP
//    rank) and splits them into PP micro-batches (the same split on every stage);
// 3. per micro-batch, stage 0 embeds, every stage runs its layers (attention on its own
//    sequences, MoE through the EP group's dispatcher) and sends the activations to the same
//    EP rank of the next stage, so stages work on different micro-batches at once;
// 4. the last stage's ranks run the head, sample, and send their results to rank 0.
//
//   DistributedWorker worker(...);       // every rank
//   if (rank == 0) { DistributedExecutor exec(&worker); ... exec.Execute(plan, &result); }
//   else RETURN_IF_ERROR(RunWorkerLoop(&worker));
#pragma once

#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "model/weights.h"
#include "worker/expert_parallel_moe.h"
#include "worker/kv_cache.h"
#include "worker/local_executor.h"
#include "worker/shard_forward.h"
#include "worker/step.h"

namespace switchyard {

struct ParallelShape {
  int ep = 1;
  int pp = 1;
  int world_rank = 0;
  int stage() const { return world_rank / ep; }
  int ep_rank() const { return world_rank % ep; }
  int WorldRank(int stage, int ep_rank) const { return stage * ep + ep_rank; }
};

// What one rank holds and does: its shard, KV cache, MoE runner and forward pass.
class DistributedWorker {
 public:
  // `world` spans the job; `ep_group` is this rank's stage group (size ep). Both, and
  // `weights`, must outlive the worker. `routing` covers this stage's layers.
  DistributedWorker(const ModelWeights& weights, const ParallelShape& shape, Communicator* world,
                    Communicator* ep_group, ExpertRanks routing, const KvPoolOptions& kv,
                    const ForwardLimits& limits);

  // Runs this rank's part of `plan`. On rank 0 fills `result` with the whole step's results;
  // elsewhere `result` is unused. Errors: communication failures (the job must end).
  absl::Status RunStep(const StepPlan& plan, StepResult* result);

  const ParallelShape& shape() const { return shape_; }
  Communicator* world() { return world_; }
  const ExpertParallelMoe& moe() const { return moe_; }
  const PagedKvCache& kv_cache() const { return kv_; }
  const ForwardLimits& limits() const { return forward_.limits(); }
  int64_t steps() const { return steps_; }
  // Collective over the world: every rank sends its RankStatus to rank 0, which returns all
  // of them (other ranks get an empty vector).
  absl::StatusOr<std::vector<RankStatus>> GatherStatus();

 private:
  // The local share of `plan`: sequences of this DP index, tokens renumbered from 0.
  void SelectLocal(const StepPlan& plan);
  absl::Status SendResults();
  absl::Status CollectResults(const StepPlan& plan, StepResult* result);

  const ModelWeights& weights_;
  ParallelShape shape_;
  Communicator* world_;
  PagedKvCache kv_;
  ExpertParallelMoe moe_;
  ShardForward forward_;
  StepHead head_;
  int64_t steps_ = 0;
  // Per-step state, reused.
  StepPlan local_;
  std::vector<SeqEntry> micro_batch_;
  std::vector<int32_t> local_to_global_;
  std::vector<float> hidden_;
  std::vector<int32_t> head_rows_;
  std::vector<float> logits_;
  StepResult local_result_;
  std::vector<char> message_;
};

// The coordinator's StepExecutor over a DistributedWorker on world rank 0.
class DistributedExecutor : public StepExecutor {
 public:
  explicit DistributedExecutor(DistributedWorker* worker) : worker_(worker) {}
  absl::Status Execute(const StepPlan& plan, StepResult* result) override;
  int max_step_tokens() const override { return worker_->limits().max_tokens; }
  absl::StatusOr<std::vector<RankStatus>> CollectStatus() override;
  // A no-op collective round so a hung rank is noticed while the job is idle.
  absl::Status Heartbeat();
  // Tells every rank to leave RunWorkerLoop.
  absl::Status Shutdown();

 private:
  absl::Status BroadcastPlan(uint32_t command, const StepPlan& plan);
  DistributedWorker* worker_;
  std::vector<char> buffer_;
};

// Ranks other than 0: receive plans and run them until shutdown. Returns OK on a clean
// shutdown, otherwise the error that ended the loop (the caller must exit non-zero).
absl::Status RunWorkerLoop(DistributedWorker* worker);

}  // namespace switchyard
