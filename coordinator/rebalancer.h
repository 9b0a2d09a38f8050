// Online expert rebalancing (serve --rebalance-interval): every `interval_steps` steps, rank 0
// plans a placement from the tokens each expert was routed in that window and, fading, the
// windows before (the ranks' own counters, collected in a status round between two steps),
// and when it lowers the most loaded rank's share enough, moves the job to it without
// stopping:
//
//   1. PrepareExperts (after the next step): every rank looks up the experts the new
//      placement gives it and reads them in beside the running ones, in the background,
//      while steps go on;
//   2. once every rank reports the preparation done (RankStatus::experts_prepared, polled
//      every few steps), SwitchExperts (after the next step): every rank binds its new
//      experts, moves its dispatcher to the new routing and releases the experts it no
//      longer holds, before the same next step.
// Each exchange with the ranks goes between its own pair of steps.
// Replicas compute the same function, so outputs do not change (up to rounding where a
// token's partial sums are added in another order: identical for top-2).
//
//   Rebalancer rebalancer(executor, session.placement, config, {.interval_steps = 256});
//   sched_opts.after_step = [&] { return rebalancer.AfterStep(); };
//
// Not thread-safe: AfterStep runs on the thread that runs the steps.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/placement.h"
#include "model/config.h"
#include "worker/distributed_executor.h"

namespace switchyard {

struct RebalanceOptions {
  int interval_steps = 0;  // steps per planning window (> 0)
  int redundant = 1;       // replicas beyond one per expert, per layer
  // Move only when the planned placement's summed per-layer maximum rank load is at least
  // this fraction below the current one's, on the same window.
  double min_gain = 0.05;
  // Routed (token, expert) choices a window needs before it is planned from, per layer.
  int64_t min_choices = 64;
  int poll_steps = 4;  // while a move is being prepared: ask the ranks every this many steps
  // The load planned from is each window's routed choices plus the earlier windows', weighed
  // down by this factor per window (0: the last window alone).
  double decay = 0.75;
};

class Rebalancer {
 public:
  // `executor` must outlive the rebalancer; `placement` is the job's current one.
  Rebalancer(DistributedExecutor* executor, PlacementPlan placement, const ModelConfig& cfg,
             const RebalanceOptions& options);

  // Call after every step. Errors: a collective or a move failed (the job must end).
  absl::Status AfterStep();

  const PlacementPlan& placement() const { return placement_; }
  int64_t moves() const { return moves_; }

  // How the last move went for the streams being served, from the step thread's own clock:
  // the longest interval between two steps from the plan through the first step on the new
  // placement (what a decoding stream saw as its longest gap: steps, plus the rebalancer's
  // own work between them), the median interval of the steps before the plan, and the time
  // the rebalancer spent on the step thread for it (planning, polls, the switch). Logged
  // when the move completes; zero before any.
  struct MoveTiming {
    int64_t placement = 0;
    double longest_interval_s = 0;
    double median_interval_s = 0;
    double longest_before_s = 0;  // the longest of the intervals the median is of
    // The same comparison without a move: over every run of `steps` consecutive intervals
    // before the plan, the longest one; the median of those (with fewer intervals than
    // `steps`, the longest of them).
    double window_longest_before_s = 0;
    double own_seconds = 0;
    int64_t steps = 0;  // intervals watched
    std::vector<double> intervals_s;  // the first 64 of them, in order (the log adds "...")
  };
  const MoveTiming& last_move_timing() const { return last_move_timing_; }

 private:
  // Routed choices per (layer, expert) summed over the ranks of each layer's stage.
  std::vector<std::vector<double>> Totals(const std::vector<RankStatus>& ranks) const;
  absl::Status Plan();
  absl::Status PollPending();
  absl::Status Switch();
  // The move's figures against the intervals before it: last_move_timing() and the log line.
  void EndWatch();

  DistributedExecutor* executor_;
  PlacementPlan placement_;
  ModelConfig cfg_;
  RebalanceOptions options_;
  int64_t steps_ = 0;
  int64_t window_start_step_ = 0;
  std::vector<std::vector<double>> window_start_;  // Totals at the window's start
  std::vector<std::vector<double>> load_;          // the decayed load estimate
  // The move in preparation (generation 0: none).
  int64_t pending_ = 0;
  bool prepare_next_ = false;  // planned: the ranks are told after the next step
  bool switch_next_ = false;   // every rank prepared: switch after the next step
  std::vector<RankStatus> polled_;  // the poll that found them prepared
  int64_t pending_step_ = 0;
  ExpertRanks planned_;
  double planned_ratio_ = 0, current_ratio_ = 0;
  int64_t generation_ = 0;
  int64_t moves_ = 0;

  // Step intervals (AfterStep to AfterStep): the last kRecent before a move, and the move's.
  static constexpr size_t kRecent = 64;
  std::chrono::steady_clock::time_point last_step_{};
  std::deque<double> recent_;  // oldest first
  bool watching_ = false;        // from the plan through the first step after the switch
  int64_t watch_until_ = -1;     // the step whose interval ends the watch
  MoveTiming watch_, last_move_timing_;
};

}  // namespace switchyard
