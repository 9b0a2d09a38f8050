// The worker's pieces without MPI: the plan rules (ValidatePlan, head rows), the micro-batch
// split, the head's bookkeeping, and the CPU stage backend driven micro-batch by micro-batch
// against one pass (and against LocalExecutor, the same orchestration over a group of one).
#include <memory>
#include <numeric>
#include <thread>

#include <omp.h>

#include "comm/self_communicator.h"
#include "common/cpu_threads.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/safetensors.h"
#include "model/config.h"
#include "worker/expert_parallel_moe.h"
#include "worker/local_executor.h"
#include "worker/stage_backend.h"
#include "worker/step_head.h"

namespace switchyard {
namespace {

using testing::HasSubstr;

SeqEntry Entry(int64_t id, int start, LogitsMode logits = LogitsMode::kNone, bool sample = false,
               int dp = 0) {
  return {.seq_id = id, .dp_rank = dp, .start_pos = start, .logits = logits, .sample = sample};
}

TEST(HeadRows, WhichRowsTheHeadComputesAndReturns) {
  SeqEntry s = Entry(1, 0);
  s.num_tokens = 5;
  EXPECT_EQ(HeadRows(s), 0);
  EXPECT_EQ(ReturnedLogitRows(s), 0);
  s.sample = true;
  EXPECT_EQ(HeadRows(s), 1);
  EXPECT_EQ(ReturnedLogitRows(s), 0);
  s.logits = LogitsMode::kLast;
  EXPECT_EQ(HeadRows(s), 1);
  EXPECT_EQ(ReturnedLogitRows(s), 1);
  s.logits = LogitsMode::kAll;
  EXPECT_EQ(HeadRows(s), 5);
  EXPECT_EQ(ReturnedLogitRows(s), 5);
  s.num_tokens = 0;
  EXPECT_EQ(HeadRows(s), 0);
  EXPECT_EQ(ReturnedLogitRows(s), 0);
}

class ValidatePlanTest : public testing::Test {
 protected:
  PlanLimits limits_{.vocab_size = 100, .dp_size = 2, .max_step_tokens = 8, .max_context = 40,
                     .num_blocks = 10, .block_size = 4};
  StepPlan plan_;
};

TEST_F(ValidatePlanTest, AcceptsAGoodPlan) {
  plan_.AddSequence(Entry(1, 0), std::vector<int32_t>{1, 2, 3, 4, 5}, std::vector<int32_t>{0, 1});
  plan_.AddSequence(Entry(2, 7, LogitsMode::kLast, true, 1), std::vector<int32_t>{9},
                    std::vector<int32_t>{2, 3});
  EXPECT_TRUE(ValidatePlan(plan_, limits_).ok());
}

TEST_F(ValidatePlanTest, NamesTheSequenceAndTheField) {
  struct Case {
    SeqEntry entry;
    std::vector<int32_t> tokens, blocks;
    const char* message;
  };
  const std::vector<Case> cases = {
      {Entry(3, 0, LogitsMode::kNone, false, 2), {1}, {0}, "sequence 3: dp_rank 2 outside [0, 2)"},
      {Entry(4, 0), {1, 100}, {0}, "sequence 4: token id 100 outside [0, 100)"},
      {Entry(5, 0), {-1}, {0}, "sequence 5: token id -1"},
      {Entry(6, 38), {1, 2, 3}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, "sequence 6 reaches position 41"},
      {Entry(7, 4), {1, 2, 3, 4, 5}, {0, 1}, "sequence 7 has 2 KV blocks, needs 3"},
      {Entry(8, 0), {1, 2}, {10}, "sequence 8: KV block id 10 outside [0, 10)"},
      {Entry(9, 0), {1}, {-1}, "sequence 9: KV block id -1"},
      {Entry(10, 0), {1, 2, 3, 4, 5, 6, 7, 8, 9}, {0, 1, 2}, "more than 8 tokens"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    StepPlan plan;
    plan.AddSequence(c.entry, c.tokens, c.blocks);
    const absl::Status st = ValidatePlan(plan, limits_);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(st.message(), HasSubstr(c.message));
  }
  // Offsets that do not describe a chunk (a hand-made plan).
  StepPlan bad;
  bad.AddSequence(Entry(11, 0), std::vector<int32_t>{1, 2}, std::vector<int32_t>{0});
  bad.seqs[0].token_offset = 1;
  EXPECT_THAT(ValidatePlan(bad, limits_).message(), HasSubstr("sequence 11: start_pos 0, tokens"));
  bad.seqs[0].token_offset = 0;
  bad.seqs[0].num_blocks = 2;
  EXPECT_THAT(ValidatePlan(bad, limits_).message(), HasSubstr("do not describe a chunk"));
}

TEST_F(ValidatePlanTest, CountsTokensPerDataParallelIndex) {
  // 6 + 6 tokens: over the limit of 8 on one index, fine across two.
  plan_.AddSequence(Entry(1, 0), std::vector<int32_t>(6, 1), std::vector<int32_t>{0, 1});
  plan_.AddSequence(Entry(2, 0, LogitsMode::kNone, false, 1), std::vector<int32_t>(6, 1),
                    std::vector<int32_t>{0, 1});
  EXPECT_TRUE(ValidatePlan(plan_, limits_).ok());
  plan_.seqs[1].dp_rank = 0;
  EXPECT_THAT(ValidatePlan(plan_, limits_).message(),
              HasSubstr("data-parallel rank 0 would get more than 8 tokens"));
}

std::vector<SeqEntry> Chunks(std::vector<int> sizes) {
  std::vector<SeqEntry> out;
  int offset = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    SeqEntry s = Entry(static_cast<int64_t>(i), 0);
    s.num_tokens = sizes[i];
    s.token_offset = offset;
    offset += sizes[i];
    out.push_back(s);
  }
  return out;
}

TEST(SplitMicroBatches, ContiguousCoveringAndBalanced) {
  std::vector<MicroBatch> mbs;
  for (int count : {1, 2, 3, 4}) {
    for (const std::vector<int>& sizes : std::vector<std::vector<int>>{
             {}, {1}, {5}, {1, 1, 1, 1, 1, 1, 1, 1}, {30, 1, 1, 1}, {3, 7, 2, 9, 4}}) {
      SCOPED_TRACE(testing::PrintToString(sizes) + " into " + std::to_string(count));
      const std::vector<SeqEntry> seqs = Chunks(sizes);
      SplitMicroBatches(seqs, count, &mbs);
      ASSERT_EQ(static_cast<int>(mbs.size()), count);
      int seq = 0, row = 0;
      for (const MicroBatch& mb : mbs) {
        EXPECT_EQ(mb.seq_begin, seq);
        EXPECT_EQ(mb.row0, row);
        int rows = 0;
        for (int i = mb.seq_begin; i < mb.seq_end; ++i) rows += seqs[i].num_tokens;
        EXPECT_EQ(mb.rows, rows);
        seq = mb.seq_end;
        row += rows;
      }
      EXPECT_EQ(seq, static_cast<int>(seqs.size()));
      EXPECT_EQ(row, std::accumulate(sizes.begin(), sizes.end(), 0));
      // Eight single tokens split evenly.
      if (sizes.size() == 8 && 8 % count == 0) {
        for (const MicroBatch& mb : mbs) EXPECT_EQ(mb.rows, 8 / count);
      }
    }
  }
}

TEST(StepHead, SamplesAndReturnsWhatEachSequenceAsked) {
  const int V = 4;
  StepPlan plan;
  plan.AddSequence(Entry(1, 0, LogitsMode::kAll), std::vector<int32_t>{0, 0, 0}, {});
  plan.AddSequence(Entry(2, 0, LogitsMode::kNone, true), std::vector<int32_t>{0, 0}, {});
  plan.AddSequence(Entry(3, 0, LogitsMode::kLast, true), std::vector<int32_t>{0}, {});
  plan.AddSequence(Entry(4, 0, LogitsMode::kLast, true), std::vector<int32_t>{}, {});
  plan.AddSequence(Entry(5, 0), std::vector<int32_t>{0, 0}, {});
  std::vector<int32_t> rows;
  StepHead::RowsForHead(plan, &rows);
  EXPECT_EQ(rows, (std::vector<int32_t>{0, 1, 2, 4, 5}));
  // Row r of the head's logits peaks at token (r + 1) % V, so greedy picks are visible.
  std::vector<float> logits(rows.size() * V, 0.0f);
  for (size_t r = 0; r < rows.size(); ++r) logits[r * V + (r + 1) % V] = 5.0f + r;
  StepHead head(V);
  StepResult result;
  head.Finish(plan, logits.data(), &result);
  EXPECT_EQ(result.next_tokens, (std::vector<int32_t>{-1, (3 + 1) % V, (4 + 1) % V, -1, -1}));
  EXPECT_EQ(result.logits_rows, (std::vector<int32_t>{3, 0, 1, 0, 0}));
  EXPECT_EQ(result.logits_offset[0], 0);
  EXPECT_EQ(result.logits_offset[2], 3);
  ASSERT_EQ(result.logits.size(), 4u * V);
  EXPECT_TRUE(std::equal(logits.begin(), logits.begin() + 3 * V, result.logits.begin()));
  EXPECT_TRUE(std::equal(logits.begin() + 4 * V, logits.begin() + 5 * V,
                         result.logits.begin() + 3 * V));
}

// The CPU backend over brown-moe: a step run as two micro-batches gives bit-identical results
// to one pass (every operation is row-independent), and LocalExecutor gives the same.
class CpuStageBackendTest : public testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = std::string(SWITCHYARD_SOURCE_ROOT) + "/models/brown-moe";
    cfg_ = *LoadModelConfig(dir + "/config.json");
    ckpt_ = std::move(SafetensorsCheckpoint::Open(dir)).value();
    weights_ = std::move(ModelWeights::Load(*ckpt_, cfg_, ShardSpec::Whole(cfg_), {})).value();
  }
  std::unique_ptr<StageBackend> Backend() {
    return MakeCpuStageBackend(*weights_, &self_, SingleRankRouting(cfg_),
                               {.num_layers = cfg_.num_hidden_layers, .num_blocks = 16,
                                .block_size = 16, .kv_dim = cfg_.kv_dim()},
                               {.max_tokens = 64, .max_context = 256});
  }
  StepPlan Plan() const {
    StepPlan plan;
    plan.AddSequence(Entry(1, 0, LogitsMode::kAll, true), std::vector<int32_t>{1, 50, 60, 70, 80},
                     std::vector<int32_t>{0});
    plan.AddSequence(Entry(2, 0, LogitsMode::kLast, true), std::vector<int32_t>{1, 90, 91},
                     std::vector<int32_t>{3});
    plan.AddSequence(Entry(3, 0, LogitsMode::kNone, true), std::vector<int32_t>{1, 7, 8, 9, 10, 11},
                     std::vector<int32_t>{5});
    return plan;
  }
  ModelConfig cfg_;
  std::unique_ptr<SafetensorsCheckpoint> ckpt_;
  std::unique_ptr<ModelWeights> weights_;
  SelfCommunicator self_;
};

