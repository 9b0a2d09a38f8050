// The real Scheduler in virtual time (SchedulerOptions::clock, RunOnce): a fake executor whose
// steps cost 10 ms plus 1 ms per token, two requests arriving at known times, and every
// timing checked against the schedule worked out by hand.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>

#include "coordinator/block_allocator.h"
#include "coordinator/scheduler.h"
#include "coordinator/virtual_clock.h"

namespace switchyard {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::Pointwise;

constexpr double kEps = 1e-9;

// Each step costs 10 ms + 1 ms per token, in virtual time; every sampled entry gets token 7.
class CostedExecutor : public StepExecutor {
 public:
  explicit CostedExecutor(VirtualClock* clock) : clock_(clock) {}
  absl::Status Execute(const StepPlan& plan, StepResult* result) override {
    result->next_tokens.assign(plan.seqs.size(), -1);
    result->logits_rows.assign(plan.seqs.size(), 0);
    result->logits_offset.assign(plan.seqs.size(), 0);
    result->routing_rows.assign(plan.seqs.size(), 0);
    result->routing_offset.assign(plan.seqs.size(), 0);
    for (size_t i = 0; i < plan.seqs.size(); ++i) {
      if (plan.seqs[i].sample) result->next_tokens[i] = 7;
    }
    steps.push_back(static_cast<int>(plan.tokens.size()));
    clock_->AdvanceSeconds(0.010 + 0.001 * static_cast<double>(plan.tokens.size()));
    return absl::OkStatus();
  }
  int max_step_tokens() const override { return 64; }
  absl::StatusOr<std::vector<RankStatus>> CollectStatus() override {
    return std::vector<RankStatus>();
  }
  std::vector<int> steps;  // tokens per step

 private:
  VirtualClock* clock_;
};

// Records when (in virtual seconds since the start) each token reached the client.
class TimedSink : public RequestSink {
 public:
  explicit TimedSink(const VirtualClock* clock) : clock_(clock) {}
  void OnEvent(const RequestEvent& e) override {
    for (size_t i = 0; i < e.token_ids.size(); ++i) times.push_back(clock_->Elapsed());
    if (e.finished) done = true;
  }
  std::vector<double> times;
  bool done = false;

