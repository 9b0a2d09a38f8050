// Steps across every rank of a job: world = PP stages x EP ranks, world rank =
// stage * EP + ep_rank. The one orchestration for every device and every size, down to a
// single process (LocalExecutor is this over a group of one).
//
// Rank 0 (the coordinator) calls DistributedExecutor::Execute; every other rank runs
// RunWorkerLoop until rank 0 shuts the job down. For one step:
// 1. rank 0 validates the plan (ValidatePlan) and broadcasts it to every rank;
// 2. each rank takes the sequences of its data-parallel index (SeqEntry::dp_rank == its EP
//    rank) and splits them into PP micro-batches (SplitMicroBatches: the same split on every
//    stage);
// 3. per micro-batch, stage 0 embeds, every stage runs its layers through its StageBackend
//    (attention on its own sequences, MoE through the EP group's dispatcher) and sends the
//    activations over the stage link to the same EP rank of the next stage, so stages work
//    on different micro-batches at once;
// 4. the last stage's backends run the head and sample; their results go to rank 0.
// Control (plans, results, status) travels on `world`; activations on the stage link (the
// world for host backends).
//
//   DistributedWorker worker(...);       // every rank
//   if (rank == 0) { DistributedExecutor exec(&worker); ... exec.Execute(plan, &result); }
//   else RETURN_IF_ERROR(RunWorkerLoop(&worker));
#pragma once

#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "common/progress_meter.h"
#include "model/weights.h"
#include "worker/kv_cache.h"
#include "worker/stage_backend.h"
#include "worker/step.h"

namespace switchyard {

struct KvPoolOptions {
  int num_blocks = 256;
  int block_size = 16;
};

struct ParallelShape {
  int ep = 1;
  int pp = 1;
  int world_rank = 0;
  int stage() const { return world_rank / ep; }
  int ep_rank() const { return world_rank % ep; }
  int WorldRank(int stage, int ep_rank) const { return stage * ep + ep_rank; }
};

// One micro-batch of a rank's local plan: sequences [seq_begin, seq_end), rows
// [row0, row0 + rows).
struct MicroBatch {
  int seq_begin = 0, seq_end = 0;
  int row0 = 0, rows = 0;
};
// Splits `seqs` (a local plan, rows in order) into `count` contiguous micro-batches of about
// T / count tokens each (the last takes the rest; some may be empty). A pure function of its
// input, so every stage computes the same split.
void SplitMicroBatches(std::span<const SeqEntry> seqs, int count, std::vector<MicroBatch>* out);

// What one rank holds and does: its stage backend (shard, KV cache, MoE, forward pass) and
// its part of each step.
class DistributedWorker {
 public:
  // `world` spans the job (control); `stage_link` carries activations between stages (the
  // world for host backends). Both, and `weights`, must outlive the worker.
  DistributedWorker(const ModelWeights& weights, const ParallelShape& shape, Communicator* world,
                    Communicator* stage_link, std::unique_ptr<StageBackend> backend,
                    const KvPoolOptions& kv);
  // The CPU backend over `ep_group` (this rank's stage group, size ep); `routing` covers this
  // stage's layers.
  DistributedWorker(const ModelWeights& weights, const ParallelShape& shape, Communicator* world,
                    Communicator* ep_group, ExpertRanks routing, const KvPoolOptions& kv,
                    const ForwardLimits& limits);

  // Runs this rank's part of `plan` (validated by rank 0). On rank 0 fills `result` with the
  // whole step's results; elsewhere `result` is unused. Errors: communication failures (the
  // job must end).
  absl::Status RunStep(const StepPlan& plan, StepResult* result);

  const ParallelShape& shape() const { return shape_; }
  Communicator* world() { return world_; }
  const StageBackend& backend() const { return *backend_; }
  const ForwardLimits& limits() const { return backend_->limits(); }
  // What every plan this job runs must respect.
  PlanLimits plan_limits() const;
  int64_t steps() const { return steps_; }
  // Where this rank's operations (steps, liveness rounds, status collections) are counted
  // for the liveness channel's progress check; null (the default) counts nothing.
  void set_progress(ProgressMeter* progress) { progress_ = progress; }
  ProgressMeter* progress() const { return progress_; }
  // Collective over the world: every rank sends its RankStatus to rank 0, which returns all
  // of them (other ranks get an empty vector).
  absl::StatusOr<std::vector<RankStatus>> GatherStatus();

