// A small fixed pool of threads for request preparation that can take long (tokenizing a
// large prompt), so that it never runs on the gRPC threads that serve other calls.
//
//   WorkPool pool(2, /*max_pending=*/1024);
//   if (!pool.Post([=] { ... })) return ResourceExhausted(...);   // the queue is full
//
// Jobs run in FIFO order. Thread-safe. The destructor runs the jobs still queued, then joins.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace switchyard {

class WorkPool {
 public:
  WorkPool(int threads, size_t max_pending);
  ~WorkPool();
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  // Queues `job`; false (and `job` is dropped) when max_pending jobs are already waiting.
  bool Post(std::function<void()> job);
  size_t max_pending() const { return max_pending_; }

 private:
  void Loop();

  const size_t max_pending_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                   // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

}  // namespace switchyard
