#include "coordinator/server/serving_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace switchyard {
namespace {

using prometheus::ClientMetric;
using prometheus::Histogram;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Bucket bounds in seconds, from a millisecond to minutes: first-token and end-to-end times
// range from a cached decode to a long prompt queued behind others.
const Histogram::BucketBoundaries kLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1,     1.5,    2,     3,    5,     7.5,  10,    15,  20,   30,  60,  120, 300};
// Inter-token gaps and steps: a millisecond to a few seconds, finer below 100 ms.
const Histogram::BucketBoundaries kStepBuckets = {
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04,
    0.05,   0.075, 0.1,   0.15,  0.2,   0.3,    0.5,  0.75,  1,    2.5,  5};
// Tokens per step: powers of two up to the largest step budgets.
const Histogram::BucketBoundaries kTokenBuckets = {0,   1,   2,   4,    8,    16,   32,  64,
                                                   128, 256, 512, 1024, 2048, 4096, 8192};

// A family of plain (gauge or counter) series built at scrape time.
class Series {
 public:
  Series(std::vector<MetricFamily>* out, std::string name, std::string help, MetricType type)
      : out_(out), index_(out->size()) {
    MetricFamily& f = out->emplace_back();
    f.name = std::move(name);
    f.help = std::move(help);
    f.type = type;
  }
  void Add(double value, std::vector<ClientMetric::Label> labels = {}) {
    MetricFamily& f = (*out_)[index_];  // by index: later families may move the vector
    ClientMetric& m = f.metric.emplace_back();
    m.label = std::move(labels);
    if (f.type == MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
  }

 private:
  std::vector<MetricFamily>* out_;
  size_t index_;
};

ClientMetric::Label L(std::string name, std::string value) {
  return {std::move(name), std::move(value)};
}
ClientMetric::Label L(std::string name, int value) {
  return {std::move(name), std::to_string(value)};
}

void AddSchedulerSeries(const SchedulerStats& stats, const ServingInfo& info,
                        std::vector<MetricFamily>* out) {
  Series(out, "switchyard_serving", "1 while the server is ready and not draining (the health)",
         MetricType::Gauge)
      .Add(info.serving ? 1 : 0);
  Series(out, "switchyard_requests_running", "Requests admitted to the running batch",
         MetricType::Gauge)
      .Add(stats.running);
  Series(out, "switchyard_requests_waiting", "Requests queued for admission", MetricType::Gauge)
      .Add(stats.waiting);
  Series total(out, "switchyard_kv_blocks", "KV-cache blocks per data-parallel index",
               MetricType::Gauge);
  Series used(out, "switchyard_kv_blocks_used",
              "KV-cache blocks reserved by requests per data-parallel index", MetricType::Gauge);
  Series free(out, "switchyard_kv_blocks_free", "Free KV-cache blocks per data-parallel index",
              MetricType::Gauge);
  for (size_t dp = 0; dp < stats.total_blocks.size(); ++dp) {
    const int d = static_cast<int>(dp);
    const int f = dp < stats.free_blocks.size() ? stats.free_blocks[dp] : 0;
    total.Add(stats.total_blocks[dp], {L("dp", d)});
    used.Add(stats.total_blocks[dp] - f, {L("dp", d)});
    free.Add(f, {L("dp", d)});
  }
  Series(out, "switchyard_steps_total", "Forward steps the scheduler ran", MetricType::Counter)
      .Add(static_cast<double>(stats.steps));
  Series(out, "switchyard_prompt_tokens_total", "Prompt tokens prefilled", MetricType::Counter)
      .Add(static_cast<double>(stats.prompt_tokens));
  Series(out, "switchyard_generation_tokens_total", "Generated tokens fed back through the model",
         MetricType::Counter)
      .Add(static_cast<double>(stats.generated_tokens));
}

void AddClusterSeries(const ClusterStatusInfo& cluster, int max_pair_ranks,
                      std::vector<MetricFamily>* out) {
  Series compute(out, "switchyard_rank_compute_seconds_total",
                 "Seconds a rank spent computing inside forward steps", MetricType::Counter);
  Series wait(out, "switchyard_rank_wait_seconds_total",
              "Seconds a rank spent waiting on peers inside forward steps (expert dispatch, "
              "stage link, results); the straggler waits least",
              MetricType::Counter);
  Series steps(out, "switchyard_rank_steps_total", "Forward steps a rank ran", MetricType::Counter);
  Series weights(out, "switchyard_rank_weight_bytes", "Bytes of weights a rank holds",
                 MetricType::Gauge);
  Series kv(out, "switchyard_rank_kv_cache_bytes", "Bytes of KV cache a rank holds",
            MetricType::Gauge);
  Series experts(out, "switchyard_rank_experts",
                 "Experts a rank holds, summed over its layers (replicas included)",
                 MetricType::Gauge);
  Series sent(out, "switchyard_rank_dispatch_sent_bytes_total",
              "Bytes a rank's expert dispatcher sent to other ranks", MetricType::Counter);
  const int world = static_cast<int>(cluster.ranks.size());
  int num_layers = 0, num_experts = 0;
  for (const RankStatus& r : cluster.ranks) {
    const std::vector<ClientMetric::Label> rank = {L("rank", r.world_rank)};
    compute.Add(r.compute_seconds, rank);
    wait.Add(r.wait_seconds, rank);
    steps.Add(static_cast<double>(r.steps), rank);
    weights.Add(static_cast<double>(r.weight_bytes), rank);
    kv.Add(static_cast<double>(r.kv_bytes), rank);
    size_t held = 0;
    for (const std::vector<int>& layer : r.experts) held += layer.size();
    experts.Add(static_cast<double>(held), rank);
    double total = 0;
    for (uint64_t b : r.dispatch_bytes_sent) total += static_cast<double>(b);
    sent.Add(total, rank);
    num_layers = std::max(num_layers, r.layer_end);
  }
  if (world > 0 && world <= max_pair_ranks) {
    Series pairs(out, "switchyard_dispatch_sent_bytes_total",
                 "Bytes the expert dispatcher of rank `src` sent to rank `dst`",
                 MetricType::Counter);
    for (const RankStatus& r : cluster.ranks) {
      for (size_t dst = 0; dst < r.dispatch_bytes_sent.size(); ++dst) {
        if (static_cast<int>(dst) == r.world_rank) continue;
        pairs.Add(static_cast<double>(r.dispatch_bytes_sent[dst]),
                  {L("src", r.world_rank), L("dst", static_cast<int>(dst))});
      }
    }
  }
  Series routed(out, "switchyard_expert_routed_tokens_total",
                "Tokens the router sent to an expert (each token counts top-k times per layer)",
                MetricType::Counter);
  for (size_t l = 0; l < cluster.expert_token_counts.size(); ++l) {
    const std::vector<int64_t>& layer = cluster.expert_token_counts[l];
    num_experts = std::max(num_experts, static_cast<int>(layer.size()));
    for (size_t e = 0; e < layer.size(); ++e) {
      routed.Add(static_cast<double>(layer[e]),
                 {L("layer", static_cast<int>(l)), L("expert", static_cast<int>(e))});
    }
  }
  // Replicas per (layer, expert): how many ranks hold it.
  std::vector<std::vector<int>> replicas(num_layers, std::vector<int>(num_experts, 0));
  for (const RankStatus& r : cluster.ranks) {
    for (size_t i = 0; i < r.experts.size(); ++i) {
      const int layer = r.layer_begin + static_cast<int>(i);
      for (int e : r.experts[i]) {
        if (layer < num_layers && e >= 0 && e < num_experts) ++replicas[layer][e];
      }
    }
  }
  Series copies(out, "switchyard_expert_replicas", "Ranks holding a copy of an expert",
                MetricType::Gauge);
  for (int l = 0; l < num_layers; ++l) {
    for (int e = 0; e < num_experts; ++e) {
      copies.Add(replicas[l][e], {L("layer", l), L("expert", e)});
    }
  }
}

}  // namespace

