// A rank's compute for its pipeline stage, behind one interface for every device: the
// DistributedWorker (worker/distributed_executor.h) selects the rank's sequences, splits them
// into micro-batches, moves activations between stages and gathers results; the backend
// embeds, runs the stage's layers (attention on its own sequences, the MoE through its EP
// group), and runs the head and sampling.
//
//   backend->Embed(tokens, rows, row0);                    // first stage
//   link->Recv(backend->hidden_rows(row0), rows * backend->row_bytes(), ...);  // other stages
//   RETURN_IF_ERROR(backend->RunLayers(micro_batch, block_tables, row0));
//   RETURN_IF_ERROR(backend->Head(local_plan, &local_result));                // last stage
//
// The hidden-state buffer holds limits().max_tokens rows and lives where the backend computes
// (host memory for the CPU backend): hidden_rows() is what the stage link sends and receives.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "comm/expert_dispatcher.h"
#include "comm/metered_communicator.h"
#include "model/weights.h"
#include "worker/kv_cache.h"
#include "worker/shard_forward.h"
#include "worker/step.h"

namespace switchyard {

class StageBackend {
 public:
  virtual ~StageBackend() = default;

  // hidden[row0, row0 + rows) = embedding of tokens. Requires the shard to hold the embedding.
  virtual absl::Status Embed(const int32_t* tokens, int rows, int row0) = 0;
  // Runs the stage's layers in place over the micro-batch whose rows start at row0 (the
  // entries' token_offset count from row0; block_tables is the step's concatenated tables).
  // Collective over the EP group (every rank calls it per micro-batch, possibly empty).
  // With `capture` (rows numbered from row0), also records the router's choices of those rows
  // for the stage's layers.
  virtual absl::Status RunLayers(std::span<const SeqEntry> seqs, const int32_t* block_tables,
                                 int row0, const RoutingCapture* capture = nullptr) = 0;
  // Head and sampling over the rank's whole local plan (rows as StepHead::RowsForHead),
  // filling `result` as StepExecutor::Execute would for that plan. Requires the head.
  virtual absl::Status Head(const StepPlan& local, StepResult* result) = 0;

  // The hidden-state rows the stage link moves, and the bytes of one row.
  virtual void* hidden_rows(int row0) = 0;
  virtual size_t row_bytes() const = 0;

  virtual const ForwardLimits& limits() const = 0;
  // Whether RunLayers records routing (a RoutingCapture); a backend that does not refuses
  // one, and the executor refuses plans that ask for it before any rank starts the step.
  virtual bool records_routing() const { return true; }
  virtual uint64_t kv_bytes() const = 0;
  // Routed tokens per (layer, expert) this rank's router chose since start.
  virtual const std::vector<std::vector<int64_t>>& expert_token_counts() const = 0;
  // What the expert dispatcher's group has done since start: time this rank waited inside
  // its operations and bytes sent per EP rank (comm/metered_communicator.h).
  virtual const CommMeter& dispatch_meter() const = 0;

  // Moving experts while serving (expert rebalancing), in two steps between steps:
  // PrepareExperts looks up the experts `routing` (ExpertRanks of every layer) gives this
  // rank and does not hold, and makes them ready beside the running ones in the background
  // (pages read in; on a GPU, uploaded); experts_prepared() then returns `generation`.
  // SwitchExperts(generation), called by every rank of the EP group before the same step,
  // waits for that preparation, binds the new experts, moves the dispatcher to the new
  // routing, and releases the experts this rank no longer holds. Errors: kFailedPrecondition
  // when the backend cannot move experts or no such preparation is pending.
  virtual absl::Status PrepareExperts(int64_t generation, const ExpertRanks& routing,
                                      ModelWeights* weights, const SafetensorsCheckpoint* ckpt) {
    return absl::FailedPreconditionError("this stage backend cannot move experts");
  }
  virtual absl::Status SwitchExperts(int64_t generation) {
    return absl::FailedPreconditionError("this stage backend cannot move experts");
  }
  // Whether PrepareExperts/SwitchExperts can move experts at all.
  virtual bool moves_experts() const { return false; }
  // The generation whose preparation has finished (0: none yet), and the one in use.
  virtual int64_t experts_prepared() const { return 0; }
  virtual int64_t experts_active() const { return 0; }
};

// The CPU backend: ShardForward over the shard's layers, KV in host memory, the MoE through
// an ExpertDispatcher over `ep_group` (a SelfCommunicator for a single process).
// `weights` and `ep_group` must outlive it.
std::unique_ptr<StageBackend> MakeCpuStageBackend(const ModelWeights& weights,
                                                  Communicator* ep_group, ExpertRanks routing,
                                                  const KvCacheShape& kv,
                                                  const ForwardLimits& limits);

}  // namespace switchyard
