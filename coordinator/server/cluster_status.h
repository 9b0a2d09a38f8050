// Plain snapshots of the job that the serving front end reports (GetModelInfo,
// GetClusterStatus). The coordinator fills them; the front end only copies them into protos.
#pragma once

#include <cstdint>
#include <vector>

#include "worker/rank_status.h"

namespace switchyard {

// The parallel layout of the served job.
struct ServingTopology {
  int ep = 1;          // expert-parallel ranks per pipeline stage
  int pp = 1;          // pipeline stages
  int world_size = 1;  // ep * pp
};

struct ClusterStatusInfo {
  int ep = 1;
  int pp = 1;
  std::vector<RankStatus> ranks;  // one row per world rank (expert_tokens may be empty)
  // expert_token_counts[layer][expert]: tokens routed there since the job started.
  std::vector<std::vector<int64_t>> expert_token_counts;
};

}  // namespace switchyard
