// The index work of expert-parallel dispatch for a device backend, done on the host: which
// of this rank's token rows go to which EP rank, which (row, expert) pairs this rank applies
// to the rows it received, and how the returned partial sums add up per token. The device
// then only gathers rows by these indices, exchanges them, runs the experts over packed
// groups and sums (worker/cuda_stage_backend.cc); the counts the exchanges need are on the
// host already. Plain C++ with no device code, so its rules are tested on any machine.
//
// One MoE layer on each rank of the EP group (every rank, even with T = 0):
//   RETURN_IF_ERROR(plan.PlanSend(layer, T, experts, weights));      // router output, host
//   exchange plan.send_rows() (AllToAll) and plan.send_meta() rows (AllToAllV) -> recv_rows,
//   recv_meta;
//   RETURN_IF_ERROR(plan.PlanRecv(layer, recv_rows, recv_meta));
//   device: send[i] = x[send_token[i]]; AllToAllV rows -> recv; groups[g] = recv[group_row[g]];
//           y = experts over groups (slot_counts rows per local expert slot, in slot order);
//           partial[r] = sum_k pair_weight[r, k] * y[pair_group[r, k]]   (-1: nothing);
//           AllToAllV partial back (the reverse counts) -> returned (send row order);
//           out[t] = sum_j returned[combine_rows[t, j]]                   (-1: nothing).
//
// Rules, the same as the host dispatcher's (comm/expert_dispatcher.h): a token goes once to
// each distinct rank holding one of its chosen experts, carrying the (expert, weight) pairs
// that rank applies; a replicated expert goes to replica (source rank + token) mod replicas;
// send rows are numbered destination by destination in token order, the block to this rank
// included (it travels through the exchange's own block); received rows come in source rank
// order. Pairs are grouped by the local expert slot (the experts this rank holds for the
// layer, in increasing id) and within a slot in (received row, choice) order; a token's
// returned rows add in the order of its destinations' first appearance among its choices.
// Every sum runs in a fixed order: results do not depend on arrival order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "comm/expert_dispatcher.h"

namespace switchyard {

class DeviceDispatchPlan {
 public:
  // `routing[layer][expert]`: the EP ranks holding each expert (every layer of the model; the
  // layers this stage runs must be non-empty). `rank` is this rank's place in the group of
  // layout.ep ranks. Errors at construction are reported by Validate().
  DeviceDispatchPlan(const DispatchLayout& layout, ExpertRanks routing, int rank);

  // kInvalidArgument when the routing names a rank outside the group or leaves an expert of a
  // layer with entries without a replica.
  absl::Status Validate() const;

  // Local expert slots of `layer`: the experts this rank holds, in increasing id.
  const std::vector<int>& local_experts(int layer) const { return local_[layer]; }
  // Slot of (layer, expert) on this rank, -1 when it holds no replica.
  int slot_of(int layer, int expert) const { return slot_[layer][expert]; }

  // Send side from the router's choices (host copies): experts/weights [T, top_k]. Errors:
  // kInvalidArgument when T exceeds the layout's max_tokens or a choice is out of range or
  // repeated.
  absl::Status PlanSend(int layer, int T, const int32_t* experts, const float* weights);
  // Rows for each rank (this one included), and their first row.
  const std::vector<size_t>& send_rows() const { return send_rows_; }
  const std::vector<size_t>& send_row_offsets() const { return send_offsets_; }
  int64_t total_send_rows() const { return total_send_; }
  // [total_send_rows]: the token of each send row.
  const std::vector<int32_t>& send_token() const { return send_token_; }
  // [total_send_rows, meta_words()]: per send row the top_k expert ids (-1 unused) and the
  // top_k weights (float bits) the destination applies.
  const std::vector<int32_t>& send_meta() const { return send_meta_; }
  int meta_words() const { return 2 * layout_.top_k; }
  // [T, combine_width()]: the send rows whose returned sums make token t, -1 after the last.
  const std::vector<int32_t>& combine_rows() const { return combine_rows_; }
  int combine_width() const { return std::min(layout_.top_k, layout_.ep); }

  // Receive side: recv_rows[r] rows came from rank r (r's send_rows()[this rank]), their
  // meta words in source rank order. Errors: kInvalidArgument when more rows arrive than the
  // layout allows or a row names an expert this rank does not hold for `layer`.
  absl::Status PlanRecv(int layer, std::span<const size_t> recv_rows, const int32_t* recv_meta);
  // PlanRecv's check of the counts alone (one per rank, none above max_tokens): callers that
  // size a receive from them check first.
  absl::Status CheckRecvRows(std::span<const size_t> recv_rows) const;
  int64_t total_recv_rows() const { return total_recv_; }
  const std::vector<size_t>& recv_row_offsets() const { return recv_offsets_; }
  // Grouped pairs: slot_counts()[s] pairs for local slot s, in slot order; group_row()[g] is
  // the received row of grouped pair g.
  const std::vector<int32_t>& slot_counts() const { return slot_counts_; }
  const std::vector<int32_t>& group_row() const { return group_row_; }
  int64_t total_pairs() const { return static_cast<int64_t>(group_row_.size()); }
  // [total_recv_rows, top_k]: grouped pair of each received row's k-th pair (-1 unused), and
  // its weight (0 unused).
  const std::vector<int32_t>& pair_group() const { return pair_group_; }
  const std::vector<float>& pair_weight() const { return pair_weight_; }

  // The most pairs one layer can group on a rank (buffers are sized from it).
  int64_t max_pairs() const {
    return static_cast<int64_t>(layout_.max_recv_rows()) * layout_.top_k;
  }
  const DispatchLayout& layout() const { return layout_; }
  // Routed-token counts per (layer, expert) of this rank's tokens since construction.
  const std::vector<std::vector<int64_t>>& expert_token_counts() const { return counts_; }

 private:
  int Destination(int layer, int expert, int token) const;

  DispatchLayout layout_;
  ExpertRanks routing_;
  int rank_;
  std::vector<std::vector<int>> local_;  // [layer] experts held, increasing
  std::vector<std::vector<int>> slot_;   // [layer][expert] slot or -1
  std::vector<std::vector<int64_t>> counts_;

  std::vector<size_t> send_rows_, send_offsets_;
  int64_t total_send_ = 0;
  std::vector<int32_t> send_token_, send_meta_, combine_rows_;
  std::vector<int32_t> dest_;  // [T * top_k] destination of each choice
  std::vector<size_t> cursor_;

  std::vector<size_t> recv_offsets_;
  int64_t total_recv_ = 0;
  std::vector<int32_t> slot_counts_, group_row_, pair_group_, slot_cursor_;
  std::vector<float> pair_weight_;
};

}  // namespace switchyard
