// Plain snapshots of the job that the serving front end reports (GetModelInfo,
// GetClusterStatus). The coordinator fills them; the front end only copies them into protos.
#pragma once

#include <cstdint>
#include <vector>

namespace switchyard {

// The parallel layout of the served job.
struct ServingTopology {
  int ep = 1;          // expert-parallel ranks per pipeline stage
  int pp = 1;          // pipeline stages
  int world_size = 1;  // ep * pp
};

struct RankStatusInfo {
  int world_rank = 0;
  int stage = 0;
  int ep_rank = 0;
  int layer_begin = 0;  // [layer_begin, layer_end)
  int layer_end = 0;
  // experts[l - layer_begin]: global ids of the experts of layer l held by this rank
  // (ShardSpec::local_experts).
  std::vector<std::vector<int>> experts;
  int64_t weight_bytes = 0;
  int64_t kv_bytes = 0;
  int64_t steps = 0;  // forward steps run by this rank
};

struct ClusterStatusInfo {
  int ep = 1;
  int pp = 1;
  std::vector<RankStatusInfo> ranks;  // one row per world rank
  // expert_token_counts[layer][expert]: tokens routed there since the job started.
  std::vector<std::vector<int64_t>> expert_token_counts;
};

}  // namespace switchyard
