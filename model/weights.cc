#include "model/weights.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/bf16.h"
#include "common/progress.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

// Collects the tensors of a shard, validated, before anything is touched.
class TensorCollector {
 public:
  explicit TensorCollector(const SafetensorsCheckpoint& ckpt) : ckpt_(ckpt) {}

  absl::StatusOr<WeightMatrix> Matrix(const std::string& name, int rows, int cols) {
    ASSIGN_OR_RETURN(TensorView t, ckpt_.Get(name, {rows, cols}));
    views_.push_back(t);
    return WeightMatrix{t.dtype, t.data, rows, cols};
  }

  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int n) {
    ASSIGN_OR_RETURN(TensorView t, ckpt_.Get(name, {n}));
    views_.push_back(t);
    std::vector<float> out(n);
    for (int i = 0; i < n; ++i) {
      switch (t.dtype) {
        case DType::kBF16: out[i] = Bf16ToFloat(static_cast<const uint16_t*>(t.data)[i]); break;
        case DType::kF16: out[i] = HalfToFloat(static_cast<const uint16_t*>(t.data)[i]); break;
        case DType::kF32: out[i] = static_cast<const float*>(t.data)[i]; break;
      }
    }
    return out;
  }

  const std::vector<TensorView>& views() const { return views_; }

 private:
  const SafetensorsCheckpoint& ckpt_;
  std::vector<TensorView> views_;
};

