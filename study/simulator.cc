#include "study/simulator.h"

#include <algorithm>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/stats.h"
#include "common/status_macros.h"
#include "coordinator/block_allocator.h"

namespace switchyard {

SimulatedExecutor::SimulatedExecutor(const CostModel* model, VirtualClock* clock,
                                     const PlanLimits& limits, int32_t token, HostCosts host)
    : model_(model),
      clock_(clock),
      limits_(limits),
      token_(token),
      host_(host),
      busy_(model->world(), 0.0) {}

absl::Status SimulatedExecutor::Execute(const StepPlan& plan, StepResult* result) {
  RETURN_IF_ERROR(ValidatePlan(plan, limits_));
  StepShape shape;
  const size_t n = plan.seqs.size();
  result->next_tokens.assign(n, -1);
  result->logits.clear();
  result->logits_offset.assign(n, 0);
  result->logits_rows.assign(n, 0);
  result->routing_experts.clear();
  result->routing_weights.clear();
  result->routing_offset.assign(n, 0);
  result->routing_rows.assign(n, 0);
  int sampled = 0;
  for (size_t i = 0; i < n; ++i) {
    const SeqEntry& s = plan.seqs[i];
    sampled += s.sample ? 1 : 0;
    if (s.routing != RoutingMode::kNone || s.logits != LogitsMode::kNone) {
      return absl::InvalidArgumentError(
          "the simulated executor returns neither logits nor routing");
    }
    shape.seqs.push_back({.dp_rank = s.dp_rank, .tokens = s.num_tokens,
                          .start_pos = s.start_pos, .head_rows = HeadRows(s)});
    if (s.sample) result->next_tokens[i] = token_;
  }
  StepCost c = model_->Step(shape);
  const double host = host_.step_s + host_.token_s * sampled;
  // The front end's CPU work beside the step, on rank 0's node. Where the ranks' threads
  // leave a core free, it runs there, unless the ranks' work and the front end's outgrow the
  // node's CPUs (the step then lasts the node's work over its CPUs). Where they fill every
  // core, each slice it runs takes a core from a rank that the others (coupled by every
  // layer's exchange, or an OpenMP team by its barriers) then wait for: the step lasts that
  // much longer.
  const double cpu = host_.cpu_step_s + host_.cpu_token_s * sampled;
  if (cpu > 0) {
    const CostModel::NodeWork node = model_->NodeWorkOf(c, 0);
    if (node.cpus > 0) {
      double lost = std::max(0.0, (node.core_s + host + cpu) / node.cpus - c.seconds - host);
      if (node.threads >= node.cpus) lost = std::max(lost, cpu);
      c.seconds += lost;
      c.breakdown.cores_s += lost;
      front_end_cores_s_ += lost;
    }
  }
  ++steps_;
  seconds_ += c.seconds;
  weight_bytes_ += c.weight_bytes_read;
  kv_bytes_ += c.kv_bytes_read;
  flops_ += c.flops;
  const StepBreakdown& b = c.breakdown;
  sum_.weights_s += b.weights_s;
  sum_.attention_s += b.attention_s;
  sum_.dispatch_s += b.dispatch_s;
  sum_.combine_s += b.combine_s;
  sum_.imbalance_s += b.imbalance_s;
  sum_.head_s += b.head_s;
  sum_.control_s += b.control_s;
  sum_.bubble_s += b.bubble_s;
  sum_.cores_s += b.cores_s;
  for (size_t r = 0; r < busy_.size() && r < c.ranks.size(); ++r) busy_[r] += c.ranks[r].busy_s;
  host_seconds_ += host;
  clock_->AdvanceSeconds(c.seconds + host);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RankStatus>> SimulatedExecutor::CollectStatus() {
  return std::vector<RankStatus>();
}

Percentiles PercentilesOf(std::vector<double> v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  p.mean = sum / static_cast<double>(v.size());
  p.p50 = NearestRank(v, 0.50);
  p.p90 = NearestRank(v, 0.90);
  p.p99 = NearestRank(v, 0.99);
  return p;
}

namespace {

class Recorder : public SchedulerObserver {
 public:
  explicit Recorder(const VirtualClock* clock) : clock_(clock) {}
  void OnStep(const StepRecord& s) override {
    tokens += s.prefill_tokens + s.decode_tokens;
  }
  void OnTokenGap(double s) override { itl.push_back(s); }
  void OnRequestEnd(const RequestTimings& t) override {
    if (t.failed) {
      ++failed;
      return;
    }
    ++ended;
    last_end = clock_->Elapsed();
    if (t.first_token_seconds >= 0) ttft.push_back(t.first_token_seconds);
    if (t.queue_seconds >= 0) queue.push_back(t.queue_seconds);
    e2e.push_back(t.total_seconds);
    prompt_tokens += t.prompt_tokens;
    output_tokens += t.completion_tokens;
  }
  std::vector<double> ttft, itl, e2e, queue;
  int ended = 0, failed = 0;
  int64_t tokens = 0, prompt_tokens = 0, output_tokens = 0;
  double last_end = 0;  // virtual seconds at the last request's end

 private:
  const VirtualClock* clock_;
};

// Calls `done` when its request's final event comes.
class EndSink : public RequestSink {
 public:
  explicit EndSink(std::function<void()> done) : done_(std::move(done)) {}
  void OnEvent(const RequestEvent& e) override {
    if (e.finished && done_) done_();
  }

 private:
  std::function<void()> done_;
};

}  // namespace

absl::StatusOr<ServingReport> SimulateServing(const CostModel& model, SchedulerOptions options,
                                              const KvPool& kv, const Workload& w,
                                              HostCosts host) {
  if (w.requests < 1) return absl::InvalidArgumentError("--requests must be at least 1");
  if (!(w.turnaround_s >= 0) || !(host.step_s >= 0) || !(host.token_s >= 0) ||
      !(host.cpu_step_s >= 0) || !(host.cpu_token_s >= 0)) {
    return absl::InvalidArgumentError("front-end costs and the turnaround must be >= 0");
  }
  if (w.concurrency < 0 || (w.concurrency == 0 && !(w.rate > 0))) {
    return absl::InvalidArgumentError("give --concurrency (closed loop) or --rate (open loop)");
  }
  if (w.prompt.min < 1 || w.prompt.max < w.prompt.min || w.output.min < 1 ||
      w.output.max < w.output.min) {
    return absl::InvalidArgumentError("prompt and output lengths: 1 <= min <= max");
  }
  if (kv.blocks_per_dp < 1 || kv.block_size < 1) {
    return absl::InvalidArgumentError("the KV pool holds no block");
  }
  const ModelConfig& cfg = model.config();
  VirtualClock clock;
  Recorder rec(&clock);
  options.clock = &clock;
  options.observer = &rec;
  const PlanLimits limits{.vocab_size = cfg.vocab_size,
                          .dp_size = model.plan().ep,
                          .max_step_tokens = std::max(options.step_token_budget, 1),
                          .max_context = cfg.max_position_embeddings,
                          .num_blocks = kv.blocks_per_dp,
                          .block_size = kv.block_size};
  SimulatedExecutor exec(&model, &clock, limits, (cfg.eos_token_id + 1) % cfg.vocab_size, host);
  const auto turnaround = std::chrono::duration_cast<VirtualClock::Duration>(
      std::chrono::duration<double>(w.turnaround_s));
  std::vector<std::unique_ptr<BlockAllocator>> pools;
  std::vector<BlockAllocator*> allocators;
  for (int d = 0; d < model.plan().ep; ++d) {
    pools.push_back(std::make_unique<BlockAllocator>(kv.blocks_per_dp, kv.block_size));
    allocators.push_back(pools.back().get());
  }
  // Declared before the scheduler, which may still call its sinks (and so `submit`) as it
  // stops.
  std::mt19937_64 rng(w.seed);
  auto length = [&](const LengthRange& r) {
    return std::uniform_int_distribution<int>(r.min, r.max)(rng);
  };
  int submitted = 0, refused = 0;
  absl::Status error;
  std::function<void()> submit;
  Scheduler sched(&exec, /*tokenizer=*/nullptr, cfg, options, allocators);
  submit = [&] {
    if (submitted >= w.requests || !error.ok()) return;
    ++submitted;
    GenerateRequest req;
    req.prompt_ids.assign(length(w.prompt), 1);
    req.max_tokens = length(w.output);
    req.stop_at_eos = false;
    std::function<void()> next;
    if (w.concurrency > 0) {  // closed loop: this client's next request when this one ends
      next = [&] { clock.At(clock.Now() + turnaround, submit); };
    }
    auto r = sched.Submit(std::move(req), std::make_shared<EndSink>(std::move(next)));
    if (r.ok()) return;
    if (absl::IsResourceExhausted(r.status())) {
      ++refused;
      if (w.concurrency > 0) clock.At(clock.Now(), submit);
      return;
    }
    error = r.status();
  };
  if (w.concurrency > 0) {
    for (int i = 0; i < std::min(w.concurrency, w.requests); ++i) clock.At(clock.Now(), submit);
  } else {
    std::exponential_distribution<double> gap(w.rate);
    double t = 0;
    for (int i = 0; i < w.requests; ++i) {
      clock.At(clock.start() + std::chrono::duration_cast<VirtualClock::Duration>(
                                   std::chrono::duration<double>(t)),
               submit);
      t += gap(rng);
    }
  }
  clock.AdvanceToNextEvent();
  while (error.ok()) {
    const Scheduler::Progress p = sched.RunOnce();
    if (p == Scheduler::Progress::kStopped) break;
    if (p == Scheduler::Progress::kIdle && !clock.AdvanceToNextEvent()) break;
  }
  RETURN_IF_ERROR(error);
  RETURN_IF_ERROR(sched.failure());
  if (rec.failed > 0) return absl::InternalError(absl::StrCat(rec.failed, " requests failed"));

  ServingReport r;
  r.requests = rec.ended;
  r.refused = refused;
  // To the last request's end (a client's turnaround after it is not part of the run).
  r.seconds = rec.ended > 0 ? rec.last_end : clock.Elapsed();
  r.prompt_tokens = rec.prompt_tokens;
  r.output_tokens = rec.output_tokens;
  if (r.seconds > 0) {
    r.output_tokens_per_s = static_cast<double>(r.output_tokens) / r.seconds;
    r.output_tokens_per_s_per_rank = r.output_tokens_per_s / model.world();
  }
  r.ttft = PercentilesOf(rec.ttft);
  r.itl = PercentilesOf(rec.itl);
  r.e2e = PercentilesOf(rec.e2e);
  r.queue = PercentilesOf(rec.queue);
  r.steps = exec.steps();
  if (r.steps > 0) {
    const double n = static_cast<double>(r.steps);
    r.mean_step_s = exec.seconds() / n;
    r.mean_host_s = exec.host_seconds() / n;
    r.mean_front_end_cores_s = exec.front_end_cores_seconds() / n;
    r.mean_tokens_per_step = static_cast<double>(rec.tokens) / n;
    const StepBreakdown& b = exec.breakdown();
    r.mean_breakdown = {.weights_s = b.weights_s / n, .attention_s = b.attention_s / n,
                        .dispatch_s = b.dispatch_s / n, .combine_s = b.combine_s / n,
                        .head_s = b.head_s / n, .control_s = b.control_s / n,
                        .bubble_s = b.bubble_s / n, .cores_s = b.cores_s / n,
                        .imbalance_s = b.imbalance_s / n};
  }
  StepCost whole;
  whole.seconds = exec.seconds();
  whole.weight_bytes_read = exec.weight_bytes_read();
  whole.kv_bytes_read = exec.kv_bytes_read();
  whole.flops = exec.flops();
  r.s_mbu = model.SparseMbu(whole);
  r.s_mfu = model.SparseMfu(whole);
  for (double busy : exec.rank_busy_seconds()) {
    r.rank_utilisation.push_back(r.seconds > 0 ? busy / r.seconds : 0);
  }
  return r;
}

}  // namespace switchyard
