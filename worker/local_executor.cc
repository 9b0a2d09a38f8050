#include "worker/local_executor.h"

#include "worker/expert_parallel_moe.h"

namespace switchyard {

LocalExecutor::LocalExecutor(const ModelWeights& weights, const KvPoolOptions& kv,
                             const ForwardLimits& limits)
    : self_("self"),
      worker_(weights, ParallelShape{.ep = 1, .pp = 1, .world_rank = 0}, &self_, &self_,
              SingleRankRouting(weights.config()), kv, limits),
      executor_(&worker_) {}

}  // namespace switchyard
