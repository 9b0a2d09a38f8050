#include "worker/device_dispatch.h"

#include <algorithm>
#include <bit>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {

DeviceDispatchPlan::DeviceDispatchPlan(const DispatchLayout& layout, ExpertRanks routing, int rank)
    : layout_(layout), routing_(std::move(routing)), rank_(rank) {
  const int E = layout_.num_experts;
  local_.resize(routing_.size());
  slot_.assign(routing_.size(), std::vector<int>(E, -1));
  counts_.assign(routing_.size(), std::vector<int64_t>(E, 0));
  for (size_t l = 0; l < routing_.size(); ++l) {
    for (int e = 0; e < E && e < static_cast<int>(routing_[l].size()); ++e) {
      const auto& ranks = routing_[l][e];
      if (std::find(ranks.begin(), ranks.end(), rank_) != ranks.end()) {
        slot_[l][e] = static_cast<int>(local_[l].size());
        local_[l].push_back(e);
      }
    }
  }
  send_rows_.assign(layout_.ep, 0);
  send_offsets_.assign(layout_.ep + 1, 0);
  recv_offsets_.assign(layout_.ep + 1, 0);
  cursor_.assign(layout_.ep, 0);
  send_token_.reserve(layout_.max_send_rows());
  send_meta_.reserve(layout_.max_send_rows() * meta_words());
  combine_rows_.reserve(static_cast<size_t>(layout_.max_tokens) * combine_width());
  dest_.reserve(static_cast<size_t>(layout_.max_tokens) * layout_.top_k);
  group_row_.reserve(max_pairs());
  pair_group_.reserve(layout_.max_recv_rows() * layout_.top_k);
  pair_weight_.reserve(layout_.max_recv_rows() * layout_.top_k);
}

absl::Status DeviceDispatchPlan::Validate() const {
  if (rank_ < 0 || rank_ >= layout_.ep) {
    return absl::InvalidArgumentError(
        absl::StrCat("dispatch rank ", rank_, " outside a group of ", layout_.ep));
  }
  for (size_t l = 0; l < routing_.size(); ++l) {
    if (routing_[l].empty()) continue;  // a layer of another stage
    if (static_cast<int>(routing_[l].size()) != layout_.num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("expert placement: layer ", l, " lists ",
                                                     routing_[l].size(), " experts, want ",
                                                     layout_.num_experts));
    }
    for (int e = 0; e < layout_.num_experts; ++e) {
      if (routing_[l][e].empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("expert placement: layer ", l, " expert ", e, " has no replica"));
      }
      for (int r : routing_[l][e]) {
        if (r < 0 || r >= layout_.ep) {
          return absl::InvalidArgumentError(absl::StrCat("expert placement: layer ", l,
                                                         " expert ", e, " on rank ", r,
                                                         ", outside the EP group of ",
                                                         layout_.ep));
        }
      }
    }
  }
  return absl::OkStatus();
}

int DeviceDispatchPlan::Destination(int layer, int expert, int token) const {
  return ReplicaFor(routing_[layer][expert], rank_, token);
}

