// A steady (monotonic) clock as absl::Time, for deadlines and timeouts: durations compose
// with absl's arithmetic, and a change or slew of the wall clock (NTP) never shortens or
// stretches a wait.
#pragma once

#include <chrono>

#include "absl/time/time.h"

namespace switchyard {

inline absl::Time SteadyNow() {
  return absl::UnixEpoch() + absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

}  // namespace switchyard
