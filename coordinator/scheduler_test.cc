// The continuous-batching scheduler over the single-process executor and the demo model.
#include "coordinator/scheduler.h"

#include <cmath>
#include <condition_variable>
#include <mutex>
#include <random>

#include "coordinator/model_session.h"
#include "coordinator/sequence_runner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

const std::string kRoot = SWITCHYARD_SOURCE_ROOT;

// Collects a request's events; Wait() blocks until the final one.
class CollectingSink : public RequestSink {
 public:
  void OnEvent(const RequestEvent& e) override {
    std::lock_guard<std::mutex> lock(mu_);
    events.push_back(e);
    times.push_back(std::chrono::steady_clock::now());
    for (int32_t t : e.token_ids) tokens.push_back(t);
    text += e.text;
    if (e.finished) {
      done = true;
      final_event = e;
      cv_.notify_all();
    }
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(120), [this] { return done; }));
  }
  std::vector<RequestEvent> events;
  std::vector<std::chrono::steady_clock::time_point> times;
  std::vector<int32_t> tokens;
  std::string text;
  bool done = false;
  RequestEvent final_event;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

class SchedulerTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto s = ModelSession::Open({.model_dir = kRoot + "/models/brown-moe",
                                 .max_step_tokens = 512,
                                 .kv_blocks = 512,
                                 .show_progress = false});
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = std::move(s).value().release();
  }
  std::unique_ptr<Scheduler> Make(SchedulerOptions opts = {}) {
    return std::make_unique<Scheduler>(session_->executor.get(), session_->tokenizer.get(),
                                       session_->config, opts,
                                       std::vector<BlockAllocator*>{session_->allocator(0)});
  }
  GenerateRequest Request(const std::string& prompt, int max_tokens) {
    GenerateRequest r;
    r.prompt_ids = session_->tokenizer->Encode(prompt, true);
    r.max_tokens = max_tokens;
    return r;
  }
  static ModelSession* session_;
};
ModelSession* SchedulerTest::session_ = nullptr;

const std::vector<std::string> kPrompts = {
    "The jury said that", "In the morning, the old man", "The President told reporters",
    "A small boy", "The city council met", "It was", "Mr. Smith and his wife went to the",
    "The committee"};

TEST_F(SchedulerTest, BatchingDoesNotChangeGreedyOutput) {
  auto sched = Make();
  sched->Start();
  // Each request alone first.
  std::vector<std::vector<int32_t>> alone;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    auto sink = std::make_shared<CollectingSink>();
    ASSERT_TRUE(sched->Submit(Request(kPrompts[i], 8 + 5 * i), sink).ok());
    sink->Wait();
    alone.push_back(sink->tokens);
  }
  // Then all at once, twice over, so sequences join and leave mid-stream.
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (int round = 0; round < 2; ++round) {
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      sinks.push_back(std::make_shared<CollectingSink>());
      ASSERT_TRUE(sched->Submit(Request(kPrompts[i], 8 + 5 * i), sinks.back()).ok());
    }
  }
  for (size_t j = 0; j < sinks.size(); ++j) {
    sinks[j]->Wait();
    EXPECT_EQ(sinks[j]->tokens, alone[j % kPrompts.size()]) << kPrompts[j % kPrompts.size()];
    EXPECT_TRUE(sinks[j]->final_event.error.ok());
  }
  EXPECT_GT(sched->Stats().steps, 0);
}

TEST_F(SchedulerTest, StreamedTextEqualsDecodedTokens) {
  auto sched = Make();
  sched->Start();
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched->Submit(Request("In the morning, the old man", 40), sink).ok());
  sink->Wait();
  std::vector<int32_t> ids = sink->tokens;
  if (!ids.empty() && ids.back() == session_->config.eos_token_id) ids.pop_back();
  const std::vector<int32_t> prompt = Request("In the morning, the old man", 40).prompt_ids;
  EXPECT_EQ(sink->text, session_->tokenizer->DecodeCompletion(prompt, ids));
  // Decoded in the prompt's context: the first word keeps its leading space.
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), ids.begin(), ids.end());
  EXPECT_EQ(session_->tokenizer->Decode(prompt) + sink->text, session_->tokenizer->Decode(all));
  EXPECT_EQ(sink->final_event.completion_tokens, static_cast<int>(sink->tokens.size()));
  EXPECT_GT(sink->events.size(), 2u) << "expected incremental events";
}

