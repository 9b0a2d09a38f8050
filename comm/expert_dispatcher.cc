#include "comm/expert_dispatcher.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include <omp.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int32_t WordAsInt(float w) {
  int32_t v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}
float IntAsWord(int32_t v) {
  float w;
  std::memcpy(&w, &v, sizeof(w));
  return w;
}

// Row copies and sums are split over the OpenMP threads only when there is enough data to
// pay for waking them (below this a single thread is faster).
// (An `if` clause would still enter the OpenMP runtime, which costs microseconds per loop at
// decode sizes; small loops never touch it.)
constexpr int64_t kParallelFloats = 1 << 16;
template <typename F>
void ForRows(int64_t rows, int hidden, F&& f) {
  if (rows * hidden >= kParallelFloats && omp_get_max_threads() > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) f(i);
  } else {
    for (int64_t i = 0; i < rows; ++i) f(i);
  }
}

}  // namespace

ExpertDispatcher::ExpertDispatcher(Communicator* comm, const DispatchLayout& layout,
                                   ExpertRanks routing, LocalExperts* experts)
    : comm_(comm), layout_(layout), routing_(std::move(routing)), experts_(experts) {
  const size_t W = layout_.row_words(), H = layout_.hidden;
  expert_counts_.assign(routing_.size(), std::vector<int64_t>(layout_.num_experts, 0));
  send_.resize(layout_.max_send_rows() * W);
  recv_.resize(layout_.max_recv_rows() * W);
  grouped_x_.resize(layout_.max_recv_rows() * layout_.top_k * H);
  grouped_y_.resize(grouped_x_.size());
  partial_.resize(layout_.max_recv_rows() * H);
  returned_.resize(layout_.max_send_rows() * H);
  send_token_.resize(layout_.max_send_rows());
  token_rows_.resize(static_cast<size_t>(layout_.max_tokens) * layout_.top_k);
  pair_row_.resize(layout_.max_recv_rows() * layout_.top_k);
  pair_weight_.resize(pair_row_.size());
  row_pairs_.resize(pair_row_.size());
  expert_rows_.resize(layout_.num_experts);
  expert_cursor_.resize(layout_.num_experts);
  const size_t P = layout_.ep;
  send_rows_.resize(P);
  recv_rows_.resize(P);
  send_counts_.resize(P);
  send_offsets_.resize(P);
  recv_counts_.resize(P);
  recv_offsets_.resize(P);
  rank_cursor_.resize(P);
  row_of_k_.resize(layout_.top_k);
  dest_of_token_k_.resize(static_cast<size_t>(layout_.max_tokens) * layout_.top_k);
}

int ExpertDispatcher::Destination(int layer, int expert, int token) const {
  const std::vector<int>& replicas = routing_[layer][expert];
  if (replicas.size() == 1) return replicas[0];
  return replicas[(comm_->rank() + token) % replicas.size()];
}

