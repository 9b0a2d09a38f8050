// What a rank's main thread is doing, for the liveness channel's progress check
// (comm/liveness.h): the thread that runs the job's operations (a step, a liveness round, a
// status collection) brackets each with Begin()/End(); another thread reads it. Lock-free.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace switchyard {

class ProgressMeter {
 public:
  void Begin() { started_ns_.store(NowNs(), std::memory_order_release); }
  void End() {
    const int64_t now = NowNs();
    const int64_t started = started_ns_.load(std::memory_order_relaxed);
    if (started != 0) last_ns_.store(now - started, std::memory_order_relaxed);
    // The end time before "idle": a reader never sees idle with the previous end's time.
    ended_ns_.store(now, std::memory_order_release);
    done_.fetch_add(1, std::memory_order_release);
    started_ns_.store(0, std::memory_order_release);
  }

  struct Reading {
    uint64_t done = 0;    // operations finished
    int64_t busy_ns = 0;  // time in the current operation; 0 when between operations
    int64_t idle_ns = 0;  // time since the last operation ended (or since creation)
    int64_t last_ns = 0;  // duration of the last finished operation
  };
  Reading Read() const {
    const int64_t now = NowNs();
    Reading r;
    r.done = done_.load(std::memory_order_acquire);
    const int64_t started = started_ns_.load(std::memory_order_acquire);
    r.busy_ns = started != 0 ? std::max<int64_t>(1, now - started) : 0;
    r.idle_ns = started != 0 ? 0 : now - ended_ns_.load(std::memory_order_acquire);
    r.last_ns = last_ns_.load(std::memory_order_relaxed);
    return r;
  }

  // Begin() now, End() when it goes out of scope; does nothing for a null meter.
  class Scope {
   public:
    explicit Scope(ProgressMeter* meter) : meter_(meter) {
      if (meter_ != nullptr) meter_->Begin();
    }
    ~Scope() {
      if (meter_ != nullptr) meter_->End();
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    ProgressMeter* meter_;
  };

 private:
  static int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  std::atomic<uint64_t> done_{0};
  std::atomic<int64_t> started_ns_{0};  // steady-clock time of the current Begin; 0: idle
  std::atomic<int64_t> ended_ns_{NowNs()};
  std::atomic<int64_t> last_ns_{0};
};

}  // namespace switchyard
