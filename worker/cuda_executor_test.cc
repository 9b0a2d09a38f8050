// The CUDA executor on models/brown-moe against the golden fixture (tests/data/brown-moe.*),
// an independent fp32 PyTorch run. Skips with "no CUDA device" where there is none.
//
// Tolerances. tests/data/README.md hopes for max |logit error| <= 2e-2 on the GPU path, but no
// design with bf16 GEMM inputs and a bf16 KV cache reaches that on brown-moe: one bf16 rounding
// of the normed activations alone gives 0.016 over 17 tokens, and the 200-token sequence has a
// position whose router top-2 choice flips under bf16 noise (error 0.45 there). The numbers
// come from worker/cuda_numerics_test.cc, which runs the CPU kernels with values rounded to
// bf16 exactly where this executor rounds (17 tokens: max 0.031; 200 tokens: 199 positions
// <= 0.047, one at 0.45; greedy continuations identical). So:
// - logits: per position max |gpu - ref| <= kLogitTol (7.5e-2, 1.6x the emulated worst), at
//   all but 3% of the positions (0 of 17, 6 of 200: router near-ties);
// - greedy tokens: identical, except that a divergence is accepted at a step where the GPU's
//   own logits put the fixture's token within kTieTol of its choice (a near tie, checked).
#include "worker/cuda_executor.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "common/npy.h"
#include "gtest/gtest.h"
#include "worker/cuda_test_tolerances.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

const std::string kRoot = SWITCHYARD_SOURCE_ROOT;
using cuda_test::kLogitTol;
using cuda_test::kOutlierFraction;
using cuda_test::kTieTol;
constexpr int kBlockSize = 16;
constexpr int kBlocksPerSeq = 16;  // 256 positions per sequence

class CudaExecutorTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
    const std::string dir = kRoot + "/models/brown-moe";
    auto cfg = LoadModelConfig(dir + "/config.json");
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    cfg_ = *cfg;
    auto ckpt = SafetensorsCheckpoint::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ckpt_ = std::move(ckpt).value();
    auto w = ModelWeights::Load(*ckpt_, cfg_, ShardSpec::Whole(cfg_), {.show_progress = false});
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = std::move(w).value();
    auto exec = MakeCudaExecutor(
        *weights_, {.num_blocks = 8 * kBlocksPerSeq, .block_size = kBlockSize},
        {.max_tokens = 256, .max_context = kBlockSize * kBlocksPerSeq}, CudaExecutorOptions{});
    ASSERT_TRUE(exec.ok()) << exec.status();
    exec_ = std::move(exec).value();
    std::ifstream in(kRoot + "/tests/data/brown-moe.json");
    fixture_ = nlohmann::json::parse(in);
  }

  // Sequence slot i owns blocks [i * kBlocksPerSeq, (i + 1) * kBlocksPerSeq).
  static std::vector<int32_t> Table(int slot) {
    std::vector<int32_t> t(kBlocksPerSeq);
    for (int b = 0; b < kBlocksPerSeq; ++b) t[b] = slot * kBlocksPerSeq + b;
    return t;
  }

  ModelConfig cfg_;
  std::unique_ptr<SafetensorsCheckpoint> ckpt_;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<CudaStepExecutor> exec_;
  nlohmann::json fixture_;
};

struct Generation {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // the logits each token was chosen from
};

// Checks a greedy continuation against the fixture as the header describes.
void ExpectGreedyMatches(const Generation& got, const std::vector<int32_t>& want,
                         const std::string& prompt) {
  ASSERT_EQ(got.tokens.size(), want.size()) << prompt;
  for (size_t i = 0; i < want.size(); ++i) {
    if (got.tokens[i] == want[i]) continue;
    const std::vector<float>& l = got.logits[i];
    const float gap = l[got.tokens[i]] - l[want[i]];
    EXPECT_LE(gap, kTieTol) << prompt << ": token " << i << " is " << got.tokens[i] << ", want "
                            << want[i] << ", and not at a near tie";
    std::printf("note: '%s' diverges at token %zu at a near tie (GPU gap %.4f)\n", prompt.c_str(),
                i, gap);
    return;  // the continuations differ from here on
  }
}

