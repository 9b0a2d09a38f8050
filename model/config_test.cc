#include "model/config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kSource[] = "test/config.json";

// A valid Mixtral config (brown-moe's shape) that each refusal test changes in one field.
json BaseConfig() {
  return json{{"model_type", "mixtral"},   {"vocab_size", 4096},
              {"hidden_size", 256},        {"intermediate_size", 512},
              {"num_hidden_layers", 4},    {"num_attention_heads", 8},
              {"num_key_value_heads", 2},  {"num_local_experts", 8},
              {"num_experts_per_tok", 2},  {"max_position_embeddings", 1024},
              {"rms_norm_eps", 1e-5},      {"rope_theta", 1e6},
              {"sliding_window", nullptr}, {"tie_word_embeddings", false},
              {"bos_token_id", 1},         {"eos_token_id", 2},
              {"hidden_act", "silu"}};
}

absl::StatusOr<ModelConfig> Parse(const json& j) { return ParseModelConfig(j.dump(), kSource); }

// Expects kInvalidArgument naming the source and the field.
void ExpectRefused(const json& j, const std::string& field, const std::string& detail = "") {
  auto cfg = Parse(j);
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument) << j.dump();
  EXPECT_THAT(cfg.status().message(),
              AllOf(HasSubstr(kSource), HasSubstr("'" + field + "'"), HasSubstr(detail)))
      << j.dump();
}

TEST(ModelConfigTest, LoadsBrownMoe) {
  auto cfg = LoadModelConfig(SWITCHYARD_SOURCE_ROOT "/models/brown-moe/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->model_type, "mixtral");
  EXPECT_EQ(cfg->hidden_size, 256);
  EXPECT_EQ(cfg->intermediate_size, 512);
  EXPECT_EQ(cfg->num_hidden_layers, 4);
  EXPECT_EQ(cfg->num_attention_heads, 8);
  EXPECT_EQ(cfg->num_key_value_heads, 2);
  EXPECT_EQ(cfg->head_dim, 32);
  EXPECT_EQ(cfg->q_dim(), 256);
  EXPECT_EQ(cfg->kv_dim(), 64);
  EXPECT_EQ(cfg->num_local_experts, 8);
  EXPECT_EQ(cfg->num_experts_per_tok, 2);
  EXPECT_EQ(cfg->vocab_size, 4096);
  EXPECT_EQ(cfg->max_position_embeddings, 1024);
  EXPECT_FLOAT_EQ(cfg->rms_norm_eps, 1e-5f);
  EXPECT_DOUBLE_EQ(cfg->rope_theta, 1e6);
  EXPECT_FALSE(cfg->tie_word_embeddings);
  EXPECT_EQ(cfg->bos_token_id, 1);
  EXPECT_EQ(cfg->eos_token_id, 2);
}

TEST(ModelConfigTest, LoadsTinyOdd) {
  auto cfg = LoadModelConfig(SWITCHYARD_SOURCE_ROOT "/models/tiny-odd/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->hidden_size, 96);
  EXPECT_EQ(cfg->intermediate_size, 144);
  EXPECT_EQ(cfg->num_hidden_layers, 3);
  EXPECT_EQ(cfg->num_attention_heads, 4);
  EXPECT_EQ(cfg->head_dim, 24);  // 96 / 4
  EXPECT_EQ(cfg->num_key_value_heads, 1);
  EXPECT_EQ(cfg->kv_dim(), 24);
  EXPECT_EQ(cfg->num_local_experts, 6);
  EXPECT_EQ(cfg->num_experts_per_tok, 3);
  EXPECT_EQ(cfg->max_position_embeddings, 512);
}

TEST(ModelConfigTest, MissingFileIsNotFound) {
  const std::string path = SWITCHYARD_SOURCE_ROOT "/models/no-such-model/config.json";
  auto cfg = LoadModelConfig(path);
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(cfg.status().message(), HasSubstr(path));
}

TEST(ModelConfigTest, ExplicitHeadDimIsHonoured) {
  json j = BaseConfig();
  j["head_dim"] = 64;  // not hidden_size / heads (32)
  auto cfg = Parse(j);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->head_dim, 64);
  EXPECT_EQ(cfg->q_dim(), 512);
  EXPECT_EQ(cfg->kv_dim(), 128);

  // With head_dim given, hidden_size need not be a multiple of the head count.
  j["hidden_size"] = 100;
  cfg = Parse(j);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->head_dim, 64);

  j["head_dim"] = nullptr;  // null means "derive it", which now fails
  ExpectRefused(j, "hidden_size", "multiple of num_attention_heads");
}

// Found by fuzz/config_fuzzer: sizes each in range whose products overflow q_dim (int) or the
// parameter counts (int64) are refused, naming the field.
TEST(ModelConfigTest, SizesWhoseProductsOverflowAreRefused) {
  json j = BaseConfig();
  j["head_dim"] = 1 << 30;
  ExpectRefused(j, "head_dim", "exceeds");
  j = BaseConfig();
  j["hidden_size"] = 2147483646;
  j["intermediate_size"] = 2147483647;
  j["head_dim"] = 64;
  ExpectRefused(j, "hidden_size", "parameters");
  j = BaseConfig();
  j["hidden_size"] = 1000000000;
  j["head_dim"] = 2;
  j["vocab_size"] = 1000000000;
  ExpectRefused(j, "hidden_size", "overflow");
}

