// Expert placement from a measured load: which EP ranks hold a replica of each expert so that
// the most loaded rank of every layer carries as little as possible (the whole EP group waits
// for it at each layer's exchange).
//
//   std::vector<double> load = {900, 40, 35, 30, 10, 5, 5, 2};   // tokens per expert
//   ASSIGN_OR_RETURN(LayerBalance b, BalanceLayer(load, {.ep = 4, .redundant = 4}));
//   b.expert_ranks[0];      // {0, 1, 2, 3}: the hot expert on every rank
//   b.max_load() / b.mean_load();
//
// A replicated expert's tokens are split evenly over its replicas (the dispatcher sends
// token t from source rank s to replica (s + t) mod replicas), so a rank's expected load is
// the sum over its replicas of load(e) / replicas(e).
//
// Two planners over the same inputs:
// - BalanceLayerEplb: the reference, DeepSeek's EPLB global policy re-expressed here: give each
//   redundant slot to the expert with the largest load per replica, then pack replicas
//   heaviest first onto the least-loaded rank with a free slot.
// - BalanceLayer: starts from that (and from the same packing with fewer redundant replicas)
//   and improves each start by local search around the most loaded rank (move one of its
//   replicas to a rank with room, swap it with a lighter one, drop a replica that does not
//   pay, or add one while the budget allows), so it never does worse than the reference and
//   often does better: the budget is an upper bound, not a quota.
// Both keep every expert on at least one rank, a rank at most one replica of an expert, and
// each rank within its capacity (slots for this layer's experts).
//
// Thread-safety: pure functions.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/placement.h"
#include "model/config.h"

namespace switchyard {

struct ExpertBalanceOptions {
  int ep = 1;
  // Replicas beyond one per expert, for this layer (spread over the EP group): the reference
  // uses them all, BalanceLayer at most this many.
  int redundant = 0;
  // capacity[r]: the most experts of this layer EP rank r may hold (its memory). Empty: every
  // rank ceil((experts + redundant) / ep).
  std::vector<int> capacity;
};

struct LayerBalance {
  // [expert]: the sorted, distinct EP ranks holding a replica (never empty).
  std::vector<std::vector<int>> expert_ranks;
  // [EP rank]: expected tokens, sum of load(e) / replicas(e) over the replicas it holds.
  std::vector<double> rank_load;
  double max_load() const;
  double mean_load() const;
};

// The reference planner (DeepSeek's EPLB, global policy). Errors: kInvalidArgument naming the
// field for ep < 1, redundant < 0, a capacity vector of the wrong size or a negative load;
// kResourceExhausted when the capacities cannot hold one replica of every expert.
absl::StatusOr<LayerBalance> BalanceLayerEplb(std::span<const double> load,
                                              const ExpertBalanceOptions& options);

// Switchyard's planner: the reference, then local search on the most loaded rank. The same
// errors. Never a larger max_load() than BalanceLayerEplb on the same inputs.
absl::StatusOr<LayerBalance> BalanceLayer(std::span<const double> load,
                                          const ExpertBalanceOptions& options);

// The loads of a given placement (expert_ranks[e]: its EP ranks) under `load`.
LayerBalance EvaluateLayer(std::span<const double> load,
                           const std::vector<std::vector<int>>& expert_ranks, int ep);

// Per-expert load of every layer, from a file (kNotFound when unreadable; kInvalidArgument
// "PATH: problem" otherwise). Accepted forms: the JSON of GetClusterStatus
// (`switchyard client status --json`: "expert_token_counts": [{"tokens": [...]}, ...]),
// {"expert_token_counts": [[...], ...]}, or a bare [[...], ...]; one row per layer of `cfg`,
// num_local_experts non-negative numbers per row; or a routing trace (`switchyard trace`, JSON
// lines), each token's choices counted per layer and expert.
absl::StatusOr<std::vector<std::vector<double>>> LoadExpertLoads(const std::string& path,
                                                                 const ModelConfig& cfg);
absl::StatusOr<std::vector<std::vector<double>>> ParseExpertLoads(const std::string& text,
                                                                  const std::string& source,
                                                                  const ModelConfig& cfg);

// `base` (its stages) with the experts of every layer placed by `planner` from load[layer] on
// the layer's stage's EP group, `redundant` extra replicas per layer, and capacity[world
// rank] experts per layer (empty: the planner's default). Errors: the planner's, naming the
// layer.
using LayerPlanner = absl::StatusOr<LayerBalance> (*)(std::span<const double>,
                                                      const ExpertBalanceOptions&);
absl::StatusOr<PlacementPlan> PlanFromLoads(const PlacementPlan& base,
                                            const std::vector<std::vector<double>>& load,
                                            int redundant, const std::vector<int>& capacity,
                                            LayerPlanner planner = &BalanceLayer);

}  // namespace switchyard
