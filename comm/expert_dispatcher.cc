#include "comm/expert_dispatcher.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

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

// dst = (dst if `add`) + src[0] + ... + src[n-1], added left to right (so the bits do not
// depend on how the loop is split), two sources per pass over dst.
// src(j) gives the j-th source.
template <typename Src>
void SumInto(float* __restrict dst, bool add, Src&& src, int n, int H) {
  int j = 0;
  if (!add) {
    if (n == 1) {
      std::memcpy(dst, src(0), H * sizeof(float));
      return;
    }
    const float* __restrict a = src(0);
    const float* __restrict b = src(1);
    for (int h = 0; h < H; ++h) dst[h] = a[h] + b[h];
    j = 2;
  }
  for (; j + 1 < n; j += 2) {
    const float* __restrict a = src(j);
    const float* __restrict b = src(j + 1);
    for (int h = 0; h < H; ++h) dst[h] = (dst[h] + a[h]) + b[h];
  }
  if (j < n) {
    const float* __restrict a = src(j);
    for (int h = 0; h < H; ++h) dst[h] += a[h];
  }
}

}  // namespace

void ExpertDispatcher::MarkHeld() {
  const size_t E = layout_.num_experts;
  held_.assign(routing_.size(), std::vector<uint8_t>(E, 0));
  for (size_t l = 0; l < routing_.size(); ++l) {
    for (size_t e = 0; e < routing_[l].size() && e < E; ++e) {
      for (int r : routing_[l][e]) {
        if (r == rank_) held_[l][e] = 1;
      }
    }
  }
}

absl::Status ExpertDispatcher::SetRouting(ExpertRanks routing) {
  if (routing.size() != routing_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("new routing covers ", routing.size(),
                                                   " layers, the dispatcher ", routing_.size()));
  }
  for (size_t l = 0; l < routing.size(); ++l) {
    if (routing_[l].empty()) continue;  // a layer of another stage
    if (routing[l].size() != static_cast<size_t>(layout_.num_experts)) {
      return absl::InvalidArgumentError(absl::StrCat("new routing: layer ", l, " has ",
                                                     routing[l].size(), " experts, want ",
                                                     layout_.num_experts));
    }
    for (size_t e = 0; e < routing[l].size(); ++e) {
      if (routing[l][e].empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("new routing: layer ", l, " expert ", e, " has no replica"));
      }
      for (int r : routing[l][e]) {
        if (r < 0 || r >= layout_.ep) {
          return absl::InvalidArgumentError(absl::StrCat("new routing: layer ", l, " expert ", e,
                                                         " on rank ", r, " of ", layout_.ep));
        }
      }
    }
  }
  routing_ = std::move(routing);
  MarkHeld();
  return absl::OkStatus();
}

ExpertDispatcher::ExpertDispatcher(Communicator* comm, const DispatchLayout& layout,
                                   ExpertRanks routing, LocalExperts* experts)
    : comm_(comm),
      rank_(comm->rank()),
      layout_(layout),
      routing_(std::move(routing)),
      experts_(experts) {
  const size_t E = layout_.num_experts, K = layout_.top_k;
  expert_counts_.assign(routing_.size(), std::vector<int64_t>(E, 0));
  MarkHeld();
  send_token_.resize(layout_.max_send_rows());
  token_rows_.resize(static_cast<size_t>(layout_.max_tokens) * K);
  token_local_.resize(layout_.max_tokens);
  dest_of_token_k_.resize(static_cast<size_t>(layout_.max_tokens) * K);
  row_of_k_.resize(K);
  row_experts_.resize(K);
  row_weights_.resize(K);
  // Pairs: each of a rank's own tokens brings up to K, each received row up to K.
  const size_t max_pairs = (static_cast<size_t>(layout_.max_tokens) + layout_.max_recv_rows()) * K;
  expert_pairs_.resize(E);
  expert_cursor_.resize(E);
  pair_x_.resize(max_pairs);
  pair_y_.resize(max_pairs);
  pair_scale_.resize(max_pairs);
  pair_accumulate_.resize(max_pairs);
  const size_t P = layout_.ep;
  send_rows_.resize(P);
  recv_rows_.resize(P);
  send_counts_.resize(P);
  send_offsets_.resize(P);
  recv_counts_.resize(P);
  recv_offsets_.resize(P);
  rank_cursor_.resize(P);
  peer_base_.resize(P);
}

