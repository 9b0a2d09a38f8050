#include "coordinator/rebalancer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "coordinator/expert_balance.h"

namespace switchyard {

Rebalancer::Rebalancer(DistributedExecutor* executor, PlacementPlan placement,
                       const ModelConfig& cfg, const RebalanceOptions& options)
    : executor_(executor), placement_(std::move(placement)), cfg_(cfg), options_(options) {}

std::vector<std::vector<double>> Rebalancer::Totals(const std::vector<RankStatus>& ranks) const {
  std::vector<std::vector<double>> t(cfg_.num_hidden_layers,
                                     std::vector<double>(cfg_.num_local_experts, 0));
  for (const RankStatus& r : ranks) {
    for (int l = r.layer_begin; l < r.layer_end; ++l) {
      const std::vector<int64_t>& counts = r.expert_tokens[l - r.layer_begin];
      for (size_t e = 0; e < counts.size() && e < t[l].size(); ++e) t[l][e] += counts[e];
    }
  }
  return t;
}

absl::Status Rebalancer::AfterStep() {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point now = Clock::now();
  ++steps_;
  if (last_step_ != Clock::time_point{}) {
    const double interval = std::chrono::duration<double>(now - last_step_).count();
    if (watching_) {
      watch_.longest_interval_s = std::max(watch_.longest_interval_s, interval);
      ++watch_.steps;
      if (watch_.intervals_s.size() < 64) watch_.intervals_s.push_back(interval);
    } else {
      recent_.push_back(interval);
      if (recent_.size() > kRecent) recent_.pop_front();
    }
  }
  last_step_ = now;
  if (watching_ && steps_ == watch_until_) {
    watching_ = false;
    EndWatch();
  }
  // Each call does at most one round with the ranks (a status round or one command), so no
  // interval between two steps holds more than one: the plan's status round, the preparation
  // command, every poll, and the switch each go between their own steps.
  absl::Status st = absl::OkStatus();
  if (prepare_next_) {
    prepare_next_ = false;
    st = executor_->PrepareExperts(pending_, planned_);
  } else if (switch_next_) {
    switch_next_ = false;
    st = Switch();
  } else if (pending_ > 0) {
    if ((steps_ - pending_step_) % std::max(1, options_.poll_steps) != 0) return st;
    st = PollPending();
  } else if (steps_ - window_start_step_ >= options_.interval_steps) {
    st = Plan();
    if (pending_ > 0) {  // a move starts: watch the steps until it is done
      std::vector<double> sorted(recent_.begin(), recent_.end());
      std::sort(sorted.begin(), sorted.end());
      watch_ = {.placement = pending_,
                .median_interval_s = sorted.empty() ? 0 : sorted[sorted.size() / 2],
                .longest_before_s = sorted.empty() ? 0 : sorted.back()};
      watching_ = true;
      watch_until_ = -1;
    }
  } else {
    return st;
  }
  if (watching_) {
    watch_.own_seconds += std::chrono::duration<double>(Clock::now() - now).count();
    // The switch happened in this call: the next interval holds it and the first step on
    // the new placement.
    if (pending_ == 0 && watch_until_ < 0) watch_until_ = steps_ + 1;
  }
  return st;
}

void Rebalancer::EndWatch() {
  // The baseline: how long the longest of `steps` consecutive intervals is without a move.
  const size_t k = static_cast<size_t>(watch_.steps);
  std::vector<double> maxima;
  for (size_t i = 0; k > 0 && i + k <= recent_.size(); ++i) {
    maxima.push_back(*std::max_element(recent_.begin() + i, recent_.begin() + i + k));
  }
  std::sort(maxima.begin(), maxima.end());
  // A move longer than the history: the longest of all of it.
  watch_.window_longest_before_s = !maxima.empty() ? maxima[maxima.size() / 2]
                                                   : watch_.longest_before_s;
  last_move_timing_ = watch_;
  std::vector<std::string> each;
  for (double x : watch_.intervals_s) each.push_back(absl::StrFormat("%.1f", 1e3 * x));
  if (static_cast<int64_t>(watch_.intervals_s.size()) < watch_.steps) each.push_back("...");
  spdlog::info(
      "rebalance: placement {}: longest step interval {:.1f} ms from the plan through the "
      "first step after the switch ({} intervals), {:.1f}x the median of the {} before the "
      "plan ({:.2f} ms; the longest of them {:.1f} ms; of {} consecutive ones, the longest "
      "is {:.1f} ms at the median); the rebalancer's own work on the step thread {:.1f} ms; "
      "intervals {} ms",
      watch_.placement, 1e3 * watch_.longest_interval_s, watch_.steps,
      watch_.median_interval_s > 0 ? watch_.longest_interval_s / watch_.median_interval_s : 0,
      recent_.size(), 1e3 * watch_.median_interval_s, 1e3 * watch_.longest_before_s,
      watch_.steps, 1e3 * watch_.window_longest_before_s, 1e3 * watch_.own_seconds,
      absl::StrJoin(each, ", "));
}

absl::Status Rebalancer::Plan() {
  ASSIGN_OR_RETURN(std::vector<RankStatus> ranks, executor_->CollectStatus());
  std::vector<std::vector<double>> totals = Totals(ranks);
  if (window_start_.empty()) window_start_.assign(totals.size(), std::vector<double>(totals[0].size(), 0));
  // The load planned from: this window's routed choices plus the earlier windows', fading by
  // `decay` per window (the router's choices do not depend on the placement, so the estimate
  // stays valid across moves). One window alone is noisy enough to move back and forth.
  if (load_.empty()) load_.assign(totals.size(), std::vector<double>(totals[0].size(), 0));
  int64_t choices = 0;
  for (size_t l = 0; l < totals.size(); ++l) {
    double layer = 0;
    for (size_t e = 0; e < totals[l].size(); ++e) {
      const double window = totals[l][e] - window_start_[l][e];
      load_[l][e] = options_.decay * load_[l][e] + window;
      layer += window;
    }
    choices = l == 0 ? static_cast<int64_t>(layer) : std::min(choices, static_cast<int64_t>(layer));
  }
  // The next window starts now, whatever this one decides.
  window_start_ = std::move(totals);
  window_start_step_ = steps_;
  if (choices < options_.min_choices) return absl::OkStatus();
  const std::vector<std::vector<double>>& load = load_;

  const int ep = placement_.ep;
  double current_max = 0, planned_max = 0, mean = 0;
  ExpertRanks planned = placement_.expert_ranks;
  bool changed = false;
  for (size_t l = 0; l < load.size(); ++l) {
    const LayerBalance now = EvaluateLayer(load[l], placement_.expert_ranks[l], ep);
    ASSIGN_OR_RETURN(LayerBalance better,
                     BalanceLayer(load[l], {.ep = ep, .redundant = options_.redundant}));
    current_max += now.max_load();
    mean += now.mean_load();
    if (better.max_load() < now.max_load()) {
      changed = changed || better.expert_ranks != planned[l];
      planned[l] = better.expert_ranks;
      planned_max += better.max_load();
    } else {
      planned_max += now.max_load();
    }
  }
  if (!changed || mean <= 0 || planned_max >= current_max ||
      planned_max > current_max * (1 - options_.min_gain)) {
    spdlog::debug("rebalance: window of {} steps: max/mean {:.3f}, a new placement would give {:.3f}",
                 options_.interval_steps, current_max / mean, planned_max / mean);
    return absl::OkStatus();
  }
  planned_ = std::move(planned);
  current_ratio_ = current_max / mean;
  planned_ratio_ = planned_max / mean;
  pending_ = ++generation_;
  pending_step_ = steps_;
  spdlog::info(
      "rebalance: the last {} steps routed {} choices per layer; max/mean rank load {:.3f} "
      "now, {:.3f} planned (--rebalance-redundant {}): preparing placement {}",
      options_.interval_steps, choices, current_ratio_, planned_ratio_, options_.redundant,
      pending_);
  prepare_next_ = true;  // after the next step
  return absl::OkStatus();
}

absl::Status Rebalancer::PollPending() {
  ASSIGN_OR_RETURN(std::vector<RankStatus> ranks, executor_->CollectStatus());
  for (const RankStatus& r : ranks) {
    if (r.experts_prepared < pending_) return absl::OkStatus();  // still reading in
  }
  switch_next_ = true;  // after the next step
  polled_ = std::move(ranks);
  return absl::OkStatus();
}

absl::Status Rebalancer::Switch() {
  RETURN_IF_ERROR(executor_->SwitchExperts(pending_));
  placement_.expert_ranks = std::move(planned_);
  ++moves_;
  spdlog::info(
      "rebalance: placement {} in use from step {} ({} steps after it was planned); max/mean "
      "rank load {:.3f} -> {:.3f} on its window",
      pending_, steps_, steps_ - pending_step_, current_ratio_, planned_ratio_);
  pending_ = 0;
  // The next window starts with the new placement (the load estimate carries on).
  window_start_ = Totals(polled_);
  polled_.clear();
  window_start_step_ = steps_;
  return absl::OkStatus();
}

}  // namespace switchyard
