// What the serving front end needs from the scheduler: submit a tokenized request, cancel it,
// read the counters. A seam: Scheduler (coordinator/scheduler.h) implements it, front-end tests
// use a fake (coordinator/server/fake_generation_queue.h). Header-only, so sy_server depends
// on this interface without linking sy_coordinator.
//
//   ASSIGN_OR_RETURN(RequestId id, queue->Submit(std::move(request), sink));
//   ...                         // sink->OnEvent() is called on the queue's thread
//   queue->Cancel(id);          // from any thread
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/finish_reason.h"
#include "worker/step.h"

namespace switchyard {

using RequestId = int64_t;

struct GenerateRequest {
  std::vector<int32_t> prompt_ids;  // already tokenized (BOS included) and validated
  int max_tokens = 64;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings: generation ends before the first match
  bool stop_at_eos = true;
  // -1: none. Otherwise each generated token's log-probability and this many most likely
  // alternatives (at most kMaxTopLogprobs), from the model's distribution (TokenLogprobs).
  int logprobs = -1;
  // Each generated token's routing (TokenRouting): which experts of every layer produced it.
  bool return_routing = false;
};

inline constexpr int kMaxTopLogprobs = 20;

// The log-probability of one generated token, and the most likely alternatives at its place.
struct GeneratedLogprob {
  float logprob = 0;
  std::vector<TokenLogprob> top;
};

// The router's choices that produced one generated token (the forward pass of the row it was
// sampled from): per layer, the top-k experts by descending weight and their weights, both
// [num_hidden_layers * top_k], layer-major.
struct TokenRouting {
  int top_k = 0;
  std::vector<int32_t> experts;
  std::vector<float> weights;
};

// One message to the client. Deltas carry the ids and text produced since the last event.
struct RequestEvent {
  std::vector<int32_t> token_ids;
  std::vector<GeneratedLogprob> logprobs;  // one per token id when the request asked for them
  std::vector<TokenRouting> routing;       // likewise, with return_routing
  std::string text;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kLength;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  absl::Status error;  // set (with finished) when the request failed (e.g. kUnavailable)
};

class RequestSink {
 public:
  virtual ~RequestSink() = default;
  // Called on the queue's thread (the scheduler thread); must not block. After an event with
  // finished = true no further event comes.
  virtual void OnEvent(const RequestEvent& event) = 0;
};

struct SchedulerStats {
  int64_t steps = 0;
  int running = 0;
  int waiting = 0;
  std::vector<int> free_blocks;   // per data-parallel index
  std::vector<int> total_blocks;  // per data-parallel index
  int64_t generated_tokens = 0;
  int64_t prompt_tokens = 0;
  bool draining = false;
  bool failed = false;  // the executor failed: every request now gets kUnavailable
};

// What one step did, as the scheduler reports it to its observer.
struct StepRecord {
  double seconds = 0;      // the executor's step, plan to result
  int prefill_tokens = 0;  // prompt tokens the step ran
  int decode_tokens = 0;   // generated tokens the step fed back
};

// One request's life, reported once when it ends (finished, cancelled or failed). Times in
// seconds from Submit; a negative value: the request never got there.
struct RequestTimings {
  double queue_seconds = -1;        // Submit -> admitted to the running batch (KV reserved)
  double first_token_seconds = -1;  // Submit -> first generated token (time to first token)
  double total_seconds = 0;         // Submit -> its final event
  FinishReason finish_reason = FinishReason::kLength;
  bool failed = false;  // ended with an error (the cluster failed, a drain ran out)
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// Receives the scheduler's timings (the serving metrics implement it). Called on the
// scheduler thread; must be cheap and must not block.
class SchedulerObserver {
 public:
  virtual ~SchedulerObserver() = default;
  virtual void OnStep(const StepRecord& step) = 0;
  // The time between two consecutive generated tokens of one request (inter-token latency).
  virtual void OnTokenGap(double seconds) = 0;
  virtual void OnRequestEnd(const RequestTimings& timings) = 0;
};

class GenerationQueue {
 public:
  virtual ~GenerationQueue() = default;
  // Queues the request; `sink` receives its events. Errors: kInvalidArgument for a request
  // the queue can never run, kResourceExhausted when it is full (retry later), kUnavailable
  // when it takes no more (draining, failed).
  virtual absl::StatusOr<RequestId> Submit(GenerateRequest request,
                                           std::shared_ptr<RequestSink> sink) = 0;
  // Ends the request soon; its sink gets a final event with finish_reason kCancelled.
  // Unknown or finished ids are ignored. Thread-safe.
  virtual void Cancel(RequestId id) = 0;
  virtual SchedulerStats Stats() const = 0;
};

}  // namespace switchyard
