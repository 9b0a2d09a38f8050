// Virtual time for simulations that drive the real Scheduler (the cluster simulator of the
// scaling studies): a SchedulerClock that moves only when told, and events (request arrivals)
// that run at their own times while it moves.
//
//   VirtualClock clock;
//   clock.At(clock.Now() + 5ms, [&] { scheduler.Submit(request, sink); });  // an arrival
//   SchedulerOptions opts{.clock = &clock};
//   ...  // the simulated executor, in Execute: clock.Advance(step_cost);
//   while (scheduler.RunOnce() != kStopped) { if idle: clock.AdvanceToNextEvent() or stop }
//
// Advance runs every event due within the span in time order, each with the clock set to its
// own time (so a request arriving in the middle of a step is stamped when it arrived, as on a
// real server), then leaves the clock at the span's end. Not thread-safe: one thread runs the
// simulation, the scheduler's RunOnce included.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>

#include "coordinator/scheduler.h"

namespace switchyard {

class VirtualClock final : public SchedulerClock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  // Starts at `start` (by default one hour after the steady clock's epoch, so that no
  // recorded time equals a default-constructed time point).
  explicit VirtualClock(TimePoint start = TimePoint(std::chrono::hours(1)))
      : start_(start), now_(start) {}

  TimePoint Now() const override { return now_; }
  // Seconds since the start.
  double Elapsed() const { return std::chrono::duration<double>(now_ - start_).count(); }
  TimePoint start() const { return start_; }

  // Runs `event` when the clock reaches `at` (at once, on the next Advance, if it is already
  // past). Events at the same time run in the order they were added.
  void At(TimePoint at, std::function<void()> event);
  // Moves the clock forward by `d` (not below zero), running the events due on the way.
  void Advance(Duration d);
  void AdvanceSeconds(double s);
  // Moves the clock to the next pending event's time and runs the events due then. False
  // when none is pending.
  bool AdvanceToNextEvent();
  size_t pending_events() const { return events_.size(); }

 private:
  void RunUntil(TimePoint t);

  TimePoint start_;
  TimePoint now_;
  std::multimap<TimePoint, std::function<void()>> events_;
};

}  // namespace switchyard