// Logprobs come with every generated token: under greedy decoding the chosen token is the
// most likely one, and the values do not depend on what else is in the batch.
TEST_F(SchedulerTest, LogprobsComeWithEveryTokenAndFollowTheDistribution) {
  auto sched = Make();
  sched->Start();
  auto collect = [](const CollectingSink& sink) {
    std::vector<GeneratedLogprob> all;
    for (const RequestEvent& e : sink.events) {
      EXPECT_EQ(e.logprobs.size(), e.token_ids.size());
      all.insert(all.end(), e.logprobs.begin(), e.logprobs.end());
    }
    return all;
  };
  GenerateRequest req = Request("The jury said that", 12);
  req.logprobs = 3;
  auto alone = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched->Submit(req, alone).ok());
  alone->Wait();
  const std::vector<GeneratedLogprob> lps = collect(*alone);
  ASSERT_EQ(lps.size(), alone->tokens.size());
  for (size_t i = 0; i < lps.size(); ++i) {
    ASSERT_EQ(lps[i].top.size(), 3u);
    EXPECT_EQ(lps[i].top[0].id, alone->tokens[i]) << i;
    EXPECT_EQ(lps[i].logprob, lps[i].top[0].logprob) << i;
    EXPECT_LE(lps[i].logprob, 0.0f);
    EXPECT_GE(lps[i].top[0].logprob, lps[i].top[1].logprob);
    EXPECT_GE(lps[i].top[1].logprob, lps[i].top[2].logprob);
    double mass = 0;
    for (const TokenLogprob& t : lps[i].top) mass += std::exp(t.logprob);
    EXPECT_LE(mass, 1.0 + 1e-5);
  }
  // The same request among others (sampled ones too): the same tokens and logprobs.
  std::vector<std::shared_ptr<CollectingSink>> others;
  for (size_t i = 0; i < 4; ++i) {
    GenerateRequest other = Request(kPrompts[i], 16);
    other.sampling.temperature = 0.8f;
    other.sampling.seed = i;
    others.push_back(std::make_shared<CollectingSink>());
    ASSERT_TRUE(sched->Submit(other, others.back()).ok());
  }
  auto batched = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched->Submit(req, batched).ok());
  batched->Wait();
  for (auto& o : others) {
    o->Wait();
    for (const RequestEvent& e : o->events) EXPECT_TRUE(e.logprobs.empty());
  }
  EXPECT_EQ(batched->tokens, alone->tokens);
  const std::vector<GeneratedLogprob> again = collect(*batched);
  ASSERT_EQ(again.size(), lps.size());
  for (size_t i = 0; i < lps.size(); ++i) {
    EXPECT_NEAR(again[i].logprob, lps[i].logprob, 1e-4) << i;
  }
  // Over the limit: refused.
  req.logprobs = kMaxTopLogprobs + 1;
  EXPECT_EQ(sched->Submit(req, alone).status().code(), absl::StatusCode::kInvalidArgument);
}

// Routing comes with every generated token: the routing of the row the token was sampled
// from, the same as a trace of prompt + completion gives for that row, whatever shares the
// batch (a prompt chunk, sampled streams).
TEST_F(SchedulerTest, RoutingComesWithEveryTokenAsATraceGivesIt) {
  auto sched = Make({.prefill_chunk = 3});  // the prompt crosses steps
  sched->Start();
  const ModelConfig& cfg = session_->config;
  const int RE = cfg.num_hidden_layers * cfg.num_experts_per_tok;
  auto collect = [](const CollectingSink& sink) {
    std::vector<TokenRouting> all;
    for (const RequestEvent& e : sink.events) {
      EXPECT_EQ(e.routing.size(), e.token_ids.size());
      all.insert(all.end(), e.routing.begin(), e.routing.end());
    }
    return all;
  };
  GenerateRequest req = Request("The jury said that", 10);
  req.return_routing = true;
  std::vector<std::shared_ptr<CollectingSink>> others;
  for (size_t i = 0; i < 3; ++i) {
    GenerateRequest other = Request(kPrompts[i + 1], 12);
    other.sampling.temperature = 0.8f;
    other.sampling.seed = i;
    others.push_back(std::make_shared<CollectingSink>());
    ASSERT_TRUE(sched->Submit(other, others.back()).ok());
  }
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched->Submit(req, sink).ok());
  sink->Wait();
  for (auto& o : others) {
    o->Wait();
    for (const RequestEvent& e : o->events) EXPECT_TRUE(e.routing.empty());
  }
  const std::vector<TokenRouting> routing = collect(*sink);
  ASSERT_EQ(routing.size(), sink->tokens.size());
  ASSERT_FALSE(routing.empty());

  // The trace of prompt + completion: generated token i came from row prompt_len - 1 + i.
  std::vector<int32_t> text = req.prompt_ids;
  text.insert(text.end(), sink->tokens.begin(), sink->tokens.end() - 1);
  std::vector<int32_t> experts(text.size() * RE);
  std::vector<float> weights(text.size() * RE);
  SequenceRunner runner(session_->executor.get(), session_->allocator(0), cfg);
  sched->Stop();
  ASSERT_TRUE(runner
                  .Route(text,
                         [&](int first, int rows, const int32_t* e, const float* w) {
                           std::copy_n(e, rows * RE, experts.begin() + first * RE);
                           std::copy_n(w, rows * RE, weights.begin() + first * RE);
                         })
                  .ok());
  for (size_t i = 0; i < routing.size(); ++i) {
    const size_t row = req.prompt_ids.size() - 1 + i;
    EXPECT_EQ(routing[i].top_k, cfg.num_experts_per_tok);
    ASSERT_EQ(routing[i].experts.size(), static_cast<size_t>(RE));
    EXPECT_TRUE(std::equal(routing[i].experts.begin(), routing[i].experts.end(),
                           experts.begin() + row * RE))
        << "token " << i;
    for (int j = 0; j < RE; ++j) {
      EXPECT_NEAR(routing[i].weights[j], weights[row * RE + j], 1e-4) << "token " << i;
    }
  }
}

