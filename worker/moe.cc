#include "worker/moe.h"

#include <algorithm>

#include "kernels/cpu/ops.h"

namespace switchyard {

GroupedExperts::GroupedExperts(const ModelWeights& weights, int max_rows)
    : weights_(weights),
      max_rows_(std::max(max_rows, 1)),
      scratch_(static_cast<size_t>(2) * max_rows_ * weights.config().intermediate_size) {}

void GroupedExperts::Run(int layer, const ExpertBatch& batch) {
  const LayerWeights& lw = weights_.layer(layer);
  const int E = weights_.config().num_local_experts;
  int64_t offset = 0;
  for (int e = 0; e < E; ++e) {
    const ExpertWeights& ew = lw.experts[e];
    // One expert sees each row at most once, so its pairs fit the scratch; split anyway
    // rather than overrun it.
    for (int64_t done = 0; done < batch.counts[e];) {
      const int n = static_cast<int>(std::min<int64_t>(max_rows_, batch.counts[e] - done));
      const int64_t at = offset + done;
      cpu::SwiGluExpertRows(batch.x + at, n, ew.w1, ew.w3, ew.w2, batch.y + at, batch.scale + at,
                            batch.accumulate + at, scratch_.data());
      done += n;
    }
    offset += batch.counts[e];
  }
}

}  // namespace switchyard