TEST_F(CpuStageBackendTest, MicroBatchesGiveTheOnePassResult) {
  const StepPlan plan = Plan();
  auto one = Backend();
  ASSERT_TRUE(one->Embed(plan.tokens.data(), plan.total_tokens(), 0).ok());
  ASSERT_TRUE(one->RunLayers(plan.seqs, plan.block_tables.data(), 0).ok());
  StepResult a;
  ASSERT_TRUE(one->Head(plan, &a).ok());

  auto two = Backend();
  std::vector<MicroBatch> mbs;
  SplitMicroBatches(plan.seqs, 2, &mbs);
  ASSERT_EQ(mbs.size(), 2u);
  for (const MicroBatch& mb : mbs) {
    std::vector<SeqEntry> seqs(plan.seqs.begin() + mb.seq_begin, plan.seqs.begin() + mb.seq_end);
    for (SeqEntry& s : seqs) s.token_offset -= mb.row0;
    ASSERT_TRUE(two->Embed(plan.tokens.data() + mb.row0, mb.rows, mb.row0).ok());
    ASSERT_TRUE(two->RunLayers(seqs, plan.block_tables.data(), mb.row0).ok());
  }
  StepResult b;
  ASSERT_TRUE(two->Head(plan, &b).ok());
  EXPECT_EQ(a.next_tokens, b.next_tokens);
  EXPECT_EQ(a.logits_rows, (std::vector<int32_t>{5, 1, 0}));
  EXPECT_EQ(a.logits, b.logits);

  LocalExecutor exec(*weights_, {.num_blocks = 16, .block_size = 16},
                     {.max_tokens = 64, .max_context = 256});
  StepResult c;
  ASSERT_TRUE(exec.Execute(plan, &c).ok());
  EXPECT_EQ(a.next_tokens, c.next_tokens);
  EXPECT_EQ(a.logits, c.logits);
  // The one-rank orchestration reports the one rank's status.
  auto status = exec.CollectStatus();
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(status->size(), 1u);
  EXPECT_EQ((*status)[0].steps, 1);
  EXPECT_EQ((*status)[0].layer_end, cfg_.num_hidden_layers);
  int64_t routed = 0;
  for (const auto& layer : (*status)[0].expert_tokens) {
    for (int64_t n : layer) routed += n;
  }
  EXPECT_EQ(routed, int64_t{plan.total_tokens()} * cfg_.num_hidden_layers *
                        cfg_.num_experts_per_tok);
}

