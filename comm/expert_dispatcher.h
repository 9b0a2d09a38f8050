// Expert-parallel dispatch and combine for one MoE layer over an EP group: the
// communication half of the MoE's four parts (router -> dispatch -> experts -> combine).
//
//   DispatchLayout layout{.hidden = 4096, .top_k = 2, .num_experts = 8, .ep = 4,
//                         .max_tokens = 512};
//   ExpertDispatcher d(&ep_comm, layout, routing, &local_experts);
//   RETURN_IF_ERROR(d.Forward(layer, x, T, experts, weights, out));  // collective
//
// Forward = Dispatch, the experts, Combine, on every rank of the group (each with its own T
// tokens, possibly 0):
// 1. dispatch: for each token, the ranks holding its chosen experts (a replicated expert goes
//    to replica (source rank + token index) mod replicas, so load spreads deterministically).
//    Rows for this rank are not copied: the experts read them in x. Rows for other ranks are
//    packed once per (token, destination) with the (expert, weight) pairs that destination
//    applies (a token choosing two experts on one rank travels once); row counts are
//    exchanged with an AllToAll, rows with one AllToAllVFilled that packs each destination's
//    activations just before sending them (overlapping the transfers already started).
// 2. experts: the (row, expert) pairs this rank applies, grouped by expert (ExpertBatch), are
//    run reading every row where it lies (x or the receive buffer) and writing weight *
//    expert(row) where it belongs (out for own tokens, the combine send buffer for others'),
//    the first pair of a row overwriting and later ones adding: the weighted combine of a
//    rank's pairs is fused into its experts' output, no grouped copy and no separate pass.
// 3. combine: one reverse AllToAllV returns the partial sums, which one pass adds to out.
// A group of one rank (ep == 1, the single-process case) communicates nothing.
// Ranks on one host (Communicator::AllocateShared gives a segment) exchange nothing either:
// each rank writes its choices and, once, the activations of its tokens that leave it into its
// block of the segment; the experts read other ranks' rows there in place and write their
// partial sums into their own block, where the source adds them straight into out. Two flag
// waits per Forward replace the count exchange and both all-to-alls: ranks post "rows
// ready" after writing and "partials ready" after their experts ran (which also says they no
// longer read others' rows), so no block is rewritten while a peer still reads it. The sums and
// their order are the same as over the all-to-alls, so both transports give identical bits.
// Deterministic: pairs run expert by expert in a fixed order (own rows, then rows by source
// rank and position), and out[t] adds partial sums in a fixed order (own first, then by the
// order of t's choices), whatever the order messages arrive in.
// All buffers are sized once from DispatchLayout, which the packing code uses too; a step
// allocates nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
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

  // A rank's block of the shared-memory transport: its token count (64 bytes), each choice's
  // (rank, expert, weight) as three [max_tokens, top_k] arrays, the activations of its tokens
  // [max_tokens, hidden], and the partial sums it computes for each source rank
  // [ep, max_tokens, hidden] (a source's rows in its token order).
  size_t shm_choices_offset() const { return 64; }
  size_t shm_x_offset() const {
    return (64 + 12 * static_cast<size_t>(max_tokens) * top_k + 63) / 64 * 64;
  }
  size_t shm_partial_offset() const {
    return shm_x_offset() + static_cast<size_t>(max_tokens) * hidden * 4;
  }
  size_t shm_bytes() const {
    return shm_partial_offset() + static_cast<size_t>(ep) * max_tokens * hidden * 4;
  }
};

// The (row, expert) pairs one rank's experts apply in one layer, grouped by expert in
// increasing id (counts[e] pairs for expert e; 0 for experts not present). Pair i reads its
// row at x[i] and writes scale[i] * expert(x[i]) to y[i], overwriting it, or adding to it
// when accumulate[i] != 0 (a row's later pairs). Rows are read and written in place.
struct ExpertBatch {
  const int32_t* counts = nullptr;  // [num_experts]
  const float* const* x = nullptr;  // [pairs]
  float* const* y = nullptr;        // [pairs]
  const float* scale = nullptr;     // [pairs]: the router's weight
  const uint8_t* accumulate = nullptr;  // [pairs]
  int64_t pairs = 0;
};

