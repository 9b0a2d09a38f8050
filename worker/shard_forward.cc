#include "worker/shard_forward.h"

#include <omp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {

ShardForward::ShardForward(const ModelWeights& weights, PagedKvCache* kv, MoeRunner* moe,
                           const ForwardLimits& limits)
    : w_(weights), cfg_(weights.config()), kv_(kv), moe_(moe), limits_(limits) {
  const size_t T = limits.max_tokens;
  const int H = cfg_.hidden_size;
  scratch_threads_ = omp_get_max_threads();
  inv_freq_.resize(cfg_.head_dim / 2);
  cpu::RopeInvFreq(cfg_.head_dim, cfg_.rope_theta, inv_freq_.data());
  positions_.resize(T);
  normed_.resize(T * H);
  q_.resize(T * cfg_.q_dim());
  k_.resize(T * cfg_.kv_dim());
  v_.resize(T * cfg_.kv_dim());
  attn_.resize(T * cfg_.q_dim());
  proj_.resize(T * H);
  router_logits_.resize(T * cfg_.num_local_experts);
  moe_out_.resize(T * H);
  topk_experts_.resize(T * cfg_.num_experts_per_tok);
  topk_weights_.resize(T * cfg_.num_experts_per_tok);
  attn_scratch_.resize(static_cast<size_t>(scratch_threads_) *
                       cpu::AttentionScratchFloats(limits.max_context));
}

void ShardForward::Embed(const int32_t* tokens, int T, float* hidden) {
  cpu::Embedding(w_.embedding(), tokens, T, hidden);
}

void ShardForward::Attention(int layer, std::span<const SeqEntry> seqs,
                             const int32_t* block_tables, int T) {
  const LayerWeights& lw = w_.layer(layer);
  cpu::MatMul(normed_.data(), T, lw.wq, q_.data());
  cpu::MatMul(normed_.data(), T, lw.wk, k_.data());
  cpu::MatMul(normed_.data(), T, lw.wv, v_.data());
  cpu::Rope(q_.data(), T, cfg_.num_attention_heads, cfg_.head_dim, positions_.data(),
            inv_freq_.data());
  cpu::Rope(k_.data(), T, cfg_.num_key_value_heads, cfg_.head_dim, positions_.data(),
            inv_freq_.data());
  const cpu::KvLayer cache = kv_->layer(layer - w_.spec().layer_begin);
  const cpu::AttentionShape shape{cfg_.num_attention_heads, cfg_.num_key_value_heads,
                                  cfg_.head_dim};
  for (const SeqEntry& s : seqs) {
    const int32_t* table = block_tables + s.block_offset;
    const size_t row = s.token_offset;
    cpu::KvWrite(cache, table, s.start_pos, &k_[row * cfg_.kv_dim()], &v_[row * cfg_.kv_dim()],
                 s.num_tokens);
    cpu::Attention(&q_[row * cfg_.q_dim()], s.num_tokens, s.start_pos, cache, table, shape,
                   &attn_[row * cfg_.q_dim()], attn_scratch_.data(), scratch_threads_);
  }
  cpu::MatMul(attn_.data(), T, lw.wo, proj_.data());
}

absl::Status ShardForward::RunLayers(std::span<const SeqEntry> seqs, const int32_t* block_tables,
                                     float* hidden, const RoutingCapture* capture) {
  // The plan was validated once (ValidatePlan: context, KV blocks, ids); this guard keeps the
  // step buffers, sized for max_tokens rows, from overflowing whatever the caller passes.
  int T = 0;
  for (const SeqEntry& s : seqs) {
    if (T + s.num_tokens > limits_.max_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("micro-batch carries more than ", limits_.max_tokens, " tokens"));
    }
    for (int i = 0; i < s.num_tokens; ++i) positions_[T + i] = s.start_pos + i;
    T += s.num_tokens;
  }
  const int H = cfg_.hidden_size;
  const int K = cfg_.num_experts_per_tok;
  for (int l = w_.spec().layer_begin; l < w_.spec().layer_end; ++l) {
    const LayerWeights& lw = w_.layer(l);
    if (T > 0) {
      cpu::RmsNorm(hidden, lw.input_norm.data(), T, H, cfg_.rms_norm_eps, normed_.data());
      Attention(l, seqs, block_tables, T);
      cpu::AddInPlace(hidden, proj_.data(), static_cast<int64_t>(T) * H);
      cpu::RmsNorm(hidden, lw.post_attention_norm.data(), T, H, cfg_.rms_norm_eps,
                   normed_.data());
      cpu::MatMul(normed_.data(), T, lw.router, router_logits_.data());
      cpu::RouterTopK(router_logits_.data(), T, cfg_.num_local_experts, K, topk_experts_.data(),
                      topk_weights_.data());
      if (capture != nullptr) {
        for (size_t j = 0; j < capture->rows.size(); ++j) {
          const size_t from = static_cast<size_t>(capture->rows[j]) * K;
          const size_t to = (j * capture->layers + l) * K;
          std::copy_n(&topk_experts_[from], K, capture->experts + to);
          std::copy_n(&topk_weights_[from], K, capture->weights + to);
        }
      }
    }
    // Collective in expert parallelism: called even when this rank has no rows.
    RETURN_IF_ERROR(moe_->Run(l, normed_.data(), T, topk_experts_.data(), topk_weights_.data(),
                              moe_out_.data()));
    if (T > 0) cpu::AddInPlace(hidden, moe_out_.data(), static_cast<int64_t>(T) * H);
  }
  return absl::OkStatus();
}

void ShardForward::Head(const float* hidden, std::span<const int32_t> rows, float* logits) {
  const int H = cfg_.hidden_size;
  const int V = cfg_.vocab_size;
  // Gather + normalise in blocks of max_tokens rows (normed_ is max_tokens * H).
  for (size_t b = 0; b < rows.size(); b += limits_.max_tokens) {
    const int n = static_cast<int>(std::min<size_t>(limits_.max_tokens, rows.size() - b));
    for (int i = 0; i < n; ++i) {
      cpu::RmsNorm(hidden + static_cast<size_t>(rows[b + i]) * H, w_.final_norm().data(), 1, H,
                   cfg_.rms_norm_eps, &normed_[static_cast<size_t>(i) * H]);
    }
    cpu::MatMul(normed_.data(), n, w_.lm_head(), logits + b * V);
  }
}

}  // namespace switchyard
