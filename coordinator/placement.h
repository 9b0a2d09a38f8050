// Where every layer and expert of a model lives in a distributed job.
//
// A job of N = pp x ep ranks is pp pipeline stages, each an expert-parallel group of ep ranks;
// world rank = stage * ep + ep_rank. A stage holds a contiguous range of layers. Every rank of
// a stage holds the attention, norms and router of all the stage's layers (replicated within
// the group) and, per layer, the experts the plan assigns to its ep rank. Stage 0 also holds
// the token embedding; the last stage holds the final norm and lm_head.
//
//   ASSIGN_OR_RETURN(PlacementPlan plan, PlanPlacement(cfg, /*ep=*/4, /*pp=*/2));
//   RETURN_IF_ERROR(CheckWorldSize(world, plan.ep, plan.pp));
//   ShardSpec spec = plan.ShardFor(world_rank, cfg);
//
// A placement file overrides the balanced default (see LoadPlacementFile):
//
//   {"ep": 2, "pp": 2, "stages": [[0, 2], [2, 4]],
//    "experts": {"0": [0], "1": [1, 0]}, "layer_experts": {"3": {"5": [1]}}}
//
// Every error is an absl::Status; nothing here throws.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "worker/rank_status.h"

namespace switchyard {

struct PlacementPlan {
  int ep = 1;
  int pp = 1;
  // [begin, end) layers of each stage: contiguous, non-empty, covering every layer in order.
  std::vector<std::pair<int, int>> stage_layers;
  // expert_ranks[layer][expert]: the sorted, distinct, non-empty EP ranks (in [0, ep), within
  // the group of the layer's stage) that hold a replica of that expert.
  std::vector<std::vector<std::vector<int>>> expert_ranks;

  // The stage holding `layer`, or -1 when no stage does.
  int StageOfLayer(int layer) const;
  int world_size() const { return ep * pp; }
  // The shard `world_rank` loads: its stage's layers, per layer the experts its ep rank holds,
  // has_embedding on stage 0, has_head on the last stage. `world_rank` must be in
  // [0, world_size()); otherwise the result is an empty shard (no layers, embedding or head).
  ShardSpec ShardFor(int world_rank, const ModelConfig& cfg) const;
};

// Decode cost of one layer on one rank, in parameters scaled by `ep` to stay integral:
// ep * (attention + norms + router) + num_local_experts * expert_params. (Per token a rank
// reads its attention and router once, and its share 1/ep of the experts.)
int64_t LayerCostTimesEp(const ModelConfig& cfg, int ep);
// Extra cost of the last stage, same scale: ep * (lm_head + final norm). Stage 0 pays nothing
// for the embedding: a token reads one row of it.
int64_t HeadCostTimesEp(const ModelConfig& cfg, int ep);

// The default plan: layers cut into pp contiguous non-empty stages minimising the largest stage
// cost (per-layer LayerCostTimesEp, plus HeadCostTimesEp on the last stage), ties going to the
// cut that gives earlier stages more layers; expert e of every layer on ep rank e % ep.
// Errors: kInvalidArgument naming --ep or --pp when ep < 1, pp < 1 or pp > num_hidden_layers.
absl::StatusOr<PlacementPlan> PlanPlacement(const ModelConfig& cfg, int ep, int pp);

// OK when world == ep * pp; otherwise kInvalidArgument "world size 6 does not equal --ep 4 x
// --pp 2 = 8: launch with mpirun -np 8, or change --ep/--pp".
absl::Status CheckWorldSize(int world, int ep, int pp);

// Reads a placement file. All keys are optional; unknown keys are refused:
//   "ep", "pp":       integers; must equal the flags.
//   "stages":         pp pairs [begin, end): contiguous, non-empty, covering [0, layers).
//                     Default: the balanced cut of PlanPlacement.
//   "experts":        {"<expert id>": [ep ranks]} for every layer. Experts not listed keep the
//                     default rank e % ep.
//   "layer_experts":  {"<layer>": {"<expert id>": [ep ranks]}}: overrides for one layer.
// Ids are decimal integer strings without sign or leading zeros; rank lists are non-empty,
// distinct, in [0, ep), and stored sorted.
// Errors: kNotFound when the file cannot be read; kInvalidArgument "PATH: FIELD: problem" for
// invalid JSON, a flag mismatch, bad stages, bad ids or rank lists; kInvalidArgument naming
// --ep/--pp as PlanPlacement does.
absl::StatusOr<PlacementPlan> LoadPlacementFile(const std::string& path, const ModelConfig& cfg,
                                                int ep, int pp);
// The same from text; `source` names it in error messages.
absl::StatusOr<PlacementPlan> ParsePlacement(const std::string& text, const std::string& source,
                                             const ModelConfig& cfg, int ep, int pp);

// The placement-file form of `plan` ("experts" holds each expert's most common rank list,
// "layer_experts" the layers that differ from it). Parsing it back gives an equal plan.
nlohmann::json PlacementToJson(const PlacementPlan& plan);

// One footprint per world rank, in order: what the rank will hold (a RankStatus without KV,
// steps or routed tokens). weight_bytes = bytes_per_param x (per held layer:
// attention + norms + router + held experts; the embedding on stage 0; final norm + lm_head on
// the last stage, a tied lm_head counted once where the embedding is also held). This equals
// ModelWeights::resident_bytes() of the shard for a checkpoint stored in one dtype.
std::vector<RankStatus> Footprints(const PlacementPlan& plan, const ModelConfig& cfg,
                                      uint64_t bytes_per_param);

// OK when every rank's weights fit in `device_bytes`; otherwise kResourceExhausted naming the
// first rank that does not fit, its bytes and the limit.
absl::Status CheckDeviceMemory(const std::vector<RankStatus>& footprints, uint64_t device_bytes);

}  // namespace switchyard
