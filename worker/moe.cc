#include "worker/moe.h"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/ops.h"

namespace switchyard {

GroupedExperts::GroupedExperts(const ModelWeights& weights, int max_rows)
    : weights_(weights),
      scratch_(static_cast<size_t>(2) * std::max(max_rows, 1) *
               weights.config().intermediate_size) {}

void GroupedExperts::Run(int layer, const float* rows, const int32_t* counts, float* y) {
  const LayerWeights& lw = weights_.layer(layer);
  const int H = weights_.config().hidden_size;
  const int E = weights_.config().num_local_experts;
  size_t offset = 0;
  for (int e = 0; e < E; ++e) {
    if (counts[e] == 0) continue;
    const ExpertWeights& ew = lw.experts[e];
    cpu::SwiGluExpert(rows + offset * H, counts[e], ew.w1, ew.w3, ew.w2, y + offset * H,
                      scratch_.data());
    offset += counts[e];
  }
}

LocalMoe::LocalMoe(const ModelWeights& weights, int max_tokens)
    : weights_(weights),
      top_k_(weights.config().num_experts_per_tok),
      grouped_(weights, max_tokens * weights.config().num_experts_per_tok),
      rows_(static_cast<size_t>(max_tokens) * top_k_ * weights.config().hidden_size),
      y_(rows_.size()),
      row_token_(static_cast<size_t>(max_tokens) * top_k_),
      row_weight_(row_token_.size()),
      counts_(weights.config().num_local_experts),
      cursor_(counts_.size()),
      routed_(weights.config().num_hidden_layers,
              std::vector<int64_t>(weights.config().num_local_experts, 0)) {}

absl::Status LocalMoe::Run(int layer, const float* x, int T, const int32_t* experts,
                           const float* weights, float* out) {
  const int H = weights_.config().hidden_size;
  const int E = weights_.config().num_local_experts;
  // Counting sort of (token, choice) pairs by expert.
  std::fill(counts_.begin(), counts_.end(), 0);
  for (int i = 0; i < T * top_k_; ++i) ++counts_[experts[i]];
  for (int e = 0; e < E; ++e) routed_[layer][e] += counts_[e];
  for (int e = 0, off = 0; e < E; ++e) {
    cursor_[e] = off;
    off += counts_[e];
  }
  for (int t = 0; t < T; ++t) {
    for (int k = 0; k < top_k_; ++k) {
      const int pos = cursor_[experts[t * top_k_ + k]]++;
      row_token_[pos] = t;
      row_weight_[pos] = weights[t * top_k_ + k];
      std::memcpy(&rows_[static_cast<size_t>(pos) * H], x + static_cast<size_t>(t) * H,
                  H * sizeof(float));
    }
  }
  grouped_.Run(layer, rows_.data(), counts_.data(), y_.data());
  std::memset(out, 0, static_cast<size_t>(T) * H * sizeof(float));
  for (int pos = 0; pos < T * top_k_; ++pos) {
    float* dst = out + static_cast<size_t>(row_token_[pos]) * H;
    const float* src = &y_[static_cast<size_t>(pos) * H];
    const float w = row_weight_[pos];
    for (int i = 0; i < H; ++i) dst[i] += w * src[i];
  }
  return absl::OkStatus();
}

}  // namespace switchyard
