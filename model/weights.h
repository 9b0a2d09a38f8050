// Mixtral weights bound to a checkpoint: the whole model, or the shard one rank holds.
//
//   ShardSpec spec = ShardSpec::Whole(cfg);
//   ASSIGN_OR_RETURN(auto w, ModelWeights::Load(*ckpt, cfg, spec, {.show_progress = true}));
//   const LayerWeights& l0 = w->layer(0);
//
// Matrices stay in the checkpoint's stored type inside the memory map (bf16 for Mixtral);
// only the small norm vectors are widened to fp32 copies. Loading asks the checkpoint for the
// tensors of the shard alone, checks every shape against the config (errors name the file
// and the tensor), and pre-faults their pages so the first request is not slow.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/tensor.h"

namespace switchyard {

// Which part of the model a rank holds.
struct ShardSpec {
  int layer_begin = 0;  // [layer_begin, layer_end)
  int layer_end = 0;
  bool has_embedding = true;  // first pipeline stage
  bool has_head = true;       // last pipeline stage: final norm + lm_head
  // local_experts[l - layer_begin]: global ids of the experts of layer l held here.
  std::vector<std::vector<int>> local_experts;

  static ShardSpec Whole(const ModelConfig& cfg);
};

struct ExpertWeights {
  WeightMatrix w1;  // [F, H]
  WeightMatrix w3;  // [F, H]
  WeightMatrix w2;  // [H, F]
};

struct LayerWeights {
  std::vector<float> input_norm;          // [H]
  std::vector<float> post_attention_norm; // [H]
  WeightMatrix wq, wk, wv, wo;
  WeightMatrix router;                    // [E, H]
  // Indexed by global expert id; only the shard's experts are bound (others have data null).
  std::vector<ExpertWeights> experts;
  bool HasExpert(int e) const { return experts[e].w1.data != nullptr; }
};

struct LoadOptions {
  bool show_progress = false;  // byte progress on a terminal when loading takes > 1 s
  bool prefetch = true;        // touch every page at load time
  // Called with (bytes loaded, bytes in all) as loading proceeds (ByteProgress::set_observer).
  std::function<void(uint64_t done, uint64_t total)> on_progress;
};

class ModelWeights {
 public:
  // Errors: kNotFound for a missing tensor, kInvalidArgument for a shape that disagrees with
  // the config or an invalid shard spec; messages name the file and the tensor.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Load(const SafetensorsCheckpoint& ckpt,
                                                             const ModelConfig& cfg,
                                                             const ShardSpec& spec,
                                                             const LoadOptions& options);

  const ModelConfig& config() const { return cfg_; }
  const ShardSpec& spec() const { return spec_; }
  // `l` is a global layer index within [spec.layer_begin, spec.layer_end).
  const LayerWeights& layer(int l) const { return layers_[l - spec_.layer_begin]; }
  const WeightMatrix& embedding() const { return embedding_; }  // null unless has_embedding
  const WeightMatrix& lm_head() const { return lm_head_; }      // null unless has_head
  const std::vector<float>& final_norm() const { return final_norm_; }
  // Bytes of checkpoint data this shard uses (matrices in stored type + norms).
  uint64_t resident_bytes() const { return resident_bytes_; }

  // The checkpoint tensors of expert e of layer l (w1, w3, w2), checked against the config
  // as Load checks them. For moving experts between ranks while serving: look them up and
  // prefetch them beside the running shard, then bind them with SetExpert between steps.
  static absl::StatusOr<std::vector<TensorView>> ExpertTensors(const SafetensorsCheckpoint& ckpt,
                                                               const ModelConfig& cfg, int l,
                                                               int e);
  // Binds expert e of layer l (a layer of this shard) to `tensors` (from ExpertTensors), or
  // unbinds it when `tensors` is empty; spec().local_experts and resident_bytes() follow.
  // Not thread-safe: call it when no step runs.
  void SetExpert(int l, int e, const std::vector<TensorView>& tensors);

 private:
  ModelWeights() = default;
  ModelConfig cfg_;
  ShardSpec spec_;
  std::vector<LayerWeights> layers_;
  WeightMatrix embedding_;
  WeightMatrix lm_head_;
  std::vector<float> final_norm_;
  uint64_t resident_bytes_ = 0;
};

}  // namespace switchyard