 private:
  const VirtualClock* clock_;
};

class RecordingObserver : public SchedulerObserver {
 public:
  void OnStep(const StepRecord& s) override { steps.push_back(s.seconds); }
  void OnTokenGap(double s) override { gaps.push_back(s); }
  void OnRequestEnd(const RequestTimings& t) override { ends.push_back(t); }
  std::vector<double> steps, gaps;
  std::vector<RequestTimings> ends;
};

// What the scheduler reads of a model: a small vocabulary and context.
ModelConfig TinyConfig() {
  ModelConfig cfg;
  cfg.vocab_size = 32;
  cfg.max_position_embeddings = 64;
  cfg.num_hidden_layers = 1;
  cfg.num_experts_per_tok = 1;
  return cfg;
}

GenerateRequest Request(int prompt, int max_tokens) {
  GenerateRequest r;
  r.prompt_ids.assign(prompt, 5);
  r.max_tokens = max_tokens;
  r.stop_at_eos = false;
  return r;
}

TEST(VirtualTimeTest, TheSchedulerRunsInVirtualTimeAsWorkedOutByHand) {
  const ModelConfig cfg = TinyConfig();
  BlockAllocator blocks(16, 4);
  VirtualClock clock;
  CostedExecutor exec(&clock);
  RecordingObserver observer;
  Scheduler sched(&exec, /*tokenizer=*/nullptr, cfg,
                  {.max_running = 2, .step_token_budget = 8, .prefill_chunk = 4,
                   .observer = &observer, .clock = &clock},
                  {&blocks});
  auto a = std::make_shared<TimedSink>(&clock), b = std::make_shared<TimedSink>(&clock);
  // A (6 prompt tokens, 3 to generate) arrives at 0; B (2 and 2) at 5 ms, inside A's first step.
  clock.At(clock.Now(), [&] { ASSERT_TRUE(sched.Submit(Request(6, 3), a).ok()); });
  clock.At(clock.Now() + std::chrono::milliseconds(5),
           [&] { ASSERT_TRUE(sched.Submit(Request(2, 2), b).ok()); });
  clock.AdvanceToNextEvent();
  int guard = 0;
  while (++guard < 100) {
    const Scheduler::Progress p = sched.RunOnce();
    ASSERT_NE(p, Scheduler::Progress::kStopped);
    if (p == Scheduler::Progress::kIdle && !clock.AdvanceToNextEvent()) break;
  }
  ASSERT_TRUE(a->done && b->done);
  // Steps: A's first chunk (4 tokens, 0 -> 14 ms); A's last 2 prompt tokens and B's prompt
  // (4 tokens, 14 -> 28: both sample their first token); A and B decode (2, 28 -> 40: B is
  // done); A decodes (1, 40 -> 51: A is done).
  EXPECT_THAT(exec.steps, ElementsAre(4, 4, 2, 1));
  EXPECT_THAT(observer.steps,
              Pointwise(DoubleNear(kEps), std::vector<double>{0.014, 0.014, 0.012, 0.011}));
  EXPECT_THAT(a->times, Pointwise(DoubleNear(kEps), std::vector<double>{0.028, 0.040, 0.051}));
  EXPECT_THAT(b->times, Pointwise(DoubleNear(kEps), std::vector<double>{0.028, 0.040}));
  // Gaps: B 12 ms; A 12 and 11 ms.
  EXPECT_THAT(observer.gaps, Pointwise(DoubleNear(kEps), std::vector<double>{0.012, 0.012, 0.011}));
  ASSERT_EQ(observer.ends.size(), 2u);
  const RequestTimings& tb = observer.ends[0];  // B ends first
  EXPECT_NEAR(tb.queue_seconds, 0.009, kEps);   // arrived at 5 ms, admitted at 14
  EXPECT_NEAR(tb.first_token_seconds, 0.023, kEps);
  EXPECT_NEAR(tb.total_seconds, 0.035, kEps);
  const RequestTimings& ta = observer.ends[1];
  EXPECT_NEAR(ta.queue_seconds, 0, kEps);
  EXPECT_NEAR(ta.first_token_seconds, 0.028, kEps);
  EXPECT_NEAR(ta.total_seconds, 0.051, kEps);
  EXPECT_NEAR(clock.Elapsed(), 0.051, kEps);
  EXPECT_EQ(sched.Stats().steps, 4);
  EXPECT_EQ(blocks.free_blocks(), 16);
}

TEST(VirtualTimeTest, AdmissionWaitsForKvBlocksInVirtualTime) {
  // Room for one request at a time (each needs 2 blocks of 4 tokens; the pool has 3): the
  // second waits until the first is done, and its queue time says so.
  const ModelConfig cfg = TinyConfig();
  BlockAllocator blocks(3, 4);
  VirtualClock clock;
  CostedExecutor exec(&clock);
  RecordingObserver observer;
  Scheduler sched(&exec, nullptr, cfg, {.observer = &observer, .clock = &clock}, {&blocks});
  auto a = std::make_shared<TimedSink>(&clock), b = std::make_shared<TimedSink>(&clock);
  ASSERT_TRUE(sched.Submit(Request(4, 3), a).ok());  // 6 tokens of KV: 2 blocks
  ASSERT_TRUE(sched.Submit(Request(4, 3), b).ok());
  while (sched.RunOnce() == Scheduler::Progress::kStepped) {
  }
  ASSERT_TRUE(a->done && b->done);
  // A: prefill 4 (14 ms), decode 1 (11), decode 1 (11): done at 36 ms. B then the same.
  EXPECT_THAT(exec.steps, ElementsAre(4, 1, 1, 4, 1, 1));
  EXPECT_THAT(a->times, Pointwise(DoubleNear(kEps), std::vector<double>{0.014, 0.025, 0.036}));
  EXPECT_THAT(b->times, Pointwise(DoubleNear(kEps), std::vector<double>{0.050, 0.061, 0.072}));
  ASSERT_EQ(observer.ends.size(), 2u);
  EXPECT_NEAR(observer.ends[1].queue_seconds, 0.036, kEps);
}

}  // namespace
}  // namespace switchyard