// An executor that cannot record routing (the CUDA executor today): return_routing is refused
// at submission, naming the field, instead of failing the step every request shares.
class NoRoutingExecutor : public StepExecutor {
 public:
  explicit NoRoutingExecutor(StepExecutor* inner) : inner_(inner) {}
  absl::Status Execute(const StepPlan& plan, StepResult* result) override {
    return inner_->Execute(plan, result);
  }
  int max_step_tokens() const override { return inner_->max_step_tokens(); }
  absl::StatusOr<std::vector<RankStatus>> CollectStatus() override {
    return inner_->CollectStatus();
  }
  bool records_routing() const override { return false; }

 private:
  StepExecutor* inner_;
};

TEST_F(SchedulerTest, RoutingIsRefusedWhereTheExecutorDoesNotRecordIt) {
  NoRoutingExecutor exec(session_->executor.get());
  Scheduler sched(&exec, session_->tokenizer.get(), session_->config, {},
                  std::vector<BlockAllocator*>{session_->allocator(0)});
  sched.Start();
  GenerateRequest req = Request("The jury said that", 4);
  req.return_routing = true;
  auto refused = sched.Submit(req, std::make_shared<CollectingSink>());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), testing::HasSubstr("return_routing"));
  req.return_routing = false;
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched.Submit(req, sink).ok());
  sink->Wait();
  EXPECT_TRUE(sink->final_event.error.ok());
  EXPECT_EQ(sink->tokens.size(), 4u);
}

TEST_F(SchedulerTest, StopStringEndsGenerationBeforeTheMatch) {
  auto sched = Make();
  sched->Start();
  auto full = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched->Submit(Request("The President told reporters", 32), full).ok());
  full->Wait();
  ASSERT_GT(full->text.size(), 20u);
  const std::string stop = full->text.substr(12, 5);
  auto req = Request("The President told reporters", 32);
  req.stop = {stop};
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched->Submit(req, sink).ok());
  sink->Wait();
  EXPECT_EQ(sink->final_event.finish_reason, FinishReason::kStop);
  EXPECT_EQ(sink->text, full->text.substr(0, full->text.find(stop)));
}

TEST_F(SchedulerTest, CancelFreesBlocks) {
  auto sched = Make();
  const int idle = session_->allocator(0)->free_blocks();
  sched->Start();
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  std::vector<RequestId> ids;
  for (int i = 0; i < 20; ++i) {
    sinks.push_back(std::make_shared<CollectingSink>());
    auto id = sched->Submit(Request(kPrompts[i % kPrompts.size()], 200), sinks.back());
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  for (int i = 0; i < 20; i += 2) sched->Cancel(ids[i]);
  for (int i = 0; i < 20; ++i) {
    sinks[i]->Wait();
    if (i % 2 == 0) {
      EXPECT_EQ(sinks[i]->final_event.finish_reason, FinishReason::kCancelled);
    }
  }
  sched->Drain();
  EXPECT_EQ(sched->Stats().free_blocks[0], idle);
  EXPECT_EQ(session_->allocator(0)->free_blocks(), idle);
}

TEST_F(SchedulerTest, LongPromptIsPrefilledInChunksWhileOthersStream) {
  SchedulerOptions opts;
  opts.prefill_chunk = 64;
  opts.step_token_budget = 80;
  auto sched = Make(opts);
  sched->Start();
  auto req = Request("The jury said that", 100);
  req.stop_at_eos = false;
  auto shorter = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched->Submit(req, shorter).ok());
  // Wait until the short request streams, then send a 900-token prompt.
  while (sched->Stats().generated_tokens <= 2) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  GenerateRequest big;
  std::mt19937 rng(1);
  big.prompt_ids.push_back(1);
  for (int i = 0; i < 899; ++i) big.prompt_ids.push_back(3 + rng() % 4000);
  big.max_tokens = 4;
  auto longer = std::make_shared<CollectingSink>();
  const auto submitted = std::chrono::steady_clock::now();
  ASSERT_TRUE(sched->Submit(big, longer).ok());
  longer->Wait();
  shorter->Wait();
  ASSERT_EQ(shorter->tokens.size(), 100u);
  // 900 prompt tokens at 64 per step take 15 steps; the short stream got a token in each of
  // them rather than waiting for the whole prefill.
  const auto first_long = longer->times.front();
  int during = 0;
  for (auto t : shorter->times) during += t > submitted && t < first_long;
  EXPECT_GE(during, 14);
}

