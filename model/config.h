// Mixtral model configuration, parsed from a Hugging Face config.json.
//
//   ASSIGN_OR_RETURN(ModelConfig cfg, LoadModelConfig("models/brown-moe/config.json"));
//   int kv_dim = cfg.num_key_value_heads * cfg.head_dim;
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace switchyard {

struct ModelConfig {
  std::string model_type = "mixtral";
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;  // hidden_size / num_attention_heads unless config.json sets it
  int num_local_experts = 0;
  int num_experts_per_tok = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 1e6;
  int vocab_size = 0;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  int bos_token_id = 1;
  int eos_token_id = 2;

  int q_dim() const { return num_attention_heads * head_dim; }
  int kv_dim() const { return num_key_value_heads * head_dim; }

  // Parameter counts.
  int64_t AttentionParamsPerLayer() const;  // q,k,v,o + two norms
  int64_t ExpertParams() const;             // w1, w2, w3 of one expert
  int64_t LayerParams() const;              // attention + router + all experts
  int64_t TotalParams() const;
  int64_t ActiveParamsPerToken() const;  // embedding row excluded, lm_head included
};

// Parses and validates config.json text. `source` names the file in error messages.
// Errors: kInvalidArgument naming the field for a missing, mistyped or unsupported value
// (model_type other than mixtral, sliding_window set, hidden_act other than silu, sizes that
// do not divide, top-k above the expert count).
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source);

// Reads `path` and parses it. kNotFound when the file cannot be read.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// Mixtral-family shapes by name, all layers: "mixtral-8x7b", "mixtral-8x22b" (the other fields
// at ModelConfig's defaults). kInvalidArgument naming --preset otherwise.
absl::StatusOr<ModelConfig> ModelPreset(std::string_view name);

}  // namespace switchyard