ServingMetrics::ServingMetrics(ServingMetricsOptions options)
    : options_(options), registry_(std::make_shared<prometheus::Registry>()) {
  using prometheus::BuildCounter;
  using prometheus::BuildHistogram;
  requests_ = &BuildCounter()
                   .Name("switchyard_requests_total")
                   .Help("Requests served, by protocol, method and final status code")
                   .Register(*registry_);
  finished_ = &BuildCounter()
                   .Name("switchyard_request_finished_total")
                   .Help("Generations ended, by reason (stop, length, eos, cancelled, error)")
                   .Register(*registry_);
  auto histogram = [this](const char* name, const char* help) -> auto& {
    return BuildHistogram().Name(name).Help(help).Register(*registry_);
  };
  ttft_ = &histogram("switchyard_request_time_to_first_token_seconds",
                     "Time from a request's arrival at the scheduler to its first token")
               .Add({}, kLatencyBuckets);
  itl_ = &histogram("switchyard_request_inter_token_latency_seconds",
                    "Time between consecutive generated tokens of a request")
              .Add({}, kStepBuckets);
  e2e_ = &histogram("switchyard_request_e2e_latency_seconds",
                    "Time from a request's arrival at the scheduler to its final event")
              .Add({}, kLatencyBuckets);
  queue_ = &histogram("switchyard_request_queue_seconds",
                      "Time a request waited before admission to the running batch")
                .Add({}, kLatencyBuckets);
  step_time_ = &histogram("switchyard_step_duration_seconds",
                          "Time of one forward step of the whole job, plan to results")
                    .Add({}, kStepBuckets);
  auto& tokens = histogram("switchyard_step_tokens", "Tokens in one forward step, by kind");
  prefill_step_tokens_ = &tokens.Add({{"kind", "prefill"}}, kTokenBuckets);
  decode_step_tokens_ = &tokens.Add({{"kind", "decode"}}, kTokenBuckets);
}