absl::Status ExpertDispatcher::ChooseTransport() {
  ASSIGN_OR_RETURN(seg_, comm_->AllocateShared(layout_.shm_bytes()));
  transport_chosen_ = true;  // only once the group agreed (an error leaves it undecided)
  if (seg_ != nullptr) {
    for (int r = 0; r < layout_.ep; ++r) peer_base_[r] = seg_->base(r);
    return absl::OkStatus();
  }
  const size_t W = layout_.row_words(), H = layout_.hidden;
  send_.resize(layout_.max_send_rows() * W);
  recv_.resize(layout_.max_recv_rows() * W);
  partial_.resize(layout_.max_recv_rows() * H);
  returned_.resize(layout_.max_send_rows() * H);
  return absl::OkStatus();
}

const float* ExpertDispatcher::SharedPartial(int32_t code) const {
  const int M = layout_.max_tokens;
  return Block(code / M).partial + (static_cast<size_t>(rank_) * M + code % M) * layout_.hidden;
}

int ExpertDispatcher::Destination(int layer, int expert, int token) const {
  return ReplicaFor(routing_[layer][expert], rank_, token);
}

absl::Status ExpertDispatcher::Forward(int layer, const float* x, int T, const int32_t* experts,
                                       const float* weights, float* out) {
  RETURN_IF_ERROR(Dispatch(layer, x, T, experts, weights, out));
  const auto t1 = Clock::now();
  if (batch_.pairs > 0) experts_->Run(layer, batch_);
  stats_.compute_seconds = Since(t1);
  return Combine();
}

absl::Status ExpertDispatcher::Dispatch(int layer, const float* x, int T, const int32_t* experts,
                                        const float* weights, float* out) {
  if (T > layout_.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("dispatch of ", T, " tokens exceeds the layout's ",
                                                   layout_.max_tokens));
  }
  const int K = layout_.top_k, P = layout_.ep, H = layout_.hidden, E = layout_.num_experts;
  const size_t W = layout_.row_words();
  const auto t0 = Clock::now();
  T_ = T;
  out_ = out;
  R_ = 0;

  // 1. Destinations and rows per destination (a token goes once to each distinct rank).
  std::fill(send_rows_.begin(), send_rows_.end(), 0);
  for (int t = 0; t < T; ++t) {
    token_local_[t] = 0;
    for (int k = 0; k < K; ++k) {
      const int e = experts[t * K + k];
      if (e < 0 || e >= E) {
        return absl::InvalidArgumentError(
            absl::StrCat("token ", t, " chooses expert ", e, ", outside [0, ", E, ")"));
      }
      const int r = Destination(layer, e, t);
      bool first = true;
      for (int j = 0; j < k; ++j) {
        if (experts[t * K + j] == e) {
          return absl::InvalidArgumentError(
              absl::StrCat("token ", t, " chooses expert ", e, " twice"));
        }
        first &= dest_of_token_k_[t * K + j] != r;
      }
      ++expert_counts_[layer][e];
      dest_of_token_k_[t * K + k] = r;
      if (r == rank_) token_local_[t] = 1;
      if (first) ++send_rows_[r];
    }
  }
  // send_rows_[rank_]: this rank's tokens with pairs here (their rows stay in x).
  const int64_t own_rows = send_rows_[rank_];
  const int64_t S = std::accumulate(send_rows_.begin(), send_rows_.end(), int64_t{0}) - own_rows;
  if (P > 1 && !transport_chosen_) RETURN_IF_ERROR(ChooseTransport());
  if (seg_ != nullptr) {
    RETURN_IF_ERROR(ExchangeShared(x, T, experts, weights));
  } else {
    RETURN_IF_ERROR(ExchangeMpi(x, T, experts, weights));
  }
  RETURN_IF_ERROR(BuildBatch(layer, x, T, experts, weights, out));
  // A row leaving this rank: the activations with their pairs over MPI, the activations alone
  // over shared memory (the pairs are read from the choices).
  const int64_t row_out = seg_ != nullptr ? H : static_cast<int64_t>(W);
  stats_.rows_sent = S + own_rows;
  stats_.rows_received = R_ + own_rows;
  stats_.bytes_sent = (S * row_out + R_ * H) * 4;
  stats_.dispatch_seconds = Since(t0);
  return absl::OkStatus();
}