TEST_F(CpuStageBackendTest, LocalExecutorValidatesThePlan) {
  LocalExecutor exec(*weights_, {.num_blocks = 16, .block_size = 16},
                     {.max_tokens = 64, .max_context = 256});
  StepPlan plan;
  plan.AddSequence(Entry(9, 0, LogitsMode::kLast, true), std::vector<int32_t>{1, 2},
                   std::vector<int32_t>{16});
  StepResult r;
  const absl::Status st = exec.Execute(plan, &r);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("sequence 9: KV block id 16 outside [0, 16)"));
}

// The serving scheduler runs rank 0's steps on a thread of its own, which OpenMP starts at the
// node-wide thread count: the step adopts the rank's share (SetStepThreads) first.
TEST_F(CpuStageBackendTest, AStepOnAnotherThreadRunsWithTheRanksThreads) {
  int fresh = 0;
  std::thread([&] { fresh = omp_get_max_threads(); }).join();
  const int before = omp_get_max_threads(), recorded = StepThreads();
  SetStepThreads(fresh + 1);  // differs from what a new thread starts with
  LocalExecutor exec(*weights_, {.num_blocks = 16, .block_size = 16},
                     {.max_tokens = 64, .max_context = 256});
  StepPlan plan;
  plan.AddSequence(Entry(1, 0, LogitsMode::kNone, true), std::vector<int32_t>{1, 2, 3},
                   std::vector<int32_t>{0});
  absl::Status st;
  int at_start = 0, in_step = 0;
  std::thread([&] {
    at_start = omp_get_max_threads();
    StepResult r;
    st = exec.Execute(plan, &r);
    in_step = omp_get_max_threads();
  }).join();
  omp_set_num_threads(before);
  SetStepThreads(recorded);  // 0: no record, as before the test
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(at_start, fresh);
  EXPECT_EQ(in_step, fresh + 1);
}