  // Where moved experts come from: this rank's weights (the object the backend computes
  // with) and their checkpoint; both must outlive the worker. Without them experts stay put.
  void set_expert_source(ModelWeights* weights, const SafetensorsCheckpoint* ckpt) {
    expert_weights_ = weights;
    expert_ckpt_ = ckpt;
  }
  // This rank's part of an expert move (StageBackend::PrepareExperts / SwitchExperts).
  absl::Status PrepareExperts(int64_t generation, const ExpertRanks& routing);
  absl::Status SwitchExperts(int64_t generation);

 private:
  // The local share of `plan`: sequences of this DP index, tokens renumbered from 0.
  void SelectLocal(const StepPlan& plan);
  absl::Status SendResults();
  absl::Status CollectResults(const StepPlan& plan, StepResult* result);
  // Entries of one routed row: every layer's top-k.
  int routing_row_entries() const {
    return weights_.config().num_hidden_layers * weights_.config().num_experts_per_tok;
  }
  // Where the micro-batch's routed rows are recorded (empty rows when it has none).
  RoutingCapture RoutingOf(const StepPlan& local, const MicroBatch& mb);
  // After the micro-batches: the routing of the layers before this stage comes from the
  // previous stage, and the routing so far goes on to the next one (the last stage then
  // holds every layer's).
  absl::Status PassRouting(int rows, int prev, int next);

  const ModelWeights& weights_;
  ParallelShape shape_;
  Communicator* world_;
  Communicator* stage_link_;
  std::unique_ptr<StageBackend> backend_;
  KvPoolOptions kv_;
  int64_t steps_ = 0;
  int64_t step_ns_ = 0;       // inside RunStep
  int64_t link_wait_ns_ = 0;  // inside the stage link and result exchanges of RunStep
  ProgressMeter* progress_ = nullptr;
  ModelWeights* expert_weights_ = nullptr;
  const SafetensorsCheckpoint* expert_ckpt_ = nullptr;
  // Per-step state, reused.
  StepPlan local_;
  std::vector<MicroBatch> micro_batches_;
  std::vector<SeqEntry> micro_batch_;
  StepResult local_result_;
  std::vector<char> message_;
  std::vector<int32_t> capture_rows_;
  std::vector<int32_t> routing_in_experts_;
  std::vector<float> routing_in_weights_;
};

// The coordinator's StepExecutor over a DistributedWorker on world rank 0.
class DistributedExecutor : public StepExecutor {
 public:
  explicit DistributedExecutor(DistributedWorker* worker) : worker_(worker) {}
  absl::Status Execute(const StepPlan& plan, StepResult* result) override;
  int max_step_tokens() const override { return worker_->limits().max_tokens; }
  // Every rank runs the same kind of backend: rank 0's answers for the job.
  bool records_routing() const override { return worker_->backend().records_routing(); }
  absl::StatusOr<std::vector<RankStatus>> CollectStatus() override;
  // A no-op collective round so a hung rank is noticed while the job is idle.
  absl::Status Heartbeat();
  // Tells every rank to leave RunWorkerLoop.
  absl::Status Shutdown();
  // Expert rebalancing while serving, between steps (coordinator/rebalancer.h): every rank
  // starts preparing `routing` (ExpertRanks of every layer, replicas included) as placement
  // `generation` (> 0, increasing) in the background; once CollectStatus shows every rank's
  // experts_prepared at `generation`, SwitchExperts moves every rank to it before the next
  // step. Errors: a rank that cannot (its backend, a bad placement) fails the job.
  absl::Status PrepareExperts(int64_t generation, const ExpertRanks& routing);
  absl::Status SwitchExperts(int64_t generation);

 private:
  absl::Status BroadcastPlan(uint32_t command, const StepPlan& plan);
  DistributedWorker* worker_;
  std::vector<char> buffer_;
};

// Ranks other than 0: receive plans and run them until shutdown. Returns OK on a clean
// shutdown, otherwise the error that ended the loop (the caller must exit non-zero).
absl::Status RunWorkerLoop(DistributedWorker* worker);

}  // namespace switchyard