// The experts this rank holds. Run processes experts in increasing id, each over all its pairs
// (so a row's first pair, which overwrites, runs before the pairs that add to it).
class LocalExperts {
 public:
  virtual ~LocalExperts() = default;
  virtual void Run(int layer, const ExpertBatch& batch) = 0;
};

// ranks[layer][expert]: the EP ranks holding a replica (non-empty for every expert of every
// layer this group serves).
using ExpertRanks = std::vector<std::vector<std::vector<int>>>;

// The rank that applies an expert to a token of `source_rank`: its only holder, or replica
// (source rank + token) mod replicas, so load spreads deterministically. The one rule of every
// dispatcher (host and device).
inline int ReplicaFor(const std::vector<int>& replicas, int source_rank, int token) {
  if (replicas.size() == 1) return replicas[0];
  return replicas[(source_rank + token) % replicas.size()];
}

struct DispatchStats {
  int64_t rows_sent = 0;      // (token, destination) rows of this rank's tokens, own included
  int64_t rows_received = 0;  // rows it computed, own included
  // Dispatch + combine payload bytes leaving this rank (over shared memory: the rows and
  // partial sums other ranks read from its block).
  int64_t bytes_sent = 0;
  // Seconds of the last Forward: dispatch (routing, packing, exchanges of counts and rows),
  // experts (the LocalExperts call), combine (exchange back and the final sum).
  double dispatch_seconds = 0, compute_seconds = 0, combine_seconds = 0;
};

class ExpertDispatcher {
 public:
  // `comm`, `experts` must outlive the dispatcher. Its size is the layout's ep.
  ExpertDispatcher(Communicator* comm, const DispatchLayout& layout, ExpertRanks routing,
                   LocalExperts* experts);

  // Collective over the group. x [T, hidden]; experts/weights [T, top_k]; out [T, hidden]
  // (overwritten) = sum_k weights[t,k] * expert_{experts[t,k]}(x[t]).
  // Errors: kInvalidArgument when T exceeds max_tokens, a choice names no expert, or a peer
  // sends more rows than the layout allows or an expert this rank does not hold;
  // communication errors pass through (kDeadlineExceeded naming the peer).
  absl::Status Forward(int layer, const float* x, int T, const int32_t* experts,
                       const float* weights, float* out);

  // The parts of Forward, for callers that run the experts themselves: Dispatch, then the
  // experts over batch(), then Combine. `x` and `out` must stay valid until Combine.
  absl::Status Dispatch(int layer, const float* x, int T, const int32_t* experts,
                        const float* weights, float* out);
  const ExpertBatch& batch() const { return batch_; }
  absl::Status Combine();

  // Replaces the routing (ExpertRanks of the same layers) between Forwards: every rank of the
  // group must switch before the same Forward, and hold the experts it names for itself by
  // then. Errors (kInvalidArgument, the routing unchanged): another layer count, an expert
  // with no replica or on a rank outside the group.
  absl::Status SetRouting(ExpertRanks routing);
  const ExpertRanks& routing() const { return routing_; }

  // True once a Forward ran over the group's shared memory (decided at the first Forward).
  bool shared_memory() const { return seg_ != nullptr; }
  const DispatchStats& last_stats() const { return stats_; }
  const DispatchLayout& layout() const { return layout_; }
  // Rows this rank sent to each rank of the group in the last Forward (its own included).
  const std::vector<int64_t>& last_send_rows() const { return send_rows_; }

  // Routed-token counts per (layer, expert) since construction, as this rank saw them in the
  // router's choices (for observability).
  const std::vector<std::vector<int64_t>>& expert_token_counts() const { return expert_counts_; }

