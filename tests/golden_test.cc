// Golden tests: Switchyard's CPU path against an independent fp32 PyTorch implementation of
// Mixtral (tests/data/*.json, *.npy). Tolerances: logits max-abs error <= 1e-3, greedy ids
// identical, perplexity within 0.1%.
#include <cmath>
#include <fstream>
#include <sstream>

#include "common/npy.h"
#include "coordinator/model_session.h"
#include "coordinator/perplexity.h"
#include "coordinator/sequence_runner.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

const std::string kRoot = SWITCHYARD_SOURCE_ROOT;

class GoldenTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    // A small step limit makes the 257-token score case cross prefill chunks.
    auto s = ModelSession::Open({.model_dir = kRoot + "/models/" + GetParam(),
                                 .max_step_tokens = 100,
                                 .show_progress = false});
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = std::move(s).value();
    std::ifstream in(kRoot + "/tests/data/" + GetParam() + ".json");
    fixture_ = nlohmann::json::parse(in);
  }
  SequenceRunner Runner() {
    return SequenceRunner(session_->executor.get(), session_->allocator(0), session_->config);
  }
  std::unique_ptr<ModelSession> session_;
  nlohmann::json fixture_;
};

TEST_P(GoldenTest, GreedyContinuationsMatchTokenForToken) {
  SequenceRunner runner = Runner();
  for (const auto& g : fixture_["generate"]) {
    auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    auto want = g["greedy_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(session_->tokenizer->Encode(g["prompt"].get<std::string>(), true), prompt);
    auto out = runner.Generate(prompt, {.max_tokens = static_cast<int>(want.size())}, nullptr);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->tokens, want) << "prompt: " << g["prompt"];
    EXPECT_EQ(session_->tokenizer->Decode(out->tokens), g["greedy_text"].get<std::string>());
  }
}

TEST_P(GoldenTest, LogitsWithinTolerance) {
  SequenceRunner runner = Runner();
  const int V = session_->config.vocab_size;
  for (const auto& sc : fixture_["score"]) {
    auto tokens = sc["tokens"].get<std::vector<int32_t>>();
    auto ref = ReadNpyF32(kRoot + "/tests/data/" + sc["logits_file"].get<std::string>());
    ASSERT_TRUE(ref.ok()) << ref.status();
    ASSERT_EQ(ref->shape, (std::vector<int64_t>{static_cast<int64_t>(tokens.size()), V}));
    double max_err = 0;
    int covered = 0;
    auto st = runner.Score(tokens, [&](int first, int rows, const float* logits) {
      for (int64_t i = 0; i < int64_t{rows} * V; ++i) {
        max_err = std::max<double>(max_err,
                                   std::abs(logits[i] - ref->data[int64_t{first} * V + i]));
      }
      covered += rows;
    });
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(covered, static_cast<int>(tokens.size()));
    EXPECT_LE(max_err, 1e-3) << sc["logits_file"];
  }
}

TEST_P(GoldenTest, PerplexityWithinPointOnePercent) {
  SequenceRunner runner = Runner();
  for (const auto& p : fixture_["perplexity"]) {
    std::ifstream in(kRoot + "/tests/data/" + p["file"].get<std::string>());
    std::stringstream ss;
    ss << in.rdbuf();
    auto tokens = session_->tokenizer->Encode(ss.str(), true);
    ASSERT_EQ(static_cast<int>(tokens.size()), p["tokens"].get<int>());
    PerplexityAccumulator acc(tokens, session_->config.vocab_size);
    ASSERT_TRUE(runner
                    .Score(tokens, [&](int first, int rows,
                                       const float* l) { acc.Add(first, rows, l); })
                    .ok());
    EXPECT_EQ(acc.count(), p["scored_tokens"].get<int>());
    const double want = p["perplexity"].get<double>();
    EXPECT_NEAR(acc.perplexity(), want, want * 1e-3);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenTest, testing::Values("brown-moe", "tiny-odd"));

class StopTest : public GoldenTest {};

TEST_P(StopTest, StopsAtEosAndAtMaxTokens) {
  SequenceRunner runner = Runner();
  // The first brown-moe fixture prompt ends its greedy continuation with EOS after 13 tokens.
  const auto& g = fixture_["generate"][0];
  auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
  auto want = g["greedy_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(want.back(), session_->config.eos_token_id);
  auto eos = runner.Generate(prompt, {.max_tokens = 100}, nullptr);
  ASSERT_TRUE(eos.ok());
  EXPECT_EQ(eos->finish, FinishReason::kEos);
  EXPECT_EQ(eos->tokens, want);
  auto len = runner.Generate(prompt, {.max_tokens = 5}, nullptr);
  ASSERT_TRUE(len.ok());
  EXPECT_EQ(len->finish, FinishReason::kLength);
  EXPECT_EQ(len->tokens, std::vector<int32_t>(want.begin(), want.begin() + 5));
  // Without the EOS stop, generation runs on to the limit.
  auto no_stop = runner.Generate(prompt, {.max_tokens = 20, .stop_at_eos = false}, nullptr);
  ASSERT_TRUE(no_stop.ok());
  EXPECT_EQ(no_stop->finish, FinishReason::kLength);
  EXPECT_EQ(no_stop->tokens.size(), 20u);
  // The KV pool is whole again after every run.
  EXPECT_EQ(session_->allocator(0)->free_blocks(), session_->allocator(0)->num_blocks());
}

TEST_P(StopTest, RefusesPromptOverTheContext) {
  SequenceRunner runner = Runner();
  std::vector<int32_t> prompt(session_->config.max_position_embeddings, 5);
  auto out = runner.Generate(prompt, {.max_tokens = 1}, nullptr);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session_->allocator(0)->free_blocks(), session_->allocator(0)->num_blocks());
}

TEST_P(StopTest, SeededSamplingIsReproducibleAndSeedDependent) {
  SequenceRunner runner = Runner();
  auto prompt = fixture_["generate"][1]["prompt_ids"].get<std::vector<int32_t>>();
  GenerateOptions opts{.max_tokens = 24, .sampling = {.temperature = 1.0f, .seed = 42}};
  auto a = runner.Generate(prompt, opts, nullptr);
  auto b = runner.Generate(prompt, opts, nullptr);
  opts.sampling.seed = 43;
  auto c = runner.Generate(prompt, opts, nullptr);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_NE(a->tokens, c->tokens);
}

INSTANTIATE_TEST_SUITE_P(BrownMoe, StopTest, testing::Values("brown-moe"));

}  // namespace
}  // namespace switchyard
