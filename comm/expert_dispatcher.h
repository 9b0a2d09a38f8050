// Expert-parallel dispatch and combine for one MoE layer over an EP group.
//
//   DispatchLayout layout{.hidden = 4096, .top_k = 2, .num_experts = 8, .ep = 4,
//                         .max_tokens = 512};
//   ExpertDispatcher d(&ep_comm, layout, routing, &local_experts);
//   RETURN_IF_ERROR(d.Forward(layer, x, T, experts, weights, out));  // collective
//
// Forward, on every rank of the group (each with its own T tokens, possibly 0):
// 1. layout: for each token, the set of ranks holding its chosen experts (a replicated expert
//    goes to replica (source rank + token index) mod replicas, so load spreads
//    deterministically); row counts per destination are exchanged with an AllToAll;
// 2. dispatch: one AllToAllV carries each token once to each destination rank, with the
//    (expert, weight) pairs that rank is to apply (a token choosing two experts on one rank
//    travels once);
// 3. the receiving rank groups (row, expert) pairs by expert, runs each local expert over all
//    its rows together (LocalExperts), and forms one weighted partial sum per received row;
// 4. combine: the reverse AllToAllV returns the partial sums, which are added per token in
//    the original order.
// All buffers are sized once from DispatchLayout, which the packing code uses too; a step
// allocates nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "comm/communicator.h"

namespace switchyard {

// The one description of the dispatch buffers: the sizing code and the packing code both read
// it. A row on the wire is `hidden` floats of activation followed by top_k expert ids (int32,
// -1 when unused) and top_k weights (float): row_words() 4-byte words.
struct DispatchLayout {
  int hidden = 0;
  int top_k = 0;
  int num_experts = 0;
  int ep = 1;          // ranks in the group
  int max_tokens = 0;  // most tokens one rank brings to one Forward

  size_t row_words() const { return static_cast<size_t>(hidden) + 2 * top_k; }
  size_t expert_word(int k) const { return hidden + k; }
  size_t weight_word(int k) const { return hidden + top_k + k; }
  // A token travels to at most min(top_k, ep) ranks.
  size_t max_send_rows() const {
    return static_cast<size_t>(max_tokens) * std::min(top_k, ep);
  }
  // Every rank may send all its tokens here.
  size_t max_recv_rows() const { return static_cast<size_t>(max_tokens) * ep; }
  size_t send_bytes() const { return max_send_rows() * row_words() * 4; }
  size_t recv_bytes() const { return max_recv_rows() * row_words() * 4; }
  // Combine carries `hidden` floats per row back.
  size_t combine_send_bytes() const { return max_recv_rows() * hidden * 4; }
  size_t combine_recv_bytes() const { return max_send_rows() * hidden * 4; }
};

// The experts this rank holds, run over rows grouped by expert.
class LocalExperts {
 public:
  virtual ~LocalExperts() = default;
  // rows [N, hidden] grouped by expert in increasing id; counts[e] rows for expert e (0 for
  // experts not held here); y [N, hidden] results in the same order.
  virtual void Run(int layer, const float* rows, const int32_t* counts, float* y) = 0;
};

// ranks[layer][expert]: the EP ranks holding a replica (non-empty for every expert of every
// layer this group serves).
using ExpertRanks = std::vector<std::vector<std::vector<int>>>;

struct DispatchStats {
  int64_t rows_sent = 0;      // token rows this rank sent in the last Forward
  int64_t rows_received = 0;  // rows it computed for others (and itself)
  int64_t bytes_sent = 0;     // dispatch + combine payload bytes leaving this rank
  double dispatch_seconds = 0, compute_seconds = 0, combine_seconds = 0;
};

class ExpertDispatcher {
 public:
  // `comm`, `experts` must outlive the dispatcher.
  ExpertDispatcher(Communicator* comm, const DispatchLayout& layout, ExpertRanks routing,
                   LocalExperts* experts);

  // Collective over the group. x [T, hidden]; experts/weights [T, top_k]; out [T, hidden]
  // (overwritten) = sum_k weights[t,k] * expert_{experts[t,k]}(x[t]).
  // Errors: kInvalidArgument when T exceeds max_tokens or a peer sends more rows than the
  // layout allows; communication errors pass through (kDeadlineExceeded naming the peer).
  absl::Status Forward(int layer, const float* x, int T, const int32_t* experts,
                       const float* weights, float* out);

  const DispatchStats& last_stats() const { return stats_; }
  const DispatchLayout& layout() const { return layout_; }

  // Routed-token counts per (layer, expert) since construction, as this rank saw them in the
  // router's choices (for observability).
  const std::vector<std::vector<int64_t>>& expert_token_counts() const { return expert_counts_; }

 private:
  int Destination(int layer, int expert, int token) const;

  Communicator* comm_;
  DispatchLayout layout_;
  ExpertRanks routing_;
  LocalExperts* experts_;
  DispatchStats stats_;
  std::vector<std::vector<int64_t>> expert_counts_;

  // Buffers, sized once from layout_.
  std::vector<float> send_;            // [max_send_rows, row_words]
  std::vector<float> recv_;            // [max_recv_rows, row_words]
  std::vector<float> grouped_x_;       // [max_recv_rows * top_k, hidden]
  std::vector<float> grouped_y_;       // same
  std::vector<float> partial_;         // [max_recv_rows, hidden]: combine send
  std::vector<float> returned_;        // [max_send_rows, hidden]: combine receive
  std::vector<int32_t> send_token_;    // token of each send row
  std::vector<int32_t> token_rows_;    // [max_tokens, top_k]: send rows of each token, -1 after
  std::vector<int32_t> pair_row_;      // received row of each grouped (row, expert) pair
  std::vector<float> pair_weight_;
  std::vector<int32_t> row_pairs_;     // [max_recv_rows, top_k]: grouped position of each pair
  std::vector<int32_t> expert_rows_;   // per expert
  std::vector<int32_t> expert_cursor_;
  std::vector<int64_t> send_rows_, recv_rows_;  // per rank
  std::vector<size_t> send_counts_, send_offsets_, recv_counts_, recv_offsets_;
  std::vector<int32_t> dest_of_token_k_;  // [max_tokens, top_k] destination rank
  std::vector<int32_t> rank_cursor_;
  std::vector<int32_t> row_of_k_;  // send row of each of a token's choices
};

}  // namespace switchyard
