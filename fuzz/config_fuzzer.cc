// Fuzzes ParseModelConfig (model/config.h), the parser behind LoadModelConfig: the input is
// the text of a config.json. A parsed config is checked against what ParseModelConfig
// promises, and its derived sizes are computed as the runtime computes them for every loaded
// model (q_dim/kv_dim size the attention buffers and KV cache; the parameter counts feed
// `switchyard inspect`, GetModelInfo and the placement planner). Errors must be
// kInvalidArgument.
#include <cstdint>
#include <string>

#include "fuzz/fuzz_common.h"
#include "model/config.h"

namespace sy = switchyard;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto parsed = sy::ParseModelConfig(text, "config.json");
  sy::fuzz::Verbose("ParseModelConfig", parsed.status());
  if (!parsed.ok()) {
    sy::fuzz::CheckInvalidArgument(parsed.status(), "ParseModelConfig");
    SY_FUZZ_CHECK(parsed.status().message().rfind("config.json: ", 0) == 0,
                  "error does not name the source: " + parsed.status().ToString());
    return 0;
  }
  const sy::ModelConfig& c = *parsed;
  SY_FUZZ_CHECK(c.model_type == "mixtral", c.model_type);
  SY_FUZZ_CHECK(c.hidden_size > 0 && c.intermediate_size > 0 && c.num_hidden_layers > 0 &&
                    c.num_attention_heads > 0 && c.num_key_value_heads > 0 && c.head_dim > 0 &&
                    c.num_local_experts > 0 && c.num_experts_per_tok > 0 && c.vocab_size > 0 &&
                    c.max_position_embeddings > 0,
                "a size is not positive");
  SY_FUZZ_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, "kv heads");
  SY_FUZZ_CHECK(c.head_dim % 2 == 0, "head_dim odd");
  SY_FUZZ_CHECK(c.num_experts_per_tok <= c.num_local_experts, "top-k");
  SY_FUZZ_CHECK(c.bos_token_id >= 0 && c.bos_token_id < c.vocab_size, "bos");
  SY_FUZZ_CHECK(c.eos_token_id >= 0 && c.eos_token_id < c.vocab_size, "eos");
  SY_FUZZ_CHECK(c.rms_norm_eps > 0 && c.rope_theta > 0, "eps/theta");

  // Derived sizes, as ModelWeights, the executors and the model session compute them.
  // Summed unsigned (wrapping is defined), so any overflow reported is the project's own.
  volatile uint64_t sink = 0;
  sink = sink + static_cast<uint64_t>(c.q_dim());
  sink = sink + static_cast<uint64_t>(c.kv_dim());
  sink = sink + static_cast<uint64_t>(c.AttentionParamsPerLayer());
  sink = sink + static_cast<uint64_t>(c.ExpertParams());
  sink = sink + static_cast<uint64_t>(c.LayerParams());
  sink = sink + static_cast<uint64_t>(c.TotalParams());
  sink = sink + static_cast<uint64_t>(c.ActiveParamsPerToken());
  (void)sink;
  return 0;
}