ExpertDispatcher::SharedBlock ExpertDispatcher::Block(int rank) const {
  char* base = peer_base_[rank];
  const size_t MK = static_cast<size_t>(layout_.max_tokens) * layout_.top_k;
  SharedBlock b;
  b.tokens = reinterpret_cast<int32_t*>(base);
  b.dest = reinterpret_cast<int32_t*>(base + layout_.shm_choices_offset());
  b.experts = b.dest + MK;
  b.weights = reinterpret_cast<float*>(b.experts + MK);
  b.x = reinterpret_cast<float*>(base + layout_.shm_x_offset());
  b.partial = reinterpret_cast<float*>(base + layout_.shm_partial_offset());
  return b;
}

absl::Status ExpertDispatcher::ExchangeShared(const float* x, int T, const int32_t* experts,
                                              const float* weights) {
  const int K = layout_.top_k, P = layout_.ep, H = layout_.hidden, M = layout_.max_tokens;
  const SharedBlock mine = Block(rank_);
  *mine.tokens = T;
  std::copy(dest_of_token_k_.begin(), dest_of_token_k_.begin() + T * K, mine.dest);
  std::copy(experts, experts + T * K, mine.experts);
  std::copy(weights, weights + T * K, mine.weights);
  // Each (token, other rank) gets the next partial-sum row of that rank's block for this rank,
  // in token order; the token's list of them (rank * M + row) is in its choices' order.
  std::fill(rank_cursor_.begin(), rank_cursor_.end(), 0);
  for (int t = 0; t < T; ++t) {
    int32_t* rows_of_t = &token_rows_[static_cast<size_t>(t) * K];
    int n = 0;
    for (int k = 0; k < K; ++k) {
      const int r = dest_of_token_k_[t * K + k];
      bool first = r != rank_;
      for (int j = 0; j < k; ++j) first &= dest_of_token_k_[t * K + j] != r;
      if (first) rows_of_t[n++] = r * M + rank_cursor_[r]++;
    }
    for (int j = n; j < K; ++j) rows_of_t[j] = -1;
  }
  // The activations other ranks read: one copy per token that leaves, whatever its fan-out.
  ForRows(T, H, [&](int64_t t) {
    if (token_rows_[static_cast<size_t>(t) * K] < 0) return;
    std::memcpy(mine.x + t * H, x + t * H, H * sizeof(float));
  });
  // Every peer reads the token count and the choices; each reads the rows it was given.
  const size_t choices_bytes = sizeof(int32_t) + static_cast<size_t>(T) * K * 12;
  for (int r = 0; r < P; ++r) {
    if (r != rank_) {
      seg_->CountRead(r, choices_bytes + static_cast<size_t>(send_rows_[r]) * H * 4);
    }
  }
  ++epoch_;
  seg_->Post(kRowsReady, epoch_);
  return seg_->WaitAll(kRowsReady, epoch_, "Dispatch");
}

