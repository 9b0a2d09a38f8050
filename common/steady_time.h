// A steady (monotonic) clock as absl::Time, for deadlines and timeouts: durations compose
// with absl's arithmetic, and a change or slew of the wall clock (NTP) never shortens or
// stretches a wait.
#pragma once

#include <chrono>
#include <cstdint>

#include "absl/time/time.h"

namespace switchyard {

inline absl::Time SteadyNow() {
  return absl::UnixEpoch() + absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

// Nanoseconds on the steady clock (an arbitrary origin): for durations.
inline int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Adds the steady time from its construction to its destruction to `*total` (nanoseconds).
class AddElapsedNanos {
 public:
  explicit AddElapsedNanos(int64_t* total) : total_(total), start_(SteadyNanos()) {}
  ~AddElapsedNanos() { *total_ += SteadyNanos() - start_; }
  AddElapsedNanos(const AddElapsedNanos&) = delete;
  AddElapsedNanos& operator=(const AddElapsedNanos&) = delete;

 private:
  int64_t* total_;
  int64_t start_;
};

}  // namespace switchyard
