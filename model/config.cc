#include "model/config.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& source, const std::string& field,
                        const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "' ", what));
}

absl::Status ReadInt(const json& j, const std::string& source, const char* field, bool required,
                     int* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    if (required) return FieldError(source, field, "is missing");
    return absl::OkStatus();
  }
  if (!it->is_number_integer()) return FieldError(source, field, "must be an integer");
  int64_t v = it->get<int64_t>();
  if (v < 0 || v > (int64_t{1} << 31) - 1) {
    return FieldError(source, field, absl::StrCat("is out of range: ", v));
  }
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

// Bounds that keep derived sizes representable: q_dim/kv_dim are int, and element counts
// times bytes per element (up to 4) and small factors stay far below 2^63.
constexpr double kMaxDerivedDim = 1 << 30;
constexpr double kMaxParams = 1e15;

absl::Status ReadPositive(const json& j, const std::string& source, const char* field, int* out) {
  RETURN_IF_ERROR(ReadInt(j, source, field, true, out));
  if (*out <= 0) return FieldError(source, field, "must be positive");
  return absl::OkStatus();
}

}  // namespace

int64_t ModelConfig::AttentionParamsPerLayer() const {
  int64_t h = hidden_size;
  return h * q_dim() * 2 + h * kv_dim() * 2 + 2 * h;
}
int64_t ModelConfig::ExpertParams() const { return int64_t{3} * hidden_size * intermediate_size; }
int64_t ModelConfig::LayerParams() const {
  return AttentionParamsPerLayer() + int64_t{num_local_experts} * hidden_size +
         num_local_experts * ExpertParams();
}
int64_t ModelConfig::TotalParams() const {
  int64_t emb = int64_t{vocab_size} * hidden_size;
  return emb * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * LayerParams() + hidden_size;
}
int64_t ModelConfig::ActiveParamsPerToken() const {
  int64_t per_layer = AttentionParamsPerLayer() + int64_t{num_local_experts} * hidden_size +
                      num_experts_per_tok * ExpertParams();
  return num_hidden_layers * per_layer + hidden_size + int64_t{vocab_size} * hidden_size;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a valid JSON object"));
  }
  ModelConfig c;
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) return FieldError(source, "model_type", "is missing");
  c.model_type = mt->get<std::string>();
  if (c.model_type != "mixtral") {
    return FieldError(source, "model_type",
                      absl::StrCat("is '", c.model_type, "'; only 'mixtral' is supported"));
  }
  RETURN_IF_ERROR(ReadPositive(j, source, "hidden_size", &c.hidden_size));
  RETURN_IF_ERROR(ReadPositive(j, source, "intermediate_size", &c.intermediate_size));
  RETURN_IF_ERROR(ReadPositive(j, source, "num_hidden_layers", &c.num_hidden_layers));
  RETURN_IF_ERROR(ReadPositive(j, source, "num_attention_heads", &c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  RETURN_IF_ERROR(ReadInt(j, source, "num_key_value_heads", false, &c.num_key_value_heads));
  if (c.num_key_value_heads <= 0) return FieldError(source, "num_key_value_heads", "must be positive");
  RETURN_IF_ERROR(ReadPositive(j, source, "num_local_experts", &c.num_local_experts));
  RETURN_IF_ERROR(ReadPositive(j, source, "num_experts_per_tok", &c.num_experts_per_tok));
  RETURN_IF_ERROR(ReadPositive(j, source, "vocab_size", &c.vocab_size));
  c.max_position_embeddings = 4096 * 32;
  RETURN_IF_ERROR(ReadInt(j, source, "max_position_embeddings", false, &c.max_position_embeddings));
  if (c.max_position_embeddings <= 0) {
    return FieldError(source, "max_position_embeddings", "must be positive");
  }
  RETURN_IF_ERROR(ReadInt(j, source, "bos_token_id", false, &c.bos_token_id));
  RETURN_IF_ERROR(ReadInt(j, source, "eos_token_id", false, &c.eos_token_id));

  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return FieldError(source, "num_key_value_heads",
                      absl::StrCat("(", c.num_key_value_heads,
                                   ") must divide num_attention_heads (", c.num_attention_heads,
                                   ")"));
  }
  if (auto hd = j.find("head_dim"); hd != j.end() && !hd->is_null()) {
    RETURN_IF_ERROR(ReadPositive(j, source, "head_dim", &c.head_dim));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return FieldError(source, "hidden_size",
                        "must be a multiple of num_attention_heads when head_dim is not set");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) return FieldError(source, "head_dim", "must be even for RoPE");
  if (c.num_experts_per_tok > c.num_local_experts) {
    return FieldError(source, "num_experts_per_tok",
                      absl::StrCat("(", c.num_experts_per_tok, ") exceeds num_local_experts (",
                                   c.num_local_experts, ")"));
  }
  if (c.bos_token_id >= c.vocab_size) return FieldError(source, "bos_token_id", "is >= vocab_size");
  if (c.eos_token_id >= c.vocab_size) return FieldError(source, "eos_token_id", "is >= vocab_size");

  if (auto it = j.find("rms_norm_eps"); it != j.end()) {
    if (!it->is_number() || it->get<double>() <= 0) {
      return FieldError(source, "rms_norm_eps", "must be a positive number");
    }
    c.rms_norm_eps = it->get<double>();
  }
  if (auto it = j.find("rope_theta"); it != j.end()) {
    if (!it->is_number() || it->get<double>() <= 0) {
      return FieldError(source, "rope_theta", "must be a positive number");
    }
    c.rope_theta = it->get<double>();
  }
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) return FieldError(source, "tie_word_embeddings", "must be a boolean");
    c.tie_word_embeddings = it->get<bool>();
  }
  if (auto it = j.find("sliding_window"); it != j.end() && !it->is_null()) {
    return FieldError(source, "sliding_window",
                      "is set; sliding-window attention is not supported (it must be null)");
  }
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    if (!it->is_string() || it->get<std::string>() != "silu") {
      return FieldError(source, "hidden_act", "must be 'silu'");
    }
  }
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    return FieldError(source, "rope_scaling", "is set; RoPE scaling is not supported");
  }
  // Every size derived from these (q_dim and kv_dim as int, parameter and byte counts as
  // int64) must be representable: a config that overflows them is refused, not computed.
  const double q_dim = static_cast<double>(c.num_attention_heads) * c.head_dim;
  if (q_dim > kMaxDerivedDim) {
    return FieldError(source, "head_dim",
                      absl::StrCat("x num_attention_heads (", c.num_attention_heads, " x ",
                                   c.head_dim, ") exceeds ", kMaxDerivedDim));
  }
  const double h = c.hidden_size, e = c.num_local_experts;
  const double per_layer = h * q_dim * 4 + 2 * h + e * h + e * 3 * h * c.intermediate_size;
  const double total = 2.0 * c.vocab_size * h + c.num_hidden_layers * per_layer + h;
  if (total > kMaxParams) {
    return FieldError(source, "hidden_size",
                      absl::StrCat("and the other sizes give ", total, " parameters, more than ",
                                   kMaxParams, " (overflow in size arithmetic)"));
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseModelConfig(ss.str(), path);
}

absl::StatusOr<ModelConfig> ModelPreset(std::string_view name) {
  ModelConfig c;
  c.num_local_experts = 8;
  c.num_experts_per_tok = 2;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  if (name == "mixtral-8x7b") {
    c.hidden_size = 4096;
    c.intermediate_size = 14336;
    c.num_hidden_layers = 32;
    c.num_attention_heads = 32;
    c.vocab_size = 32000;
    c.max_position_embeddings = 32768;
  } else if (name == "mixtral-8x22b") {
    c.hidden_size = 6144;
    c.intermediate_size = 16384;
    c.num_hidden_layers = 56;
    c.num_attention_heads = 48;
    c.vocab_size = 32768;
    c.max_position_embeddings = 65536;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--preset: ", std::string(name), " is not a known model (mixtral-8x7b, mixtral-8x22b)"));
  }
  return c;
}

}  // namespace switchyard