TEST_F(CudaExecutorTest, GreedyContinuationsMatchFixtureOneAtATime) {
  const int V = cfg_.vocab_size;
  for (const auto& g : fixture_["generate"]) {
    const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = g["greedy_ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> table = Table(0);
    Generation got;
    StepPlan plan;
    StepResult result;
    plan.AddSequence({.seq_id = 1, .start_pos = 0, .logits = LogitsMode::kLast, .sample = true},
                     prompt, table);
    int pos = static_cast<int>(prompt.size());
    while (got.tokens.size() < want.size()) {
      ASSERT_TRUE(exec_->Execute(plan, &result).ok());
      const int32_t next = result.next_tokens[0];
      got.tokens.push_back(next);
      got.logits.emplace_back(result.logits.begin(), result.logits.begin() + V);
      plan.Clear();
      plan.AddSequence({.seq_id = 1,
                        .start_pos = pos++,
                        .logits = LogitsMode::kLast,
                        .sample = true,
                        .sample_index = got.tokens.size()},
                       std::vector<int32_t>{next}, table);
    }
    ExpectGreedyMatches(got, want, g["prompt"]);
  }
  // Decode at batch 1: warm-up, then a captured graph replayed.
  EXPECT_GE(exec_->stats().graph_captures, 1);
  EXPECT_EQ(exec_->stats().graph_failures, 0);
  EXPECT_GT(exec_->stats().graph_launches, 10);
}

TEST_F(CudaExecutorTest, BatchedGreedyMatchesFixtureAcrossBatchSizes) {
  const int V = cfg_.vocab_size;
  const auto& gens = fixture_["generate"];
  const int n = static_cast<int>(gens.size());
  std::vector<std::vector<int32_t>> prompts(n), want(n);
  std::vector<Generation> got(n);
  StepPlan plan;
  StepResult result;
  for (int i = 0; i < n; ++i) {  // one prefill step for every prompt
    prompts[i] = gens[i]["prompt_ids"].get<std::vector<int32_t>>();
    want[i] = gens[i]["greedy_ids"].get<std::vector<int32_t>>();
    plan.AddSequence({.seq_id = i, .start_pos = 0, .logits = LogitsMode::kLast, .sample = true},
                     prompts[i], Table(i));
  }
  // Decode steps: sequences leave as they reach their fixture length, so the batch shrinks
  // (3 -> 2 for brown-moe) and each batch size gets its own graph.
  for (;;) {
    ASSERT_TRUE(exec_->Execute(plan, &result).ok());
    std::vector<int> live;
    for (size_t k = 0; k < plan.seqs.size(); ++k) {
      const int i = static_cast<int>(plan.seqs[k].seq_id);
      got[i].tokens.push_back(result.next_tokens[k]);
      const auto row = result.SeqLogits(static_cast<int>(k), V);
      got[i].logits.emplace_back(row.begin(), row.end());
      if (got[i].tokens.size() < want[i].size()) live.push_back(i);
    }
    if (live.empty()) break;
    plan.Clear();
    for (int i : live) {
      const int pos = static_cast<int>(prompts[i].size() + got[i].tokens.size()) - 1;
      plan.AddSequence({.seq_id = i,
                        .start_pos = pos,
                        .logits = LogitsMode::kLast,
                        .sample = true,
                        .sample_index = got[i].tokens.size()},
                       std::vector<int32_t>{got[i].tokens.back()}, Table(i));
    }
  }
  for (int i = 0; i < n; ++i) {
    ExpectGreedyMatches(got[i], want[i], gens[i]["prompt"]);
  }
  EXPECT_GE(exec_->stats().graph_captures, 2);
}

TEST_F(CudaExecutorTest, LogitsWithinTolerance) {
  const int V = cfg_.vocab_size;
  for (const auto& sc : fixture_["score"]) {
    const auto tokens = sc["tokens"].get<std::vector<int32_t>>();
    auto ref = ReadNpyF32(kRoot + "/tests/data/" + sc["logits_file"].get<std::string>());
    ASSERT_TRUE(ref.ok()) << ref.status();
    ASSERT_EQ(ref->shape, (std::vector<int64_t>{static_cast<int64_t>(tokens.size()), V}));
    // Whole sequence in one step, then in chunks of 48 (prefill over an existing context).
    const int n = static_cast<int>(tokens.size());
    for (int chunk : {n, 48}) {
      std::vector<double> err(n, 0.0);  // per position
      for (int start = 0; start < n; start += chunk) {
        const int len = std::min(chunk, n - start);
        StepPlan plan;
        StepResult result;
        plan.AddSequence({.seq_id = 9, .start_pos = start, .logits = LogitsMode::kAll},
                         std::span<const int32_t>(tokens).subspan(start, len), Table(7));
        ASSERT_TRUE(exec_->Execute(plan, &result).ok());
        ASSERT_EQ(result.logits_rows[0], len);
        const auto got = result.SeqLogits(0, V);
        for (int r = 0; r < len; ++r) {
          for (int v = 0; v < V; ++v) {
            const size_t at = static_cast<size_t>(start + r) * V + v;
            err[start + r] = std::max<double>(
                err[start + r], std::abs(got[static_cast<size_t>(r) * V + v] - ref->data[at]));
          }
        }
      }
      const int outliers = static_cast<int>(
          std::count_if(err.begin(), err.end(), [](double e) { return e > kLogitTol; }));
      const double worst = *std::max_element(err.begin(), err.end());
      EXPECT_LE(outliers, static_cast<int>(kOutlierFraction * n))
          << sc["logits_file"] << " in chunks of " << chunk << ": max error " << worst;
      std::printf("%s, chunks of %d: max |logit error| %.5f, %d positions over %.3f\n",
                  sc["logits_file"].get<std::string>().c_str(), chunk, worst, outliers, kLogitTol);
    }
  }
}

TEST_F(CudaExecutorTest, RejectsBadPlansAndStaysUsable) {
  StepPlan plan;
  StepResult result;
  plan.AddSequence({.seq_id = 1, .start_pos = 0, .sample = true}, std::vector<int32_t>{1, 2, 3},
                   std::vector<int32_t>{100000});  // no such KV block
  EXPECT_EQ(exec_->Execute(plan, &result).code(), absl::StatusCode::kInvalidArgument);
  plan.Clear();
  plan.AddSequence({.seq_id = 1, .start_pos = 0, .sample = true},
                   std::vector<int32_t>{1, cfg_.vocab_size}, Table(0));  // token out of range
  EXPECT_EQ(exec_->Execute(plan, &result).code(), absl::StatusCode::kInvalidArgument);
  plan.Clear();
  plan.AddSequence({.seq_id = 1, .start_pos = 0, .sample = true}, std::vector<int32_t>{1, 2, 3},
                   Table(0));
  ASSERT_TRUE(exec_->Execute(plan, &result).ok());
  EXPECT_GE(result.next_tokens[0], 0);
}

}  // namespace
}  // namespace switchyard