// Experts bound and unbound while a shard runs (rebalancing): the shard's spec and resident
// bytes follow; a bad id is refused naming it.
TEST_F(CpuStageBackendTest, ExpertsAreBoundAndUnboundInPlace) {
  ShardSpec spec = ShardSpec::Whole(cfg_);
  for (auto& held : spec.local_experts) held = {0, 1};
  auto shard = std::move(ModelWeights::Load(*ckpt_, cfg_, spec, {})).value();
  const uint64_t before = shard->resident_bytes();
  auto t = ModelWeights::ExpertTensors(*ckpt_, cfg_, 1, 5);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 3u);
  const uint64_t expert = (*t)[0].nbytes + (*t)[1].nbytes + (*t)[2].nbytes;
  EXPECT_FALSE(shard->layer(1).HasExpert(5));
  shard->SetExpert(1, 5, *t);
  EXPECT_TRUE(shard->layer(1).HasExpert(5));
  EXPECT_EQ(shard->layer(1).experts[5].w1.data, weights_->layer(1).experts[5].w1.data);
  EXPECT_EQ(shard->spec().local_experts[1], (std::vector<int>{0, 1, 5}));
  EXPECT_EQ(shard->resident_bytes(), before + expert);
  shard->SetExpert(1, 0, {});
  EXPECT_FALSE(shard->layer(1).HasExpert(0));
  EXPECT_EQ(shard->spec().local_experts[1], (std::vector<int>{1, 5}));
  EXPECT_EQ(shard->resident_bytes(), before);
  auto bad = ModelWeights::ExpertTensors(*ckpt_, cfg_, 1, cfg_.num_local_experts);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("expert 8 of layer 1 outside"));
}

