// The serving job's Prometheus metrics (prometheus-cpp's registry and text format), served at
// /metrics by the HTTP front end. Two kinds of series:
// - events, counted as they happen: requests by protocol, method and final code (the front
//   ends call CountRequest), and the scheduler's timings (this class is its
//   SchedulerObserver): time to first token, inter-token latency, end-to-end latency, queue
//   time, step time and tokens per step;
// - state, read when scraped: the scheduler's counters (running, waiting, KV blocks per
//   data-parallel index) and the cluster status the coordinator refreshes every second
//   through the periodic status round (per rank compute/wait time and dispatched bytes, per
//   layer and expert routed tokens, experts per rank), so nothing is added to a step.
// The names, units and labels are listed in docs/observability.md.
//
//   ServingMetrics metrics({.max_pair_ranks = 64});
//   SchedulerOptions opts{.observer = &metrics};
//   metrics.CountRequest("grpc", "switchyard.v1.Switchyard/Generate", "OK");
//   std::string text = metrics.Render(cluster_status, scheduler.Stats(), info);
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <memory>
#include <string>

#include "coordinator/generation_queue.h"
#include "coordinator/server/cluster_status.h"

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
class Histogram;
}  // namespace prometheus

namespace switchyard {

struct ServingMetricsOptions {
  // The rank x rank matrix of dispatched bytes is exported as one series per pair up to this
  // world size; beyond it, only per-rank totals (the full matrix stays in GetClusterStatus).
  int max_pair_ranks = 64;
};

// Labels of the constant info series.
struct ServingInfo {
  std::string model;
  std::string version;
  bool serving = false;  // ready and not draining (the health)
};

class ServingMetrics final : public SchedulerObserver {
 public:
  explicit ServingMetrics(ServingMetricsOptions options = {});
  ~ServingMetrics() override;

  // One finished request of `protocol` ("grpc", "http") to `method` that ended with `code`
  // (the gRPC code name, or the HTTP status).
  void CountRequest(const std::string& protocol, const std::string& method,
                    const std::string& code);

  void OnStep(const StepRecord& step) override;
  void OnTokenGap(double seconds) override;
  void OnRequestEnd(const RequestTimings& timings) override;

  // Every series in Prometheus's text exposition format (version 0.0.4).
  std::string Render(const ClusterStatusInfo& cluster, const SchedulerStats& stats,
                     const ServingInfo& info) const;

 private:
  const ServingMetricsOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* finished_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* itl_;
  prometheus::Histogram* e2e_;
  prometheus::Histogram* queue_;
  prometheus::Histogram* step_time_;
  prometheus::Histogram* prefill_step_tokens_;
  prometheus::Histogram* decode_step_tokens_;
};

}  // namespace switchyard
