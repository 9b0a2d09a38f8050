// Byte-progress reporting for long operations (checkpoint loading).
//
//   ByteProgress progress("loading", total_bytes);
//   for (...) progress.Add(n);
//   progress.Finish();
//
// On a terminal (and when `terminal` is true), "loading 1.2 GiB / 90.0 GiB (1.1 GiB/s, 75 s
// left)" on one refreshing line of stderr once the operation has run for a second. Otherwise
// (under mpirun or srun, whose ranks' stderr is a pipe, or a log file) one log line of the
// same every 10 s, and a last one when it finishes, so a long load is never silent.
// Not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace switchyard {

class ByteProgress {
 public:
  ByteProgress(std::string label, uint64_t total_bytes, bool terminal = true);
  ~ByteProgress();
  void Add(uint64_t bytes);
  void Finish();
  // Called with (done, total) at the start, on every Add and at Finish (the liveness channel
  // carries it to rank 0, which logs the job's progress). Must be cheap.
  void set_observer(std::function<void(uint64_t done, uint64_t total)> observer);

  // Human-readable size, e.g. "1.5 GiB".
  static std::string FormatBytes(double bytes);

 private:
  void Print(bool final_line);
  std::string Line() const;

  std::function<void(uint64_t, uint64_t)> observer_;
  std::string label_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool on_terminal_;
  bool printed_ = false;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
};

}  // namespace switchyard