TEST(ModelConfigTest, DefaultsForOptionalFields) {
  json j = BaseConfig();
  for (const char* f :
       {"num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta",
        "sliding_window", "tie_word_embeddings", "bos_token_id", "eos_token_id", "hidden_act"}) {
    j.erase(f);
  }
  auto cfg = Parse(j);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->num_key_value_heads, 8);  // plain multi-head attention
  EXPECT_GT(cfg->max_position_embeddings, 0);
  EXPECT_FLOAT_EQ(cfg->rms_norm_eps, 1e-5f);
  EXPECT_DOUBLE_EQ(cfg->rope_theta, 1e6);
  EXPECT_FALSE(cfg->tie_word_embeddings);
  EXPECT_EQ(cfg->bos_token_id, 1);
  EXPECT_EQ(cfg->eos_token_id, 2);
}

TEST(ModelConfigTest, RefusesOtherModelType) {
  json j = BaseConfig();
  j["model_type"] = "llama";
  ExpectRefused(j, "model_type", "'llama'");
  j.erase("model_type");
  ExpectRefused(j, "model_type", "missing");
}

TEST(ModelConfigTest, RefusesSlidingWindow) {
  json j = BaseConfig();
  j["sliding_window"] = 4096;
  ExpectRefused(j, "sliding_window", "not supported");
}

TEST(ModelConfigTest, RefusesMissingHiddenSize) {
  json j = BaseConfig();
  j.erase("hidden_size");
  ExpectRefused(j, "hidden_size", "missing");
  j["hidden_size"] = nullptr;
  ExpectRefused(j, "hidden_size", "missing");
}

TEST(ModelConfigTest, RefusesNonIntegerHiddenSize) {
  for (const json& v : {json(256.5), json("256"), json(true), json(256.0)}) {
    json j = BaseConfig();
    j["hidden_size"] = v;
    ExpectRefused(j, "hidden_size", "must be an integer");
  }
}

TEST(ModelConfigTest, RefusesNonPositiveOrHugeSizes) {
  json j = BaseConfig();
  j["hidden_size"] = 0;
  ExpectRefused(j, "hidden_size", "must be positive");
  j["hidden_size"] = -256;
  ExpectRefused(j, "hidden_size", "out of range");
  j["hidden_size"] = int64_t{1} << 40;
  ExpectRefused(j, "hidden_size", "out of range");
}

TEST(ModelConfigTest, RefusesTopKAboveExpertCount) {
  json j = BaseConfig();
  j["num_experts_per_tok"] = 9;
  ExpectRefused(j, "num_experts_per_tok", "exceeds num_local_experts (8)");
  j["num_experts_per_tok"] = 8;  // all experts is allowed
  EXPECT_TRUE(Parse(j).ok());
}

TEST(ModelConfigTest, RefusesKvHeadsNotDividingHeads) {
  json j = BaseConfig();
  j["num_key_value_heads"] = 3;
  ExpectRefused(j, "num_key_value_heads", "must divide num_attention_heads (8)");
  j["num_key_value_heads"] = 0;
  ExpectRefused(j, "num_key_value_heads", "must be positive");
}

TEST(ModelConfigTest, RefusesOtherUnsupportedSettings) {
  json j = BaseConfig();
  j["hidden_act"] = "gelu";
  ExpectRefused(j, "hidden_act", "silu");

  j = BaseConfig();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ExpectRefused(j, "rope_scaling", "not supported");

  j = BaseConfig();
  j["head_dim"] = 33;
  ExpectRefused(j, "head_dim", "even");

  j = BaseConfig();
  j["rms_norm_eps"] = -1;
  ExpectRefused(j, "rms_norm_eps", "positive");

  j = BaseConfig();
  j["eos_token_id"] = 4096;
  ExpectRefused(j, "eos_token_id", "vocab_size");

  j = BaseConfig();
  j["tie_word_embeddings"] = "yes";
  ExpectRefused(j, "tie_word_embeddings", "boolean");
}

TEST(ModelConfigTest, RefusesInvalidJson) {
  for (const std::string text : {"{\"model_type\": \"mixtral\",", "[1, 2]", "", "42"}) {
    auto cfg = ParseModelConfig(text, kSource);
    EXPECT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(cfg.status().message(), AllOf(HasSubstr(kSource), HasSubstr("JSON"))) << text;
  }
}

TEST(ModelConfigTest, ParameterCountsForBrownMoe) {
  auto cfg = LoadModelConfig(SWITCHYARD_SOURCE_ROOT "/models/brown-moe/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  // By hand, hidden h = 256, FFN f = 512, 8 query heads and 2 KV heads of 32, 8 experts:
  //   attention: q,o 256x256 each, k,v 256x64 each, two norms of 256
  //              = 2*65536 + 2*16384 + 512                      =   164,352
  //   one expert: w1, w3 512x256, w2 256x512 = 3*131072         =   393,216
  //   router: 8x256                                              =     2,048
  //   layer: 164,352 + 2,048 + 8*393,216                         = 3,312,128
  //   embeddings and lm_head: 4096x256 each                      = 1,048,576 each
  //   total: 4 layers + embed + lm_head + final norm 256
  //        = 13,248,512 + 2,097,152 + 256                        = 15,345,920
  //   active: per layer 164,352 + 2,048 + 2*393,216 = 952,832;
  //        4 layers + final norm + lm_head = 3,811,328 + 256 + 1,048,576 = 4,860,160
  EXPECT_EQ(cfg->AttentionParamsPerLayer(), 164352);
  EXPECT_EQ(cfg->ExpertParams(), 393216);
  EXPECT_EQ(cfg->LayerParams(), 3312128);
  EXPECT_EQ(cfg->TotalParams(), 15345920);
  EXPECT_EQ(cfg->ActiveParamsPerToken(), 4860160);

  // Tied embeddings store one matrix, not two.
  ModelConfig tied = *cfg;
  tied.tie_word_embeddings = true;
  EXPECT_EQ(tied.TotalParams(), 15345920 - 1048576);
}

}  // namespace
}  // namespace switchyard