absl::Status ExpertDispatcher::ExchangeMpi(const float* x, int T, const int32_t* experts,
                                           const float* weights) {
  const int K = layout_.top_k, P = layout_.ep, H = layout_.hidden;
  const size_t W = layout_.row_words();
  // Rows for other ranks are numbered destination by destination; own rows are not packed.
  for (int r = 0, off = 0; r < P; ++r) {
    rank_cursor_[r] = off;
    if (r != rank_) off += send_rows_[r];
  }
  // One row per (token, other destination), carrying the pairs that destination applies: here
  // the row of every choice and the (expert, weight) words, in token order so rows keep their
  // tokens' order within each destination; the activations below, destination by destination.
  for (int t = 0; t < T; ++t) {
    int32_t* rows_of_t = &token_rows_[static_cast<size_t>(t) * K];
    int n = 0;  // distinct other destinations of t so far
    for (int k = 0; k < K; ++k) {
      const int r = dest_of_token_k_[t * K + k];
      if (r == rank_) continue;
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
  if (P == 1) return absl::OkStatus();
  // The activations of destination r's rows, copied just before they are sent (the rows of
  // one destination are contiguous and end at its cursor).
  auto pack = [&](int r) {
    const int64_t end = rank_cursor_[r], begin = end - send_rows_[r];
    ForRows(end - begin, H, [&](int64_t i) {
      const int64_t row = begin + i;
      std::memcpy(&send_[row * W], x + static_cast<size_t>(send_token_[row]) * H,
                  H * sizeof(float));
    });
  };
  // Exchange counts, then rows (nothing travels to or from this rank itself); each
  // destination's rows are packed right before they leave, overlapping earlier transfers.
  RETURN_IF_ERROR(comm_->AllToAll(send_rows_.data(), recv_rows_.data(), sizeof(int64_t)));
  recv_rows_[rank_] = 0;
  size_t sent = 0;
  for (int r = 0; r < P; ++r) {
    if (recv_rows_[r] < 0 || recv_rows_[r] > layout_.max_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", r, " of ", comm_->name(),
                                                     " dispatches ", recv_rows_[r],
                                                     " rows, over the layout's ",
                                                     layout_.max_tokens));
    }
    const size_t out_rows = r == rank_ ? 0 : send_rows_[r];
    send_counts_[r] = out_rows * W * 4;
    send_offsets_[r] = sent * W * 4;
    recv_counts_[r] = recv_rows_[r] * W * 4;
    recv_offsets_[r] = R_ * W * 4;
    sent += out_rows;
    R_ += recv_rows_[r];
  }
  return comm_->AllToAllVFilled(pack, send_.data(), send_counts_, send_offsets_, recv_.data(),
                                recv_counts_, recv_offsets_);
}

template <typename F>
absl::Status ExpertDispatcher::ForReceivedRows(F&& f) {
  const int K = layout_.top_k, P = layout_.ep, H = layout_.hidden, M = layout_.max_tokens;
  if (seg_ == nullptr) {
    const size_t W = layout_.row_words();
    for (int64_t i = 0; i < R_; ++i) {
      const float* row = &recv_[i * W];
      int n = 0;
      for (; n < K; ++n) {  // a row's pairs fill its slots from the first
        row_experts_[n] = WordAsInt(row[layout_.expert_word(n)]);
        if (row_experts_[n] < 0) break;
        row_weights_[n] = row[layout_.weight_word(n)];
      }
      RETURN_IF_ERROR(f(row, &partial_[static_cast<size_t>(i) * H], n));
    }
    return absl::OkStatus();
  }
  float* partials = Block(rank_).partial;
  for (int s = 0; s < P; ++s) {
    if (s == rank_) continue;
    const SharedBlock peer = Block(s);
    const int Ts = *peer.tokens;
    if (Ts < 0 || Ts > M) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", s, " of ", comm_->name(),
                                                     " dispatches ", Ts,
                                                     " tokens, over the layout's ", M));
    }
    int64_t i = 0;  // s's rows here, in its token order
    for (int t = 0; t < Ts; ++t) {
      int n = 0;
      for (int k = 0; k < K; ++k) {
        if (peer.dest[t * K + k] != rank_) continue;
        row_experts_[n] = peer.experts[t * K + k];
        row_weights_[n++] = peer.weights[t * K + k];
      }
      if (n == 0) continue;
      RETURN_IF_ERROR(f(peer.x + static_cast<size_t>(t) * H,
                        partials + (static_cast<size_t>(s) * M + i) * H, n));
      ++i;
    }
    recv_rows_[s] = i;
  }
  return absl::OkStatus();
}

