// Continuous-batching scheduler: the coordinator's single thread that owns the step executor.
//
//   Scheduler sched(executor, &tokenizer, cfg, {.max_queue = 256, ...}, dp_allocators);
//   sched.Start();
//   ASSIGN_OR_RETURN(RequestId id, sched.Submit(std::move(request), sink));
//   ...                                // sink->OnEvent() is called from the scheduler thread
//   sched.Cancel(id);                   // from any thread; takes effect at the next step
//   sched.Drain(); sched.Stop();
//
// Each step, finished or cancelled sequences leave, waiting requests join in FCFS order while
// KV blocks are free (on the data-parallel index with the most free blocks), and prefill
// chunks and decode tokens are mixed under a per-step token budget, so a long prompt is
// prefilled in chunks between other requests' decode steps. Sampling uses each request's seed
// and the index of the generated token, so output does not depend on batching.
//
// Thread-safety: Submit, Cancel, Stats, Drain and Stop are thread-safe; sinks are called on
// the scheduler thread and must not block.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/block_allocator.h"
#include "coordinator/finish_reason.h"
#include "coordinator/generation_queue.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "worker/step.h"

namespace switchyard {

// Where the scheduler's time comes from: the steady clock when serving, a virtual clock when
// a simulation drives it (the cluster simulator advances it by each simulated step's cost).
// Used for every timing the scheduler records or reports (queue time, TTFT, inter-token gaps,
// step time) and for its periodic heartbeat. Must be thread-safe when Start() is used.
class SchedulerClock {
 public:
  virtual ~SchedulerClock() = default;
  virtual std::chrono::steady_clock::time_point Now() const = 0;
};

struct SchedulerOptions {
  int max_queue = 256;          // waiting requests (beyond free running slots) before
                                // Submit answers kUnavailable
  int max_running = 64;         // sequences decoding at once (per job)
  int step_token_budget = 512;  // tokens per step per data-parallel rank (decode + prefill)
  int prefill_chunk = 256;      // most prompt tokens one sequence prefills per step
  int max_stop_strings = 8;
  int max_stop_length = 64;
  absl::Duration heartbeat = absl::Seconds(1);  // idle liveness round (distributed jobs)
  // Borrowed, outlives the scheduler; receives step and request timings. Null: none.
  SchedulerObserver* observer = nullptr;
  // Runs on the scheduler thread after every step, between steps (expert rebalancing:
  // coordinator/rebalancer.h); an error fails every request as a failed step does.
  std::function<absl::Status()> after_step;
  // Borrowed, outlives the scheduler. Null: the steady clock.
  const SchedulerClock* clock = nullptr;
};

class Scheduler : public GenerationQueue {
 public:
  // `executor`, `tokenizer` and the allocators must outlive the scheduler. `heartbeat`, when
  // set, runs on the scheduler thread every options.heartbeat, idle or between steps: the
  // distributed liveness check and cluster-status refresh. Its error fails every request.
  Scheduler(StepExecutor* executor, const Tokenizer* tokenizer, const ModelConfig& config,
            const SchedulerOptions& options, std::vector<BlockAllocator*> allocators,
            std::function<absl::Status()> heartbeat = nullptr);
  ~Scheduler();

  void Start();
  // Validates against the scheduler's own limits and queues the request.
  // Errors: kInvalidArgument (prompt + max_tokens over the context; a request whose KV need
  // exceeds a whole data-parallel pool; too many/too long stop strings; logprobs over
  // kMaxTopLogprobs),
  // kResourceExhausted (queue full: max_queue waiting beyond the running slots still free;
  // retry later), kUnavailable (draining, or the executor failed).
  absl::StatusOr<RequestId> Submit(GenerateRequest request,
                                   std::shared_ptr<RequestSink> sink) override;
  // Removes the request at the next step boundary; its sink gets a final event with
  // finish_reason kCancelled. Unknown or finished ids are ignored.
  void Cancel(RequestId id) override;
  // Stop admitting (Submit answers kUnavailable) and return once in-flight requests finished.
  void Drain();
  // Ends whatever remains and joins the thread: with `reason` (an error) when given, so
  // that a drain that ran out of time tells clients why (kUnavailable: retry elsewhere),
  // else as cancelled.
  void Stop(absl::Status reason = absl::OkStatus());
  SchedulerStats Stats() const override;

  // Simulation: instead of Start(), the caller's thread runs the loop one iteration at a time
  // (never together with Start()). Each call takes cancellations and new requests, admits
  // what fits, and runs one step when any sequence is running; it never waits.
  enum class Progress { kStepped, kIdle, kStopped };
  Progress RunOnce();
  // Set when a step failed; the job must end.
  absl::Status failure() const;

 private:
  struct Sequence;
  void Loop();
  // One iteration of the loop: `may_wait` lets it wait for work (up to the heartbeat).
  Progress Iterate(bool may_wait);
  // Moves cancelled and new requests; returns false when the loop should end.
  bool TakeWork(std::vector<std::unique_ptr<Sequence>>* admitted, bool may_wait);
  std::chrono::steady_clock::time_point Now() const;
  void Admit(std::vector<std::unique_ptr<Sequence>>* admitted);
  void BuildPlan();
  void ApplyResult();
  // Frees the sequence's blocks and sends its final event (`ev` may carry the last ids).
  void Finish(Sequence* s, FinishReason reason, absl::Status error = absl::OkStatus(),
              RequestEvent ev = {});
  void FailAll(const absl::Status& error);
  // Appends one generated token: text, stop strings, limits. Returns the finish reason when
  // the sequence is done (its remaining text is then sent by Finish).
  std::optional<FinishReason> Append(Sequence* s, int32_t token, RequestEvent* event);
  void PublishStats(int64_t prompt_tokens, int64_t generated_tokens);

  StepExecutor* executor_;
  const Tokenizer* tokenizer_;
  const ModelConfig config_;
  const SchedulerOptions options_;
  std::vector<BlockAllocator*> allocators_;  // scheduler thread only
  std::function<absl::Status()> heartbeat_;
  SamplingScratch logprob_scratch_;  // scheduler thread only

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> waiting_;  // GUARDED_BY(mu_)
  std::vector<RequestId> cancelled_;                // GUARDED_BY(mu_)
  bool draining_ = false;                           // GUARDED_BY(mu_)
  bool stopping_ = false;                           // GUARDED_BY(mu_)
  absl::Status stop_reason_;                        // GUARDED_BY(mu_)
  absl::Status failure_;                            // GUARDED_BY(mu_)
  SchedulerStats stats_;                            // GUARDED_BY(mu_)
  RequestId next_id_ = 1;                           // GUARDED_BY(mu_)

  // Scheduler thread only.
  std::vector<std::unique_ptr<Sequence>> running_;
  StepPlan plan_;
  StepResult result_;
  std::vector<Sequence*> plan_seqs_;  // the sequence of each plan entry
  std::vector<std::unique_ptr<Sequence>> admitted_;
  std::chrono::steady_clock::time_point last_heartbeat_{};
  std::thread thread_;
};

}  // namespace switchyard
