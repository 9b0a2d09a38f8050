// The forward pass over the layers one rank holds, for a batch of sequence chunks.
//
//   ShardForward fwd(weights, &kv_cache, &moe, {.max_tokens = 512, .max_context = 1024});
//   fwd.Embed(plan.tokens.data(), T, hidden);               // first stage only
//   RETURN_IF_ERROR(fwd.RunLayers(plan, hidden));
//   fwd.Head(hidden, rows, logits);                          // last stage only
//
// All buffers are allocated in the constructor for `max_tokens` rows, so a step allocates
// nothing. Not thread-safe: one step at a time.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/ops.h"
#include "model/weights.h"
#include "worker/kv_cache.h"
#include "worker/moe.h"
#include "worker/step.h"

namespace switchyard {

struct ForwardLimits {
  int max_tokens = 512;    // rows per step
  int max_context = 4096;  // longest sequence (positions) attention must cover
};

// Where RunLayers records the router's choices for some rows of its batch: layer l's top-k
// experts and weights of row rows[j] go to experts/weights + (j * layers + l) * top_k.
struct RoutingCapture {
  std::span<const int32_t> rows;  // batch rows (as RunLayers numbers them), any order
  int layers = 0;                 // entries of a recorded row: the whole model's layers
  int32_t* experts = nullptr;
  float* weights = nullptr;
};

class ShardForward {
 public:
  ShardForward(const ModelWeights& weights, PagedKvCache* kv, MoeRunner* moe,
               const ForwardLimits& limits);

  // hidden[t] = embedding[tokens[t]]. Requires the shard to hold the embedding.
  void Embed(const int32_t* tokens, int T, float* hidden);

  // Runs this shard's layers in place over hidden[T, H], T = sum of seqs' num_tokens (in
  // order); reads and writes KV for every sequence through its block table. The sequences
  // must have passed ValidatePlan (worker/step.h): positions, blocks and ids are not checked
  // again. Errors: kInvalidArgument when the batch exceeds max_tokens; MoE errors pass through.
  // With `capture`, also records the router's choices of its rows for this shard's layers.
  absl::Status RunLayers(std::span<const SeqEntry> seqs, const int32_t* block_tables,
                         float* hidden, const RoutingCapture* capture = nullptr);

  // logits[i] = lm_head(final_norm(hidden[rows[i]])). Requires the shard to hold the head.
  void Head(const float* hidden, std::span<const int32_t> rows, float* logits);

  const ForwardLimits& limits() const { return limits_; }

 private:
  void Attention(int layer, std::span<const SeqEntry> seqs, const int32_t* block_tables, int T);

  const ModelWeights& w_;
  const ModelConfig& cfg_;
  PagedKvCache* kv_;
  MoeRunner* moe_;
  ForwardLimits limits_;
  int scratch_threads_;
  std::vector<float> inv_freq_;
  // Step buffers, sized for max_tokens rows.
  std::vector<int32_t> positions_;
  std::vector<float> normed_, q_, k_, v_, attn_, proj_, router_logits_, moe_out_;
  std::vector<int32_t> topk_experts_;
  std::vector<float> topk_weights_;
  std::vector<float> attn_scratch_;
  std::vector<float> head_normed_;
};

}  // namespace switchyard
