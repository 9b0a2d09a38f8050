#include "worker/expert_parallel_moe.h"

namespace switchyard {

ExpertParallelMoe::ExpertParallelMoe(const ModelWeights& weights, Communicator* comm,
                                     ExpertRanks routing, int max_tokens)
    : grouped_(weights, max_tokens * comm->size()),  // one expert sees each token once
      dispatcher_(comm,
                  DispatchLayout{.hidden = weights.config().hidden_size,
                                 .top_k = weights.config().num_experts_per_tok,
                                 .num_experts = weights.config().num_local_experts,
                                 .ep = comm->size(),
                                 .max_tokens = max_tokens},
                  std::move(routing), this) {}

absl::Status ExpertParallelMoe::Run(int layer, const float* x, int T, const int32_t* experts,
                                    const float* weights, float* out) {
  return dispatcher_.Forward(layer, x, T, experts, weights, out);
}

void ExpertParallelMoe::Run(int layer, const float* rows, const int32_t* counts, float* y) {
  grouped_.Run(layer, rows, counts, y);
}

}  // namespace switchyard