 private:
  int Destination(int layer, int expert, int token) const;
  // At the first Forward of a group of several ranks: the shared segment, or the all-to-all
  // buffers.
  absl::Status ChooseTransport();
  // Step 2 of Dispatch over each transport: the rows of other ranks' tokens reach this rank
  // (R_, recv_rows_ for MPI), and token_rows_ says where each token's partial sums will be.
  absl::Status ExchangeShared(const float* x, int T, const int32_t* experts,
                              const float* weights);
  absl::Status ExchangeMpi(const float* x, int T, const int32_t* experts, const float* weights);
  // A rank's block of the segment, laid out by DispatchLayout::shm_*.
  struct SharedBlock {
    int32_t* tokens;   // its token count
    int32_t* dest;     // [max_tokens, top_k]: the rank each choice goes to
    int32_t* experts;  // [max_tokens, top_k]
    float* weights;    // [max_tokens, top_k]
    float* x;          // [max_tokens, hidden]: the activations of its tokens that leave it
    float* partial;    // [ep, max_tokens, hidden]: the partial sums it computes per source
  };
  SharedBlock Block(int rank) const;
  // f(row, partial, n) for every row received from another rank, in (source rank, position)
  // order, with its n pairs in row_experts_/row_weights_; sets recv_rows_ over shared memory.
  template <typename F>
  absl::Status ForReceivedRows(F&& f);
  // A partial sum of this rank's token in another rank's block: code = rank * max_tokens + row.
  const float* SharedPartial(int32_t code) const;

  // Flag slots of the segment.
  static constexpr int kRowsReady = 0, kPartialsReady = 1;

  void MarkHeld();  // held_ from routing_
  // Groups the pairs of own rows and received rows by expert into batch_.
  absl::Status BuildBatch(int layer, const float* x, int T, const int32_t* experts,
                          const float* weights, float* out);

  Communicator* comm_;
  const int rank_;
  DispatchLayout layout_;
  ExpertRanks routing_;
  std::vector<std::vector<uint8_t>> held_;  // [layer][expert]: this rank holds a replica
  LocalExperts* experts_;
  DispatchStats stats_;
  std::vector<std::vector<int64_t>> expert_counts_;

  // The Forward in progress (between Dispatch and Combine).
  int T_ = 0;
  float* out_ = nullptr;
  int64_t R_ = 0;  // rows received from other ranks

  bool transport_chosen_ = false;
  std::unique_ptr<SharedSegment> seg_;  // null: all-to-alls
  uint64_t epoch_ = 0;                  // Forwards over seg_
  std::vector<char*> peer_base_;        // seg_->base(r)
  std::vector<int32_t> row_experts_;    // [top_k]: the pairs of the row ForReceivedRows visits
  std::vector<float> row_weights_;

  // Buffers, sized once from layout_ (the four row buffers only for the all-to-alls).
  std::vector<float> send_;            // [max_send_rows, row_words]: rows for other ranks
  std::vector<float> recv_;            // [max_recv_rows, row_words]: rows from other ranks
  std::vector<float> partial_;         // [max_recv_rows, hidden]: combine send
  std::vector<float> returned_;        // [max_send_rows, hidden]: combine receive
  std::vector<int32_t> send_token_;    // token of each send row
  std::vector<int32_t> token_rows_;    // [max_tokens, top_k]: send rows of each token, -1 after
  std::vector<uint8_t> token_local_;   // [max_tokens]: the token has pairs on this rank
  std::vector<int32_t> dest_of_token_k_;  // [max_tokens, top_k] destination rank
  std::vector<int32_t> row_of_k_;      // send row of each of a token's choices
  std::vector<int32_t> rank_cursor_;
  // The expert batch: pairs grouped by expert.
  ExpertBatch batch_;
  std::vector<int32_t> expert_pairs_;  // per expert
  std::vector<int32_t> expert_cursor_;
  std::vector<const float*> pair_x_;
  std::vector<float*> pair_y_;
  std::vector<float> pair_scale_;
  std::vector<uint8_t> pair_accumulate_;
  std::vector<int64_t> send_rows_, recv_rows_;  // per rank
  std::vector<size_t> send_counts_, send_offsets_, recv_counts_, recv_offsets_;
};

}  // namespace switchyard