absl::Status ExpertDispatcher::Forward(int layer, const float* x, int T, const int32_t* experts,
                                       const float* weights, float* out) {
  if (T > layout_.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch of ", T, " tokens exceeds the layout's ",
                                                   layout_.max_tokens));
  }
  const int K = layout_.top_k, P = layout_.ep, H = layout_.hidden;
  const size_t W = layout_.row_words();
  auto t0 = Clock::now();

  // 1. Destinations and rows per destination (a token goes once to each distinct rank).
  std::fill(send_rows_.begin(), send_rows_.end(), 0);
  for (int t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) {
      const int e = experts[t * K + k];
      ++expert_counts_[layer][e];
      const int r = Destination(layer, e, t);
      dest_of_token_k_[t * K + k] = r;
      bool first = true;
      for (int j = 0; j < k; ++j) first &= dest_of_token_k_[t * K + j] != r;
      if (first) ++send_rows_[r];
    }
  }
  for (int r = 0, off = 0; r < P; ++r) {
    rank_cursor_[r] = off;
    off += send_rows_[r];
  }
  // Pack: one row per (token, destination), carrying the pairs that destination applies.
  // First the row of every (token, choice) and the (expert, weight) words, in token order so
  // that rows keep their tokens' order within each destination; then the activations, in
  // parallel when large.
  for (int t = 0; t < T; ++t) {
    int32_t* rows_of_t = &token_rows_[static_cast<size_t>(t) * K];
    int n = 0;  // distinct destinations of t so far
    for (int k = 0; k < K; ++k) {
      const int r = dest_of_token_k_[t * K + k];
      int row = -1;
      for (int j = 0; j < k; ++j) {
        if (dest_of_token_k_[t * K + j] == r) row = row_of_k_[j];
      }
      float* dst;
      int slot = 0;
      if (row < 0) {
        row = rank_cursor_[r]++;
        send_token_[row] = t;
        rows_of_t[n++] = row;
        dst = &send_[row * W];
        for (int j = 0; j < K; ++j) {
          dst[layout_.expert_word(j)] = IntAsWord(-1);
          dst[layout_.weight_word(j)] = 0.0f;
        }
      } else {
        dst = &send_[row * W];
        while (WordAsInt(dst[layout_.expert_word(slot)]) >= 0) ++slot;
      }
      row_of_k_[k] = row;
      dst[layout_.expert_word(slot)] = IntAsWord(experts[t * K + k]);
      dst[layout_.weight_word(slot)] = weights[t * K + k];
    }
    for (int j = n; j < K; ++j) rows_of_t[j] = -1;
  }
  int64_t S = 0;
  for (int r = 0; r < P; ++r) S += send_rows_[r];
  ForRows(S, H, [&](int64_t row) {
    std::memcpy(&send_[row * W], x + static_cast<size_t>(send_token_[row]) * H, H * sizeof(float));
  });

  // 2. Exchange counts, then rows.
  RETURN_IF_ERROR(comm_->AllToAll(send_rows_.data(), recv_rows_.data(), sizeof(int64_t)));
  int64_t R = 0, sent = 0;
  for (int r = 0; r < P; ++r) {
    if (recv_rows_[r] < 0 || recv_rows_[r] > layout_.max_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", r, " of ", comm_->name(),
                                                     " dispatches ", recv_rows_[r],
                                                     " rows, over the layout's ",
                                                     layout_.max_tokens));
    }
    send_counts_[r] = send_rows_[r] * W * 4;
    send_offsets_[r] = sent * W * 4;
    recv_counts_[r] = recv_rows_[r] * W * 4;
    recv_offsets_[r] = R * W * 4;
    sent += send_rows_[r];
    R += recv_rows_[r];
  }
  RETURN_IF_ERROR(comm_->AllToAllV(send_.data(), send_counts_, send_offsets_, recv_.data(),
                                   recv_counts_, recv_offsets_));
  stats_.dispatch_seconds = Since(t0);
  auto t1 = Clock::now();

  // 3. Group received (row, expert) pairs by expert and run the local experts.
  std::fill(expert_rows_.begin(), expert_rows_.end(), 0);
  for (int64_t i = 0; i < R; ++i) {
    const float* row = &recv_[i * W];
    for (int j = 0; j < K; ++j) {
      const int e = WordAsInt(row[layout_.expert_word(j)]);
      if (e < 0) break;
      if (e >= layout_.num_experts) {
        return absl::InvalidArgumentError(absl::StrCat("received expert id ", e));
      }
      ++expert_rows_[e];
    }
  }
  for (int e = 0, off = 0; e < layout_.num_experts; ++e) {
    expert_cursor_[e] = off;
    off += expert_rows_[e];
  }
  // Positions of the (row, expert) pairs in expert order; each row remembers its pairs'
  // positions so that its weighted sum below needs no scatter (and no zeroing).
  int64_t pairs = 0;
  for (int64_t i = 0; i < R; ++i) {
    const float* row = &recv_[i * W];
    int32_t* ps = &row_pairs_[static_cast<size_t>(i) * K];
    for (int j = 0; j < K; ++j) ps[j] = -1;
    for (int j = 0; j < K; ++j) {
      const int e = WordAsInt(row[layout_.expert_word(j)]);
      if (e < 0) break;  // a row's pairs fill its slots from the first (as counted above)
      const int pos = expert_cursor_[e]++;
      pair_row_[pos] = static_cast<int32_t>(i);
      pair_weight_[pos] = row[layout_.weight_word(j)];
      ps[j] = pos;
      ++pairs;
    }
  }
  ForRows(pairs, H, [&](int64_t pos) {
    std::memcpy(&grouped_x_[static_cast<size_t>(pos) * H],
                &recv_[static_cast<size_t>(pair_row_[pos]) * W], H * sizeof(float));
  });
  if (pairs > 0) experts_->Run(layer, grouped_x_.data(), expert_rows_.data(), grouped_y_.data());
  // partial[i] = sum over row i's pairs of weight * y (a row has at least one pair).
  ForRows(R, H, [&](int64_t i) {
    float* dst = &partial_[static_cast<size_t>(i) * H];
    const int32_t* ps = &row_pairs_[static_cast<size_t>(i) * K];
    bool first = true;
    for (int j = 0; j < K; ++j) {
      if (ps[j] < 0) continue;
      const float* src = &grouped_y_[static_cast<size_t>(ps[j]) * H];
      const float w = pair_weight_[ps[j]];
      if (first) {
        for (int h = 0; h < H; ++h) dst[h] = w * src[h];
      } else {
        for (int h = 0; h < H; ++h) dst[h] += w * src[h];
      }
      first = false;
    }
    if (first) std::memset(dst, 0, H * sizeof(float));
  });
  stats_.compute_seconds = Since(t1);
  auto t2 = Clock::now();

  // 4. Combine: partial sums go back to their sources, in the order they came.
  for (int r = 0; r < P; ++r) {
    send_counts_[r] = recv_rows_[r] * H * 4;
    recv_counts_[r] = send_rows_[r] * H * 4;
  }
  for (int r = 0, so = 0, ro = 0; r < P; ++r) {
    send_offsets_[r] = so;
    recv_offsets_[r] = ro;
    so += send_counts_[r];
    ro += recv_counts_[r];
  }
  RETURN_IF_ERROR(comm_->AllToAllV(partial_.data(), send_counts_, send_offsets_, returned_.data(),
                                   recv_counts_, recv_offsets_));
  // out[t] = the partial sums of t's rows, added in the order of t's choices.
  ForRows(T, H, [&](int64_t t) {
    float* dst = out + static_cast<size_t>(t) * H;
    const int32_t* rows_of_t = &token_rows_[static_cast<size_t>(t) * K];
    std::memcpy(dst, &returned_[static_cast<size_t>(rows_of_t[0]) * H], H * sizeof(float));
    for (int j = 1; j < K && rows_of_t[j] >= 0; ++j) {
      const float* src = &returned_[static_cast<size_t>(rows_of_t[j]) * H];
      for (int h = 0; h < H; ++h) dst[h] += src[h];
    }
  });
  stats_.combine_seconds = Since(t2);
  stats_.rows_sent = S;
  stats_.rows_received = R;
  stats_.bytes_sent = (S * static_cast<int64_t>(W) + R * H) * 4;
  return absl::OkStatus();
}

}  // namespace switchyard
