// Byte-progress reporting for long operations (checkpoint loading).
//
//   ByteProgress progress("loading", total_bytes);
//   for (...) progress.Add(n);
//   progress.Finish();
//
// Prints "loading 1.2 GiB / 90.0 GiB (1.1 GiB/s)" on one refreshing line of stderr, only when
// stderr is a terminal and the operation has run for more than a second. Not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace switchyard {

class ByteProgress {
 public:
  ByteProgress(std::string label, uint64_t total_bytes);
  ~ByteProgress();
  void Add(uint64_t bytes);
  void Finish();

  // Human-readable size, e.g. "1.5 GiB".
  static std::string FormatBytes(double bytes);

 private:
  void Print(bool final_line);

  std::string label_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool enabled_;
  bool printed_ = false;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
};

}  // namespace switchyard