// The backend's two-step move, on a group of one: prepare in the background, report it,
// switch; a switch to a placement never prepared is refused.
TEST_F(CpuStageBackendTest, PreparesThenSwitchesExperts) {
  auto backend = Backend();
  const ExpertRanks all_here = SingleRankRouting(cfg_);
  EXPECT_EQ(backend->SwitchExperts(1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(backend->PrepareExperts(1, all_here, nullptr, ckpt_.get()).code(),
            absl::StatusCode::kFailedPrecondition);  // not its weights
  ASSERT_TRUE(backend->PrepareExperts(1, all_here, weights_.get(), ckpt_.get()).ok());
  for (int i = 0; i < 1000 && backend->experts_prepared() < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(backend->experts_prepared(), 1);
  EXPECT_EQ(backend->SwitchExperts(2).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(backend->SwitchExperts(1).ok());
  EXPECT_EQ(backend->experts_active(), 1);
  const StepPlan plan = Plan();
  ASSERT_TRUE(backend->Embed(plan.tokens.data(), plan.total_tokens(), 0).ok());
  EXPECT_TRUE(backend->RunLayers(plan.seqs, plan.block_tables.data(), 0).ok());
}

TEST(RoutingRows, LastRowsOfTheChunk) {
  SeqEntry s = Entry(1, 0);
  s.num_tokens = 5;
  EXPECT_EQ(RoutingRows(s), 0);
  s.routing = RoutingMode::kLast;
  EXPECT_EQ(RoutingRows(s), 1);
  s.routing = RoutingMode::kAll;
  EXPECT_EQ(RoutingRows(s), 5);
  s.num_tokens = 0;
  EXPECT_EQ(RoutingRows(s), 0);
}

// Routing comes back for the rows each sequence asked for: every layer's top-k, distinct
// experts in range by descending weight, weights summing to 1; a sequence's last row the same
// whether it asked for one row or all of them, and whatever else shares the step.
TEST_F(CpuStageBackendTest, RoutingOfTheRowsAsked) {
  LocalExecutor exec(*weights_, {.num_blocks = 16, .block_size = 16},
                     {.max_tokens = 64, .max_context = 256});
  const std::vector<int32_t> text = {1, 50, 60, 70, 80};
  StepPlan plan;
  SeqEntry all = Entry(1, 0);
  all.routing = RoutingMode::kAll;
  SeqEntry none = Entry(2, 0, LogitsMode::kLast, true);
  SeqEntry last = Entry(3, 0);
  last.routing = RoutingMode::kLast;
  plan.AddSequence(all, text, std::vector<int32_t>{0});
  plan.AddSequence(none, std::vector<int32_t>{1, 90, 91}, std::vector<int32_t>{3});
  plan.AddSequence(last, text, std::vector<int32_t>{5});
  StepResult r;
  ASSERT_TRUE(exec.Execute(plan, &r).ok());
  const int L = cfg_.num_hidden_layers, K = cfg_.num_experts_per_tok, RE = L * K;
  EXPECT_EQ(r.routing_rows, (std::vector<int32_t>{5, 0, 1}));
  EXPECT_EQ(r.routing_offset, (std::vector<int32_t>{0, 5, 5}));
  ASSERT_EQ(r.routing_experts.size(), 6u * RE);
  ASSERT_EQ(r.routing_weights.size(), 6u * RE);
  for (int row = 0; row < 6; ++row) {
    for (int l = 0; l < L; ++l) {
      const int32_t* e = &r.routing_experts[(row * L + l) * K];
      const float* w = &r.routing_weights[(row * L + l) * K];
      float sum = 0;
      for (int k = 0; k < K; ++k) {
        EXPECT_GE(e[k], 0);
        EXPECT_LT(e[k], cfg_.num_local_experts);
        for (int j = 0; j < k; ++j) EXPECT_NE(e[j], e[k]);
        if (k > 0) {
          EXPECT_GE(w[k - 1], w[k]);
        }
        sum += w[k];
      }
      EXPECT_NEAR(sum, 1.0f, 1e-5) << "row " << row << " layer " << l;
    }
  }
  // Sequence 3's one row is sequence 1's last: same text, same positions.
  const auto e1 = r.SeqRoutingExperts(0, RE), e3 = r.SeqRoutingExperts(2, RE);
  EXPECT_TRUE(std::equal(e3.begin(), e3.end(), e1.end() - RE));
  const auto w1 = r.SeqRoutingWeights(0, RE), w3 = r.SeqRoutingWeights(2, RE);
  for (int i = 0; i < RE; ++i) EXPECT_NEAR(w3[i], w1[w1.size() - RE + i], 1e-6);
  // A step that asks for none returns none.
  StepPlan plain;
  plain.AddSequence(none, std::vector<int32_t>{1, 2}, std::vector<int32_t>{7});
  ASSERT_TRUE(exec.Execute(plain, &r).ok());
  EXPECT_EQ(r.routing_rows, (std::vector<int32_t>{0}));
  EXPECT_TRUE(r.routing_experts.empty());
}

TEST_F(ValidatePlanTest, RefusesAnUnknownMode) {
  SeqEntry s = Entry(4, 0);
  s.routing = static_cast<RoutingMode>(7);
  plan_.AddSequence(s, std::vector<int32_t>{1}, std::vector<int32_t>{0});
  const absl::Status st = ValidatePlan(plan_, limits_);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("sequence 4: logits mode 0, routing mode 7 unknown"));
}

}  // namespace
}  // namespace switchyard

namespace switchyard {
namespace {

// A backend that records no routing and moves no experts (as the CUDA backend): the CPU
// backend underneath, its calls counted.
class NoRoutingBackend final : public StageBackend {
 public:
  explicit NoRoutingBackend(std::unique_ptr<StageBackend> inner) : inner_(std::move(inner)) {}
  absl::Status Embed(const int32_t* tokens, int rows, int row0) override {
    return inner_->Embed(tokens, rows, row0);
  }
  absl::Status RunLayers(std::span<const SeqEntry> seqs, const int32_t* block_tables, int row0,
                         const RoutingCapture* capture) override {
    ++run_layers;
    if (capture != nullptr) return absl::UnimplementedError("no routing here");
    return inner_->RunLayers(seqs, block_tables, row0, nullptr);
  }
  absl::Status Head(const StepPlan& local, StepResult* result) override {
    return inner_->Head(local, result);
  }
  void* hidden_rows(int row0) override { return inner_->hidden_rows(row0); }
  size_t row_bytes() const override { return inner_->row_bytes(); }
  const ForwardLimits& limits() const override { return inner_->limits(); }
  bool records_routing() const override { return false; }
  uint64_t kv_bytes() const override { return inner_->kv_bytes(); }
  const std::vector<std::vector<int64_t>>& expert_token_counts() const override {
    return inner_->expert_token_counts();
  }
  const CommMeter& dispatch_meter() const override { return inner_->dispatch_meter(); }
  int run_layers = 0;

 private:
  std::unique_ptr<StageBackend> inner_;
};

TEST_F(CpuStageBackendTest, ABackendWithoutRoutingIsRefusedRoutingBeforeTheStep) {
  auto backend = std::make_unique<NoRoutingBackend>(Backend());
  NoRoutingBackend* counted = backend.get();
  EXPECT_FALSE(counted->moves_experts());  // the default: the CUDA backend's answer today
  EXPECT_TRUE(Backend()->moves_experts());  // the CPU backend moves experts
  DistributedWorker worker(*weights_, {.ep = 1, .pp = 1, .world_rank = 0}, &self_, &self_,
                           std::move(backend), {.num_blocks = 16, .block_size = 16});
  DistributedExecutor exec(&worker);
  EXPECT_FALSE(exec.records_routing());

  StepPlan plan = Plan();
  plan.seqs[1].routing = RoutingMode::kLast;
  StepResult r;
  const absl::Status st = exec.Execute(plan, &r);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
  EXPECT_THAT(st.message(), HasSubstr("sequence 2: routing"));
  EXPECT_EQ(counted->run_layers, 0) << "refused before any rank started the step";

  plan.seqs[1].routing = RoutingMode::kNone;  // the same plan without routing runs
  ASSERT_TRUE(exec.Execute(plan, &r).ok());
  EXPECT_EQ(counted->run_layers, 1);
  LocalExecutor local(*weights_, {.num_blocks = 16, .block_size = 16},
                      {.max_tokens = 64, .max_context = 256});
  StepResult want;
  ASSERT_TRUE(local.Execute(plan, &want).ok());
  EXPECT_EQ(r.next_tokens, want.next_tokens);
  EXPECT_EQ(r.logits, want.logits);
}

}  // namespace
}  // namespace switchyard
