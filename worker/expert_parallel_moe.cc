#include "worker/expert_parallel_moe.h"

namespace switchyard {

ExpertParallelMoe::ExpertParallelMoe(const ModelWeights& weights, Communicator* comm,
                                     ExpertRanks routing, int max_tokens)
    : experts_(weights, max_tokens * comm->size()),  // one expert sees each token once
      dispatcher_(comm,
                  DispatchLayout{.hidden = weights.config().hidden_size,
                                 .top_k = weights.config().num_experts_per_tok,
                                 .num_experts = weights.config().num_local_experts,
                                 .ep = comm->size(),
                                 .max_tokens = max_tokens},
                  std::move(routing), &experts_) {}

absl::Status ExpertParallelMoe::Run(int layer, const float* x, int T, const int32_t* experts,
                                    const float* weights, float* out) {
  return dispatcher_.Forward(layer, x, T, experts, weights, out);
}

ExpertRanks SingleRankRouting(const ModelConfig& cfg) {
  return ExpertRanks(cfg.num_hidden_layers,
                     std::vector<std::vector<int>>(cfg.num_local_experts, std::vector<int>{0}));
}

}  // namespace switchyard
