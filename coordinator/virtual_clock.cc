#include "coordinator/virtual_clock.h"

#include <algorithm>
#include <utility>

namespace switchyard {

void VirtualClock::At(TimePoint at, std::function<void()> event) {
  events_.emplace(std::max(at, now_), std::move(event));
}

void VirtualClock::RunUntil(TimePoint t) {
  // An event may add events (a client that sends its next request): look again each time.
  while (!events_.empty() && events_.begin()->first <= t) {
    auto it = events_.begin();
    now_ = std::max(now_, it->first);
    std::function<void()> event = std::move(it->second);
    events_.erase(it);
    event();
  }
  now_ = std::max(now_, t);
}

void VirtualClock::Advance(Duration d) { RunUntil(now_ + std::max(d, Duration::zero())); }

void VirtualClock::AdvanceSeconds(double s) {
  Advance(std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s)));
}

bool VirtualClock::AdvanceToNextEvent() {
  if (events_.empty()) return false;
  RunUntil(events_.begin()->first);
  return true;
}

}  // namespace switchyard
