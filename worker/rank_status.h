// What one rank of a job holds and has done: the one record the placement planner predicts
// (coordinator/placement.h Footprints: layers, experts, weight bytes), the executors report
// (StepExecutor::CollectStatus: plus KV bytes, steps and routed tokens) and the server returns
// (GetClusterStatus).
#pragma once

#include <cstdint>
#include <vector>

namespace switchyard {

struct RankStatus {
  int world_rank = 0;
  int stage = 0;
  int ep_rank = 0;
  int layer_begin = 0;  // [layer_begin, layer_end)
  int layer_end = 0;
  // experts[l - layer_begin]: global ids of the experts of layer l held by this rank, sorted.
  std::vector<std::vector<int>> experts;
  bool has_embedding = false;
  bool has_head = false;
  uint64_t weight_bytes = 0;
  uint64_t kv_bytes = 0;  // 0 in a planned footprint (KV is sized when the job opens)
  int64_t steps = 0;      // forward steps run by this rank
  // expert_tokens[l - layer_begin][expert]: tokens this rank's router sent to that expert
  // since start (empty in a footprint).
  std::vector<std::vector<int64_t>> expert_tokens;
  // Time inside forward steps since start, split into computing and waiting on peers (inside
  // communication: the expert dispatcher's exchanges, the stage link, the results). The
  // straggler is the rank that waits least while the others wait for it. 0 in a footprint.
  double compute_seconds = 0;
  double wait_seconds = 0;
  // dispatch_bytes_sent[world rank]: bytes of token rows (and returned partial sums) this
  // rank's expert dispatcher sent there since start; empty in a footprint.
  std::vector<uint64_t> dispatch_bytes_sent;
  // Expert moves (rebalancing while serving): the placement generation this rank has
  // prepared (its new experts read in) and the one it runs; 0 before any move.
  int64_t experts_prepared = 0;
  int64_t experts_active = 0;
};

}  // namespace switchyard