TEST_F(SchedulerTest, QueueLimitAndDrainAnswerUnavailable) {
  SchedulerOptions opts;
  opts.max_queue = 2;
  opts.max_running = 3;
  auto sched = Make(opts);  // not started: requests stay queued
  auto a = std::make_shared<CollectingSink>();
  // Room for 3 running and 2 waiting: the sixth is refused.
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(sched->Submit(Request("The jury", 4), a).ok()) << i;
  auto sixth = sched->Submit(Request("The jury", 4), a);
  EXPECT_EQ(sixth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(sixth.status().message()), testing::HasSubstr("queue is full"));
  sched->Start();
  sched->Drain();
  auto after = sched->Submit(Request("The jury", 4), a);
  EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(after.status().message()), testing::HasSubstr("draining"));
}

TEST_F(SchedulerTest, ABurstFillsTheRunningSlotsAndTheQueue) {
  // The reliability issue's defect 6: --max-queue 50 with 50 running slots took 74-92 of a
  // burst of 200, because the queue was counted before admission freed it.
  SchedulerOptions opts;
  opts.max_queue = 50;
  opts.max_running = 50;
  auto sched = Make(opts);
  sched->Start();
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  int accepted = 0;
  for (int i = 0; i < 200; ++i) {
    auto sink = std::make_shared<CollectingSink>();
    if (sched->Submit(Request("The jury", 200), sink).ok()) {
      ++accepted;
      sinks.push_back(sink);
    }
  }
  EXPECT_EQ(accepted, 100);
  sched->Stop();
}

TEST_F(SchedulerTest, StopWithAReasonEndsRequestsWithIt) {
  auto sched = Make();
  sched->Start();
  auto running = std::make_shared<CollectingSink>();
  auto cancelled = std::make_shared<CollectingSink>();
  GenerateRequest long_one = Request("The jury", 900);
  long_one.stop_at_eos = false;
  ASSERT_TRUE(sched->Submit(long_one, running).ok());
  auto id = sched->Submit(long_one, cancelled);
  ASSERT_TRUE(id.ok());
  sched->Cancel(*id);
  cancelled->Wait();
  sched->Stop(absl::UnavailableError("server drained: retry elsewhere"));
  running->Wait();
  EXPECT_EQ(running->final_event.error.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(running->final_event.error.message(), "server drained: retry elsewhere");
  // A client's own cancel stays a cancel.
  EXPECT_TRUE(cancelled->final_event.error.ok());
  EXPECT_EQ(cancelled->final_event.finish_reason, FinishReason::kCancelled);
}

TEST_F(SchedulerTest, RefusesRequestsThatCanNeverFit) {
  auto sched = Make();
  auto sink = std::make_shared<CollectingSink>();
  auto r = sched->Submit(Request("The jury", session_->config.max_position_embeddings), sink);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), testing::HasSubstr("max_tokens"));
  auto req = Request("The jury", 4);
  req.stop = std::vector<std::string>(9, "x");
  EXPECT_EQ(sched->Submit(req, sink).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, SeededSamplingIsReproducibleUnderLoad) {
  auto sched = Make();
  sched->Start();
  auto req = Request("The city council met", 24);
  req.sampling = {.temperature = 0.9f, .top_k = 50, .top_p = 0.95f, .seed = 1234};
  auto alone = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched->Submit(req, alone).ok());
  alone->Wait();
  std::vector<std::shared_ptr<CollectingSink>> noise;
  for (int i = 0; i < 6; ++i) {
    noise.push_back(std::make_shared<CollectingSink>());
    ASSERT_TRUE(sched->Submit(Request(kPrompts[i], 30), noise.back()).ok());
  }
  auto loaded = std::make_shared<CollectingSink>();
  ASSERT_TRUE(sched->Submit(req, loaded).ok());
  loaded->Wait();
  for (auto& n : noise) n->Wait();
  EXPECT_EQ(loaded->tokens, alone->tokens);
}

}  // namespace
}  // namespace switchyard
