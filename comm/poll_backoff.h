// How a communication wait polls (MPI requests, shared-memory flags): a few polls back to
// back; then, until kYieldWindow has passed without progress, polls that yield the core
// between tries (low latency when ranks have cores of their own, fair when they share them);
// then sleeps from kFirstSleep doubling up to kMaxSleep, so an idle rank costs nothing. Any
// progress resets all three.
//
//   PollBackoff backoff;
//   while (!done()) {
//     if (advanced) { backoff.Progressed(); continue; }
//     ...check the deadline and the job's failure...
//     backoff.Idle(SteadyNow());
//   }
#pragma once

#include <sched.h>

#include <algorithm>
#include <thread>

#include "absl/time/time.h"
#include "common/steady_time.h"

namespace switchyard {

class PollBackoff {
 public:
  static constexpr int kSpins = 50;
  static constexpr absl::Duration kYieldWindow = absl::Milliseconds(2);
  static constexpr absl::Duration kFirstSleep = absl::Microseconds(20);
  static constexpr absl::Duration kMaxSleep = absl::Milliseconds(1);

  PollBackoff() : progress_(SteadyNow()) {}

  void Progressed() {
    spins_ = 0;
    sleep_ = kFirstSleep;
    progress_ = SteadyNow();
  }

  // After a poll that found nothing new: return at once, yield the core, or sleep.
  void Idle(absl::Time now) {
    if (++spins_ < kSpins) return;
    if (now - progress_ < kYieldWindow) {
      sched_yield();
      return;
    }
    std::this_thread::sleep_for(absl::ToChronoMicroseconds(sleep_));
    sleep_ = std::min(sleep_ * 2, kMaxSleep);
  }

 private:
  int spins_ = 0;
  absl::Duration sleep_ = kFirstSleep;
  absl::Time progress_;
};

}  // namespace switchyard