absl::Status DeviceDispatchPlan::PlanSend(int layer, int T, const int32_t* experts,
                                          const float* weights) {
  const int K = layout_.top_k, E = layout_.num_experts, P = layout_.ep;
  if (T < 0 || T > layout_.max_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("dispatch of ", T, " tokens exceeds the layout's ", layout_.max_tokens));
  }
  if (layer < 0 || layer >= static_cast<int>(routing_.size()) || routing_[layer].empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no expert placement for layer ", layer));
  }
  // Destinations of every choice, and rows per destination (a token once per distinct rank).
  dest_.assign(static_cast<size_t>(T) * K, -1);
  std::fill(send_rows_.begin(), send_rows_.end(), 0);
  for (int t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) {
      const int e = experts[t * K + k];
      if (e < 0 || e >= E) {
        return absl::InvalidArgumentError(
            absl::StrCat("token ", t, " chooses expert ", e, ", outside [0, ", E, ")"));
      }
      bool first = true;
      const int r = Destination(layer, e, t);
      for (int j = 0; j < k; ++j) {
        if (experts[t * K + j] == e) {
          return absl::InvalidArgumentError(
              absl::StrCat("token ", t, " chooses expert ", e, " twice"));
        }
        first &= dest_[t * K + j] != r;
      }
      dest_[t * K + k] = r;
      if (first) ++send_rows_[r];
    }
  }
  for (int t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) ++counts_[layer][experts[t * K + k]];
  }
  send_offsets_[0] = 0;
  for (int r = 0; r < P; ++r) {
    send_offsets_[r + 1] = send_offsets_[r] + send_rows_[r];
    cursor_[r] = send_offsets_[r];
  }
  total_send_ = static_cast<int64_t>(send_offsets_[P]);
  const int W = meta_words(), C = combine_width();
  send_token_.assign(total_send_, -1);
  send_meta_.assign(static_cast<size_t>(total_send_) * W, -1);
  combine_rows_.assign(static_cast<size_t>(T) * C, -1);
  for (int t = 0; t < T; ++t) {
    int n = 0;  // distinct destinations of t so far (combine order: first appearance)
    for (int k = 0; k < K; ++k) {
      const int r = dest_[t * K + k];
      int row = -1;
      for (int j = 0; j < n; ++j) {
        const int at = combine_rows_[static_cast<size_t>(t) * C + j];
        if (send_token_[at] == t && at >= static_cast<int>(send_offsets_[r]) &&
            at < static_cast<int>(send_offsets_[r + 1])) {
          row = at;
        }
      }
      if (row < 0) {
        row = static_cast<int>(cursor_[r]++);
        send_token_[row] = t;
        combine_rows_[static_cast<size_t>(t) * C + n++] = row;
      }
      // The pair goes into the row's first free (expert, weight) slot.
      int32_t* meta = &send_meta_[static_cast<size_t>(row) * W];
      int slot = 0;
      while (meta[slot] >= 0) ++slot;
      meta[slot] = experts[t * K + k];
      meta[K + slot] = std::bit_cast<int32_t>(weights[t * K + k]);
    }
  }
  return absl::OkStatus();
}

absl::Status DeviceDispatchPlan::CheckRecvRows(std::span<const size_t> recv_rows) const {
  if (static_cast<int>(recv_rows.size()) != layout_.ep) {
    return absl::InvalidArgumentError(
        absl::StrCat("receive counts for ", recv_rows.size(), " ranks, want ", layout_.ep));
  }
  for (int r = 0; r < layout_.ep; ++r) {
    if (recv_rows[r] > static_cast<size_t>(layout_.max_tokens)) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", r, " sends ", recv_rows[r],
                                                     " rows, more than the layout's ",
                                                     layout_.max_tokens, " tokens"));
    }
  }
  return absl::OkStatus();
}

absl::Status DeviceDispatchPlan::PlanRecv(int layer, std::span<const size_t> recv_rows,
                                          const int32_t* recv_meta) {
  const int K = layout_.top_k, P = layout_.ep, W = meta_words();
  RETURN_IF_ERROR(CheckRecvRows(recv_rows));
  recv_offsets_[0] = 0;
  for (int r = 0; r < P; ++r) recv_offsets_[r + 1] = recv_offsets_[r] + recv_rows[r];
  total_recv_ = static_cast<int64_t>(recv_offsets_[P]);
  const std::vector<int>& slots = slot_[layer];
  const int S = static_cast<int>(local_[layer].size());
  slot_counts_.assign(S, 0);
  pair_group_.assign(static_cast<size_t>(total_recv_) * K, -1);
  pair_weight_.assign(static_cast<size_t>(total_recv_) * K, 0.0f);
  for (int64_t i = 0; i < total_recv_; ++i) {
    const int32_t* meta = recv_meta + i * W;
    for (int k = 0; k < K; ++k) {
      const int e = meta[k];
      if (e < 0) continue;
      if (e >= layout_.num_experts || slots[e] < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "received row ", i, " asks for expert ", e, " of layer ", layer,
            ", which this rank (", rank_, ") does not hold"));
      }
      ++slot_counts_[slots[e]];
    }
  }
  slot_cursor_.assign(S, 0);
  for (int s = 1; s < S; ++s) slot_cursor_[s] = slot_cursor_[s - 1] + slot_counts_[s - 1];
  const int64_t G = S == 0 ? 0 : slot_cursor_[S - 1] + slot_counts_[S - 1];
  group_row_.assign(G, -1);
  for (int64_t i = 0; i < total_recv_; ++i) {
    const int32_t* meta = recv_meta + i * W;
    for (int k = 0; k < K; ++k) {
      const int e = meta[k];
      if (e < 0) continue;
      const int g = slot_cursor_[slots[e]]++;
      group_row_[g] = static_cast<int32_t>(i);
      pair_group_[i * K + k] = g;
      pair_weight_[i * K + k] = std::bit_cast<float>(meta[K + k]);
    }
  }
  return absl::OkStatus();
}

}  // namespace switchyard
