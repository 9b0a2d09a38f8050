// The cluster simulator's serving half: the real Scheduler (continuous batching, admission by
// KV blocks, chunked prefill) in virtual time, over an executor whose steps cost what the
// cost model (study/cost_model.h) says, so the policy simulated is the policy shipped.
//
//   CostModel model(cfg, plan, cluster, RoutingModel::Uniform(cfg));
//   Workload w{.requests = 200, .concurrency = 16, .prompt = {512, 512}, .output = {128, 128}};
//   ASSIGN_OR_RETURN(ServingReport r, SimulateServing(model, sched_options, kv, w));
//   // r.output_tokens_per_s, r.ttft.p50, r.itl.p99, r.mean_breakdown, ...
//
// Deterministic: the same inputs give the same report (arrivals and lengths come from a
// seeded generator; nothing reads a real clock).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/scheduler.h"
#include "coordinator/virtual_clock.h"
#include "study/cost_model.h"
#include "worker/step.h"

namespace switchyard {

// What the serving front end costs beyond the ranks' steps. 0 for a front end and clients on
// cores of their own. bench/validate_simulator.py measures them with a model whose steps
// cost next to nothing.
// - step_s, token_s: time the next step waits for, per step (rank 0 scheduling, building the
//   plan, handing the results to the streams) and per token delivered (detokenising, the
//   stream write).
// - cpu_step_s, cpu_token_s: CPU time that runs beside the steps on rank 0's node, per step and
//   per token delivered: the server's network threads (gRPC) and clients on the same machine.
//   Where the operation costs give the node's CPUs, it takes turns on them with the ranks: a
//   step and the front end's wait after it last at least the node's work (the ranks' core
//   time, the wait and this) over its CPUs; and where the ranks' threads fill every CPU, the
//   step lasts this much longer (each slice it runs stops a rank the others wait for).
struct HostCosts {
  double step_s = 0;
  double token_s = 0;
  double cpu_step_s = 0;
  double cpu_token_s = 0;
};

// A StepExecutor whose steps take no real time: each checks the plan against `limits`
// (ValidatePlan, as every executor does), advances `clock` by the cost model's time for it
// (its sequences' data-parallel indices, chunk lengths, positions and head rows) and then by
// the front end's cost for it (`host`: per step and per sampled token; then, where the node
// of rank 0 has no cores to spare for the front end's CPU work, the turns it takes), and
// samples token
// `token` for every sampled entry. Keeps what it ran.
class SimulatedExecutor final : public StepExecutor {
 public:
  // `model` and `clock` must outlive the executor.
  SimulatedExecutor(const CostModel* model, VirtualClock* clock, const PlanLimits& limits,
                    int32_t token, HostCosts host = {});

  absl::Status Execute(const StepPlan& plan, StepResult* result) override;
  int max_step_tokens() const override { return limits_.max_step_tokens; }
  bool records_routing() const override { return false; }
  absl::StatusOr<std::vector<RankStatus>> CollectStatus() override;

  int64_t steps() const { return steps_; }
  double seconds() const { return seconds_; }        // summed step times
  double host_seconds() const { return host_seconds_; }  // summed front-end costs
  // Summed time the steps lost to the front end's CPU work (also in breakdown().cores_s).
  double front_end_cores_seconds() const { return front_end_cores_s_; }
  const StepBreakdown& breakdown() const { return sum_; }  // summed over steps
  double weight_bytes_read() const { return weight_bytes_; }
  double kv_bytes_read() const { return kv_bytes_; }
  double flops() const { return flops_; }
  const std::vector<double>& rank_busy_seconds() const { return busy_; }

 private:
  const CostModel* model_;
  VirtualClock* clock_;
  PlanLimits limits_;
  int32_t token_;
  HostCosts host_;
  int64_t steps_ = 0;
  double seconds_ = 0, host_seconds_ = 0, front_end_cores_s_ = 0, weight_bytes_ = 0,
         kv_bytes_ = 0, flops_ = 0;
  StepBreakdown sum_;
  std::vector<double> busy_;
};

// A length drawn uniformly from [min, max].
struct LengthRange {
  int min = 128;
  int max = 128;
};

struct Workload {
  int requests = 100;
  // Closed loop: this many clients, each sending its next request when its last one ends
  // (as `switchyard loadgen --concurrency` does). 0: open loop at `rate`.
  int concurrency = 1;
  double rate = 0;  // open loop: Poisson arrivals per second
  LengthRange prompt{512, 512};
  LengthRange output{128, 128};
  uint64_t seed = 1;
  // Closed loop: from a request's last token to the client's next request reaching the
  // scheduler (the client's turnaround and the stream's set-up).
  double turnaround_s = 0;
};

struct Percentiles {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
};
Percentiles PercentilesOf(std::vector<double> v);

struct ServingReport {
  int requests = 0;   // completed
  int refused = 0;    // refused by the scheduler (queue full, too long)
  double seconds = 0;  // virtual time from the first arrival to the last token
  int64_t prompt_tokens = 0, output_tokens = 0;
  double output_tokens_per_s = 0;
  double output_tokens_per_s_per_rank = 0;
  Percentiles ttft, itl, e2e, queue;  // seconds
  int64_t steps = 0;
  double mean_step_s = 0;
  double mean_host_s = 0;  // the front end's cost per step (HostCosts)
  // Of mean_step_s: what a step lost to the front end's CPU work (in mean_breakdown.cores_s).
  double mean_front_end_cores_s = 0;
  double mean_tokens_per_step = 0;
  StepBreakdown mean_breakdown;  // per step
  double s_mbu = 0, s_mfu = 0;   // over the whole run
  std::vector<double> rank_utilisation;  // busy seconds over the run's seconds, per rank
};

struct KvPool {
  int blocks_per_dp = 0;  // KV blocks of each data-parallel index
  int block_size = 16;
};

// Runs `workload` through a Scheduler with `options` (its clock and observer are set here)
// over a SimulatedExecutor. Errors: kInvalidArgument for an empty workload or pool, or a
// request the scheduler can never run (its message); a step failure passes through.
absl::StatusOr<ServingReport> SimulateServing(const CostModel& model, SchedulerOptions options,
                                              const KvPool& kv, const Workload& workload,
                                              HostCosts host = {});

}  // namespace switchyard