ServingMetrics::~ServingMetrics() = default;

void ServingMetrics::CountRequest(const std::string& protocol, const std::string& method,
                                  const std::string& code) {
  requests_->Add({{"protocol", protocol}, {"method", method}, {"code", code}}).Increment();
}

void ServingMetrics::OnStep(const StepRecord& step) {
  step_time_->Observe(step.seconds);
  prefill_step_tokens_->Observe(step.prefill_tokens);
  decode_step_tokens_->Observe(step.decode_tokens);
}

void ServingMetrics::OnTokenGap(double seconds) { itl_->Observe(seconds); }

void ServingMetrics::OnRequestEnd(const RequestTimings& t) {
  finished_->Add({{"reason", t.failed ? "error" : FinishReasonName(t.finish_reason)}}).Increment();
  if (t.queue_seconds >= 0) queue_->Observe(t.queue_seconds);
  if (t.first_token_seconds >= 0) ttft_->Observe(t.first_token_seconds);
  e2e_->Observe(t.total_seconds);
}

std::string ServingMetrics::Render(const ClusterStatusInfo& cluster, const SchedulerStats& stats,
                                   const ServingInfo& info) const {
  std::vector<MetricFamily> families = registry_->Collect();
  Series(&families, "switchyard_info", "The served model and Switchyard's version",
         MetricType::Gauge)
      .Add(1, {L("model", info.model), L("version", info.version), L("ep", cluster.ep),
               L("pp", cluster.pp)});
  AddSchedulerSeries(stats, info, &families);
  AddClusterSeries(cluster, options_.max_pair_ranks, &families);
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace switchyard
