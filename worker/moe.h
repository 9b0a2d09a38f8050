// The mixture-of-experts half of a layer, in four parts with one contract each:
//   router   (ShardForward: router matmul + cpu::RouterTopK) -> top-k experts and weights;
//   dispatch (ExpertDispatcher::Dispatch, comm/expert_dispatcher.h) -> an ExpertBatch: the
//            (row, expert) pairs this rank applies, rows read where they lie;
//   experts  (GroupedExperts, this file) -> weight * expert(row) written in place;
//   combine  (ExpertDispatcher::Combine) -> out[t] = sum over t's choices.
// ExpertParallelMoe (worker/expert_parallel_moe.h) strings dispatch, experts and combine
// together over an EP group; the single-process MoE is the same object over a group of one
// rank, which communicates nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "comm/expert_dispatcher.h"
#include "model/weights.h"

namespace switchyard {

class MoeRunner {
 public:
  virtual ~MoeRunner() = default;
  // x: [T, H]; experts/weights: [T, top_k] from the router; out: [T, H], overwritten.
  // A collective call in the expert-parallel case: every rank of the group calls it for the
  // same layer, T may be 0. Errors: kUnavailable/kDeadlineExceeded from communication.
  virtual absl::Status Run(int layer, const float* x, int T, const int32_t* experts,
                           const float* weights, float* out) = 0;
};

// The experts part on the CPU: the shard's SwiGLU experts over an ExpertBatch, each expert's
// pairs in one call reading and writing rows in place (cpu::SwiGluExpertRows). Scratch is
// sized once for `max_rows` pairs of one expert.
class GroupedExperts : public LocalExperts {
 public:
  GroupedExperts(const ModelWeights& weights, int max_rows);
  // Every expert with pairs must be held by this shard for `layer`.
  void Run(int layer, const ExpertBatch& batch) override;

 private:
  const ModelWeights& weights_;
  int max_rows_;
  std::vector<float> scratch_;  // 2 * max_rows * F
};

}  // namespace switchyard
