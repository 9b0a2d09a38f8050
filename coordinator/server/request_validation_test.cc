#include "coordinator/server/request_validation.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using testing::HasSubstr;

const std::string kRoot = SWITCHYARD_SOURCE_ROOT;

class RequestValidationTest : public testing::Test {
 protected:
  void SetUp() override {
    auto tok = Tokenizer::Load(kRoot + "/models/brown-moe/tokenizer.model", 1, 2);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(tok).value();
    auto cfg = LoadModelConfig(kRoot + "/models/brown-moe/config.json");
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    cfg_ = *cfg;
    ctx_.tokenizer = tok_.get();
    ctx_.config = &cfg_;
    ctx_.model_name = "brown-moe";
  }

  void ExpectInvalid(const GenerationParams& p, const std::string& field) {
    absl::StatusOr<GenerateRequest> r = BuildGenerateRequest(p, ctx_);
    ASSERT_FALSE(r.ok()) << "expected an error naming " << field;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    // Every refusal starts with the field it concerns.
    EXPECT_THAT(std::string(r.status().message()), testing::StartsWith(field));
  }

  std::unique_ptr<Tokenizer> tok_;
  ModelConfig cfg_;
  ValidationContext ctx_;
};

TEST_F(RequestValidationTest, TextIsTokenizedWithBosAndDefaultsApply) {
  GenerationParams p;
  p.text = "The jury said";
  absl::StatusOr<GenerateRequest> r = BuildGenerateRequest(p, ctx_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_ids, tok_->Encode("The jury said", true));
  EXPECT_EQ(r->prompt_ids.front(), 1);
  EXPECT_EQ(r->max_tokens, 64);
  EXPECT_EQ(r->sampling.temperature, 0.0f);
  EXPECT_EQ(r->sampling.top_k, 0);
  EXPECT_EQ(r->sampling.top_p, 1.0f);
  EXPECT_EQ(r->sampling.seed, 0u);
  EXPECT_TRUE(r->stop.empty());
  EXPECT_TRUE(r->stop_at_eos);
}

TEST_F(RequestValidationTest, TokenIdsAreUsedAsGivenAndParametersPassThrough) {
  GenerationParams p;
  p.model = "brown-moe";
  p.token_ids = {1, 50, 4095};
  p.max_tokens = 1021;  // exactly fills the context of 1024
  p.temperature = 0.7;
  p.top_k = 40;
  p.top_p = 0.9;
  p.seed = 1234567890123ull;
  p.stop = {"\n", std::string(64, 'x')};
  p.ignore_eos = true;
  absl::StatusOr<GenerateRequest> r = BuildGenerateRequest(p, ctx_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_ids, p.token_ids);
  EXPECT_EQ(r->max_tokens, 1021);
  EXPECT_FLOAT_EQ(r->sampling.temperature, 0.7f);
  EXPECT_EQ(r->sampling.top_k, 40);
  EXPECT_FLOAT_EQ(r->sampling.top_p, 0.9f);
  EXPECT_EQ(r->sampling.seed, 1234567890123ull);
  EXPECT_EQ(r->stop, p.stop);
  EXPECT_FALSE(r->stop_at_eos);
}

TEST_F(RequestValidationTest, TopKAboveVocabMeansNoFilter) {
  GenerationParams p;
  p.text = "a";
  p.top_k = 1'000'000'000'000;
  absl::StatusOr<GenerateRequest> r = BuildGenerateRequest(p, ctx_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sampling.top_k, 0);
}

TEST_F(RequestValidationTest, EachBadFieldIsNamed) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  auto text = [](const std::string& t) {
    GenerationParams p;
    p.text = t;
    return p;
  };
  GenerationParams p;

  ExpectInvalid(text(""), "text");
  ExpectInvalid(GenerationParams{}, "text, token_ids:");
  p = text("a");
  p.token_ids = {1};
  ExpectInvalid(p, "text, token_ids:");
  p = GenerationParams{};
  p.token_ids = {1, 4096};
  ExpectInvalid(p, "token_ids[1]");
  p.token_ids = {-3};
  ExpectInvalid(p, "token_ids[0]");
  p = text("a");
  p.max_tokens = 1024;
  ExpectInvalid(p, "max_tokens");
  p.max_tokens = 0;
  ExpectInvalid(p, "max_tokens");
  p = GenerationParams{};
  p.token_ids.assign(1024, 5);
  ExpectInvalid(p, "token_ids");
  for (double t : {-0.1, nan, inf, -inf}) {
    p = text("a");
    p.temperature = t;
    ExpectInvalid(p, "temperature");
  }
  for (double t : {0.0, -0.5, 1.0001, nan, inf}) {
    p = text("a");
    p.top_p = t;
    ExpectInvalid(p, "top_p");
  }
  p = text("a");
  p.top_k = -1;
  ExpectInvalid(p, "top_k");
  p = text("a");
  p.stop.assign(9, "x");
  ExpectInvalid(p, "stop");
  p.stop = {"ok", ""};
  ExpectInvalid(p, "stop[1]");
  p.stop = {std::string(65, 'y')};
  ExpectInvalid(p, "stop[0]");
  p = text("a");
  p.model = "mixtral-8x7b";
  ExpectInvalid(p, "model");
  // Values a double holds but the sampler's float does not.
  p = text("a");
  p.temperature = 1e300;  // inf as a float
  ExpectInvalid(p, "temperature");
  p = text("a");
  p.top_p = 1e-300;  // zero as a float
  ExpectInvalid(p, "top_p");
  // The refused value is printed with the digits that tell it apart from 1.
  p = text("a");
  p.top_p = 1.0000001;
  EXPECT_THAT(std::string(BuildGenerateRequest(p, ctx_).status().message()),
              testing::EndsWith("got 1.0000001"));
  p.top_p = 1.5;
  EXPECT_THAT(std::string(BuildGenerateRequest(p, ctx_).status().message()),
              testing::EndsWith("got 1.5"));
  p = text("a");
  p.max_tokens = std::numeric_limits<int64_t>::max();  // the sum with the prompt overflows
  ExpectInvalid(p, "max_tokens");
  p.max_tokens = std::numeric_limits<int64_t>::max() - 1;
  ExpectInvalid(p, "max_tokens");
}

TEST_F(RequestValidationTest, OversizedTextIsRefusedBeforeTokenizing) {
  const int64_t limit = MaxPromptBytes(ctx_);
  EXPECT_EQ(limit, int64_t{cfg_.max_position_embeddings} * tok_->max_piece_bytes());
  GenerationParams p;
  p.text = std::string(4 << 20, 'a');
  absl::StatusOr<GenerateRequest> r = BuildGenerateRequest(p, ctx_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(std::string(r.status().message()),
            absl::StrCat("text: 4194304 bytes; the model's context of ",
                         cfg_.max_position_embeddings, " tokens holds at most ", limit,
                         " bytes of text"));
  EXPECT_TRUE(CheckPromptBytes(limit, ctx_).ok());
  EXPECT_FALSE(CheckPromptBytes(limit + 1, ctx_).ok());
  // Within the byte limit but over the context in tokens: tokenized, then refused by count.
  p.text = std::string(limit, ' ');
  for (int64_t i = 0; i + 1 < limit; i += 2) (*p.text)[i] = 'x';
  r = BuildGenerateRequest(p, ctx_);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), testing::StartsWith("text: the prompt is "));
  // An explicit limit replaces the derived one.
  ctx_.limits.max_prompt_bytes = 10;
  p.text = "The jury said that";
  r = BuildGenerateRequest(p, ctx_);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("at most 10 bytes"));
}

}  // namespace
}  // namespace switchyard
