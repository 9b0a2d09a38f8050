// Router: softmax over all experts, top-k, renormalise (as HF Mixtral's sparse MoE block).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/ops.h"

namespace switchyard::cpu {

void RouterTopK(const float* logits, int T, int E, int k, int32_t* experts, float* weights) {
  for (int t = 0; t < T; ++t) {
    const float* l = logits + static_cast<int64_t>(t) * E;
    int32_t* ex = experts + static_cast<int64_t>(t) * k;
    float* w = weights + static_cast<int64_t>(t) * k;
    float max = l[0];
    for (int e = 1; e < E; ++e) max = std::max(max, l[e]);
    float sum = 0.0f;
    for (int e = 0; e < E; ++e) sum += std::exp(l[e] - max);
    // Selection by repeated scans: E is small (8 for Mixtral). A later pick must be strictly
    // below the previous one, or equal to it with a higher id, so ties go to the lower id.
    float prev_p = INFINITY;
    int prev_e = -1;
    float picked_sum = 0.0f;
    for (int j = 0; j < k; ++j) {
      int best = -1;
      float best_p = 0.0f;
      for (int e = 0; e < E; ++e) {
        const float p = std::exp(l[e] - max) / sum;
        const bool after_prev = p < prev_p || (p == prev_p && e > prev_e);
        if (after_prev && (best < 0 || p > best_p)) {
          best = e;
          best_p = p;
        }
      }
      ex[j] = best;
      w[j] = best_p;
      picked_sum += best_p;
      prev_p = best_p;
      prev_e = best;
    }
    for (int j = 0; j < k; ++j) w[j] /= picked_sum;
  }
}

}  // namespace switchyard::cpu
