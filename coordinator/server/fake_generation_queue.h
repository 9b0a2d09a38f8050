// A scripted GenerationQueue for front-end tests. Like the scheduler it calls sinks on its
// own thread (never under its mutex) and answers Cancel with a final kCancelled event.
//
//   FakeGenerationQueue fake;
//   fake.PushScript(FakeGenerationQueue::TextScript(tok, " the jury", FinishReason::kEos));
//   ... a Generate call now receives one event per token, then a final kEos event.
//
// Thread-safe.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "coordinator/generation_queue.h"
#include "model/tokenizer.h"

namespace switchyard {

class FakeGenerationQueue final : public GenerationQueue {
 public:
  // How the fake answers one submitted request.
  struct Script {
    std::vector<RequestEvent> events;            // emitted in order; the last one may be final
    absl::Duration gap = absl::Milliseconds(1);  // pause before each event
    // After the events, emit nothing more until the request is cancelled.
    bool hold_until_cancel = false;
  };

  // One event per token of `text` (ids and text deltas as the scheduler would send them),
  // then a final event with `reason` and no deltas.
  static Script TextScript(const Tokenizer& tok, const std::string& text, FinishReason reason) {
    Script s;
    IncrementalDetokenizer detok(&tok);
    for (int32_t id : tok.Encode(text, /*add_bos=*/false)) {
      RequestEvent e;
      e.token_ids = {id};
      e.text = detok.Push(id);
      s.events.push_back(std::move(e));
    }
    RequestEvent last;
    last.text = detok.Flush();
    last.finished = true;
    last.finish_reason = reason;
    s.events.push_back(std::move(last));
    return s;
  }

  FakeGenerationQueue() : thread_([this] { Loop(); }) {}

  ~FakeGenerationQueue() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // The next Submit calls use these scripts in order; without one, TextScript-like default
  // events (" ok", kLength) are sent.
  void PushScript(Script script) {
    std::lock_guard lock(mu_);
    scripts_.push_back(std::move(script));
  }

  // While set (not OK), Submit answers this error.
  void SetSubmitError(absl::Status status) {
    std::lock_guard lock(mu_);
    submit_error_ = std::move(status);
  }

  void SetStats(SchedulerStats stats) {
    std::lock_guard lock(mu_);
    stats_ = std::move(stats);
  }

  absl::StatusOr<RequestId> Submit(GenerateRequest request,
                                   std::shared_ptr<RequestSink> sink) override {
    std::lock_guard lock(mu_);
    if (!submit_error_.ok()) return submit_error_;
    Job job;
    job.id = next_id_++;
    job.sink = std::move(sink);
    job.prompt_tokens = static_cast<int>(request.prompt_ids.size());
    if (!scripts_.empty()) {
      job.script = std::move(scripts_.front());
      scripts_.pop_front();
    } else {
      RequestEvent e;
      e.token_ids = {42};
      e.text = " ok";
      e.finished = true;
      job.script.events.push_back(e);
    }
    job.next_at = absl::Now() + job.script.gap;
    submitted_.push_back(std::move(request));
    jobs_.push_back(std::move(job));
    cv_.notify_all();
    return jobs_.back().id;
  }

  void Cancel(RequestId id) override {
    std::lock_guard lock(mu_);
    cancelled_ids_.push_back(id);
    for (Job& job : jobs_) {
      if (job.id == id) job.cancelled = true;
    }
    cv_.notify_all();
  }

  SchedulerStats Stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }

  // Every request submitted so far, in order.
  std::vector<GenerateRequest> submitted() const {
    std::lock_guard lock(mu_);
    return submitted_;
  }

  std::vector<RequestId> cancelled_ids() const {
    std::lock_guard lock(mu_);
    return cancelled_ids_;
  }

  // Waits until Cancel was called `count` times in all.
  bool WaitForCancels(size_t count, absl::Duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                        [&] { return cancelled_ids_.size() >= count; });
  }

  // Waits until no request is in flight.
  bool WaitIdle(absl::Duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return jobs_.empty(); });
  }

 private:
  struct Job {
    RequestId id = 0;
    std::shared_ptr<RequestSink> sink;
    Script script;
    size_t next = 0;
    absl::Time next_at;
    bool cancelled = false;
    int prompt_tokens = 0;
    int completion_tokens = 0;
  };

  // Picks the events due now (under the lock), then delivers them without it.
  void Loop() {
    std::unique_lock lock(mu_);
    while (!stopping_) {
      std::vector<std::pair<std::shared_ptr<RequestSink>, RequestEvent>> due;
      const absl::Time now = absl::Now();
      for (Job& job : jobs_) {
        if (job.cancelled) {
          RequestEvent e;
          e.finished = true;
          e.finish_reason = FinishReason::kCancelled;
          Finalize(&job, &e);
          due.emplace_back(job.sink, std::move(e));
          job.sink = nullptr;
          continue;
        }
        if (job.next >= job.script.events.size() || now < job.next_at) continue;
        RequestEvent e = job.script.events[job.next++];
        job.completion_tokens += static_cast<int>(e.token_ids.size());
        job.next_at = now + job.script.gap;
        if (e.finished) {
          Finalize(&job, &e);
          due.emplace_back(job.sink, std::move(e));
          job.sink = nullptr;
        } else {
          due.emplace_back(job.sink, std::move(e));
        }
      }
      std::erase_if(jobs_, [](const Job& j) { return j.sink == nullptr; });
      if (!due.empty()) {
        lock.unlock();
        for (auto& [sink, event] : due) sink->OnEvent(event);
        lock.lock();
        cv_.notify_all();  // WaitIdle
        continue;
      }
      cv_.wait_for(lock, std::chrono::milliseconds(1));
    }
  }

  static void Finalize(Job* job, RequestEvent* e) {
    if (e->prompt_tokens == 0) e->prompt_tokens = job->prompt_tokens;
    if (e->completion_tokens == 0) e->completion_tokens = job->completion_tokens;
  }

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Script> scripts_;
  std::vector<Job> jobs_;
  std::vector<GenerateRequest> submitted_;
  std::vector<RequestId> cancelled_ids_;
  absl::Status submit_error_;
  SchedulerStats stats_;
  RequestId next_id_ = 1;
  bool stopping_ = false;
  std::thread thread_;  // last: starts after the members above exist
};

}  // namespace switchyard