absl::Status ValidateSpec(const ModelConfig& cfg, const ShardSpec& spec) {
  if (spec.layer_begin < 0 || spec.layer_end > cfg.num_hidden_layers ||
      spec.layer_begin > spec.layer_end) {
    return absl::InvalidArgumentError(absl::StrCat("shard layers [", spec.layer_begin, ", ",
                                                   spec.layer_end, ") outside the model's ",
                                                   cfg.num_hidden_layers, " layers"));
  }
  if (static_cast<int>(spec.local_experts.size()) != spec.layer_end - spec.layer_begin) {
    return absl::InvalidArgumentError("shard expert list does not cover its layers");
  }
  for (const auto& experts : spec.local_experts) {
    for (int e : experts) {
      if (e < 0 || e >= cfg.num_local_experts) {
        return absl::InvalidArgumentError(absl::StrCat("shard names expert ", e, " of ",
                                                       cfg.num_local_experts));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

ShardSpec ShardSpec::Whole(const ModelConfig& cfg) {
  ShardSpec s;
  s.layer_begin = 0;
  s.layer_end = cfg.num_hidden_layers;
  std::vector<int> all(cfg.num_local_experts);
  for (int e = 0; e < cfg.num_local_experts; ++e) all[e] = e;
  s.local_experts.assign(cfg.num_hidden_layers, all);
  return s;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(const SafetensorsCheckpoint& ckpt,
                                                                 const ModelConfig& cfg,
                                                                 const ShardSpec& spec,
                                                                 const LoadOptions& options) {
  RETURN_IF_ERROR(ValidateSpec(cfg, spec));
  std::unique_ptr<ModelWeights> w(new ModelWeights());
  w->cfg_ = cfg;
  w->spec_ = spec;
  TensorCollector c(ckpt);
  const int H = cfg.hidden_size, F = cfg.intermediate_size, V = cfg.vocab_size;

  if (spec.has_embedding || (spec.has_head && cfg.tie_word_embeddings)) {
    ASSIGN_OR_RETURN(w->embedding_, c.Matrix("model.embed_tokens.weight", V, H));
  }
  for (int l = spec.layer_begin; l < spec.layer_end; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights lw;
    ASSIGN_OR_RETURN(lw.input_norm, c.Vector(p + "input_layernorm.weight", H));
    ASSIGN_OR_RETURN(lw.post_attention_norm, c.Vector(p + "post_attention_layernorm.weight", H));
    ASSIGN_OR_RETURN(lw.wq, c.Matrix(p + "self_attn.q_proj.weight", cfg.q_dim(), H));
    ASSIGN_OR_RETURN(lw.wk, c.Matrix(p + "self_attn.k_proj.weight", cfg.kv_dim(), H));
    ASSIGN_OR_RETURN(lw.wv, c.Matrix(p + "self_attn.v_proj.weight", cfg.kv_dim(), H));
    ASSIGN_OR_RETURN(lw.wo, c.Matrix(p + "self_attn.o_proj.weight", H, cfg.q_dim()));
    ASSIGN_OR_RETURN(lw.router,
                     c.Matrix(p + "block_sparse_moe.gate.weight", cfg.num_local_experts, H));
    lw.experts.resize(cfg.num_local_experts);
    for (int e : spec.local_experts[l - spec.layer_begin]) {
      const std::string ep = absl::StrCat(p, "block_sparse_moe.experts.", e, ".");
      ASSIGN_OR_RETURN(lw.experts[e].w1, c.Matrix(ep + "w1.weight", F, H));
      ASSIGN_OR_RETURN(lw.experts[e].w3, c.Matrix(ep + "w3.weight", F, H));
      ASSIGN_OR_RETURN(lw.experts[e].w2, c.Matrix(ep + "w2.weight", H, F));
    }
    w->layers_.push_back(std::move(lw));
  }
  if (spec.has_head) {
    ASSIGN_OR_RETURN(w->final_norm_, c.Vector("model.norm.weight", H));
    if (cfg.tie_word_embeddings) {
      w->lm_head_ = w->embedding_;
    } else {
      ASSIGN_OR_RETURN(w->lm_head_, c.Matrix("lm_head.weight", V, H));
    }
  }
  uint64_t total = 0;
  for (const TensorView& t : c.views()) total += t.nbytes;
  w->resident_bytes_ = total;
  if (options.prefetch) {
    // Every rank reports: on rank 0's terminal a refreshing line, in logs a line every 10 s.
    ByteProgress progress("loading weights", total, /*terminal=*/options.show_progress);
    if (options.on_progress) progress.set_observer(options.on_progress);
    ckpt.Prefetch(c.views(), &progress);
  }
  return w;
}

absl::StatusOr<std::vector<TensorView>> ModelWeights::ExpertTensors(
    const SafetensorsCheckpoint& ckpt, const ModelConfig& cfg, int l, int e) {
  if (l < 0 || l >= cfg.num_hidden_layers || e < 0 || e >= cfg.num_local_experts) {
    return absl::InvalidArgumentError(absl::StrCat("expert ", e, " of layer ", l, " outside the model's ",
                                                   cfg.num_hidden_layers, " layers x ",
                                                   cfg.num_local_experts, " experts"));
  }
  const std::string p = absl::StrCat("model.layers.", l, ".block_sparse_moe.experts.", e, ".");
  const int64_t H = cfg.hidden_size, F = cfg.intermediate_size;
  std::vector<TensorView> out;
  for (const auto& [name, rows, cols] :
       {std::tuple{"w1.weight", F, H}, std::tuple{"w3.weight", F, H}, std::tuple{"w2.weight", H, F}}) {
    ASSIGN_OR_RETURN(TensorView t, ckpt.Get(p + name, {rows, cols}));
    out.push_back(std::move(t));
  }
  return out;
}

void ModelWeights::SetExpert(int l, int e, const std::vector<TensorView>& tensors) {
  LayerWeights& lw = layers_[l - spec_.layer_begin];
  std::vector<int>& held = spec_.local_experts[l - spec_.layer_begin];
  ExpertWeights& x = lw.experts[e];
  if (lw.HasExpert(e)) {
    resident_bytes_ -= x.w1.bytes() + x.w3.bytes() + x.w2.bytes();
    held.erase(std::remove(held.begin(), held.end(), e), held.end());
    x = ExpertWeights{};
  }
  if (tensors.size() != 3) return;
  auto matrix = [](const TensorView& t) {
    return WeightMatrix{t.dtype, t.data, static_cast<int>(t.shape[0]), static_cast<int>(t.shape[1])};
  };
  x.w1 = matrix(tensors[0]);
  x.w3 = matrix(tensors[1]);
  x.w2 = matrix(tensors[2]);
  resident_bytes_ += x.w1.bytes() + x.w3.bytes() + x.w2.bytes();
  held.push_back(e);
  std::sort(held.begin(), held.end());
}

}  // namespace switchyard