absl::Status ExpertDispatcher::BuildBatch(int layer, const float* x, int T,
                                          const int32_t* experts, const float* weights,
                                          float* out) {
  const int K = layout_.top_k, H = layout_.hidden, E = layout_.num_experts;
  std::fill(expert_pairs_.begin(), expert_pairs_.end(), 0);
  for (int t = 0; t < T; ++t) {
    if (!token_local_[t]) continue;
    for (int k = 0; k < K; ++k) {
      if (dest_of_token_k_[t * K + k] == rank_) ++expert_pairs_[experts[t * K + k]];
    }
  }
  int64_t rows = 0;
  RETURN_IF_ERROR(ForReceivedRows([&](const float*, float*, int n) -> absl::Status {
    for (int j = 0; j < n; ++j) {
      const int e = row_experts_[j];
      if (e < 0 || e >= E || !held_[layer][e]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "received a row for expert ", e, " of layer ", layer, ", which rank ", rank_, " of ",
            comm_->name(), " does not hold"));
      }
      ++expert_pairs_[e];
    }
    ++rows;
    return absl::OkStatus();
  }));
  R_ = rows;
  if (seg_ != nullptr) {
    for (int s = 0; s < layout_.ep; ++s) {
      if (s != rank_) seg_->CountRead(s, static_cast<size_t>(recv_rows_[s]) * H * 4);
    }
  }
  int64_t pairs = 0;
  for (int e = 0; e < E; ++e) {
    expert_cursor_[e] = static_cast<int32_t>(pairs);
    pairs += expert_pairs_[e];
  }
  // A row's pair with the lowest expert id runs first (experts run in increasing id) and
  // overwrites its output row; the others add to it.
  auto place = [&](int e, const float* in, float* dst, float w, bool first) {
    const int pos = expert_cursor_[e]++;
    pair_x_[pos] = in;
    pair_y_[pos] = dst;
    pair_scale_[pos] = w;
    pair_accumulate_[pos] = first ? 0 : 1;
  };
  for (int t = 0; t < T; ++t) {
    if (!token_local_[t]) continue;
    int lowest = E;
    for (int k = 0; k < K; ++k) {
      if (dest_of_token_k_[t * K + k] == rank_) lowest = std::min(lowest, experts[t * K + k]);
    }
    for (int k = 0; k < K; ++k) {
      if (dest_of_token_k_[t * K + k] != rank_) continue;
      const int e = experts[t * K + k];
      place(e, x + static_cast<size_t>(t) * H, out + static_cast<size_t>(t) * H,
            weights[t * K + k], e == lowest);
    }
  }
  RETURN_IF_ERROR(ForReceivedRows([&](const float* in, float* partial, int n) -> absl::Status {
    const int lowest = *std::min_element(row_experts_.begin(), row_experts_.begin() + n);
    for (int j = 0; j < n; ++j) {
      place(row_experts_[j], in, partial, row_weights_[j], row_experts_[j] == lowest);
    }
    return absl::OkStatus();
  }));
  batch_ = ExpertBatch{.counts = expert_pairs_.data(),
                       .x = pair_x_.data(),
                       .y = pair_y_.data(),
                       .scale = pair_scale_.data(),
                       .accumulate = pair_accumulate_.data(),
                       .pairs = pairs};
  return absl::OkStatus();
}

absl::Status ExpertDispatcher::Combine() {
  const auto t2 = Clock::now();
  const int K = layout_.top_k, P = layout_.ep, H = layout_.hidden;
  // 3. Partial sums go back to their sources, in the order they came (or, over shared memory,
  // are ready where they were written).
  if (seg_ != nullptr) {
    seg_->Post(kPartialsReady, epoch_);
    RETURN_IF_ERROR(seg_->WaitAll(kPartialsReady, epoch_, "Combine"));
  } else if (P > 1) {
    for (int r = 0, so = 0, ro = 0; r < P; ++r) {
      send_counts_[r] = r == rank_ ? 0 : recv_rows_[r] * H * 4;
      recv_counts_[r] = r == rank_ ? 0 : send_rows_[r] * H * 4;
      send_offsets_[r] = so;
      recv_offsets_[r] = ro;
      so += send_counts_[r];
      ro += recv_counts_[r];
    }
    RETURN_IF_ERROR(comm_->AllToAllV(partial_.data(), send_counts_, send_offsets_,
                                     returned_.data(), recv_counts_, recv_offsets_));
  }
  // out[t] = its own partial sum (already there when it has one), then the returned ones in
  // the order of t's choices, in one pass over out.
  float* out = out_;
  ForRows(T_, H, [&](int64_t t) {
    const int32_t* rows_of_t = &token_rows_[static_cast<size_t>(t) * K];
    if (rows_of_t[0] < 0) return;  // every pair of t ran here
    int n = 0;
    while (n < K && rows_of_t[n] >= 0) ++n;
    auto src = [&](int j) {
      return seg_ != nullptr ? SharedPartial(rows_of_t[j])
                             : &returned_[static_cast<size_t>(rows_of_t[j]) * H];
    };
    SumInto(out + static_cast<size_t>(t) * H, token_local_[t] != 0, src, n, H);
  });
  stats_.combine_seconds = Since(t2);
  return absl::OkStatus();
}

}  // namespace switchyard
