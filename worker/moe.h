// The mixture-of-experts half of a layer, after the router has chosen top-k experts per
// token. A MoeRunner turns x[T, H] and the choices into out[T, H] = sum_k w[t,k] *
// expert_{e[t,k]}(x[t]). LocalMoe runs every expert in this process; the expert-parallel
// runner (comm/expert_dispatcher.h) sends rows to the ranks that hold their experts.
//
// Both use GroupedExperts to run the experts a rank holds over rows already grouped by
// expert: all rows of one expert go through its weights together.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "model/weights.h"

namespace switchyard {

class MoeRunner {
 public:
  virtual ~MoeRunner() = default;
  // x: [T, H]; experts/weights: [T, top_k] from the router; out: [T, H], overwritten.
  // A collective call in the expert-parallel case: every rank of the group calls it for the
  // same layer, T may be 0. Errors: kUnavailable/kDeadlineExceeded from communication.
  virtual absl::Status Run(int layer, const float* x, int T, const int32_t* experts,
                           const float* weights, float* out) = 0;
};

// Runs local experts over grouped rows. Buffers are sized once for `max_rows` rows.
class GroupedExperts {
 public:
  GroupedExperts(const ModelWeights& weights, int max_rows);
  // rows: [N, H] grouped by expert; counts[e] rows for expert e in increasing e (a count of
  // zero for experts not present); y: [N, H] outputs in the same order. Every expert with a
  // non-zero count must be held by this shard for `layer`.
  void Run(int layer, const float* rows, const int32_t* counts, float* y);

 private:
  const ModelWeights& weights_;
  std::vector<float> scratch_;  // 2 * max_rows * F
};

class LocalMoe : public MoeRunner {
 public:
  // `max_tokens`: the most tokens a step carries.
  LocalMoe(const ModelWeights& weights, int max_tokens);
  absl::Status Run(int layer, const float* x, int T, const int32_t* experts,
                   const float* weights, float* out) override;
  // [layer][expert]: tokens routed there since construction.
  const std::vector<std::vector<int64_t>>& expert_token_counts() const { return routed_; }

 private:
  const ModelWeights& weights_;
  const int top_k_;
  std::vector<std::vector<int64_t>> routed_;
  GroupedExperts grouped_;
  std::vector<float> rows_;            // [max_tokens * top_k, H]
  std::vector<float> y_;               // same
  std::vector<int32_t> row_token_;     // source token of each grouped row
  std::vector<float> row_weight_;
  std::vector<int32_t> counts_;        // per expert
  std::vector<int32_t> cursor_;
};

}  // namespace switchyard
