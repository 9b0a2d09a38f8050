// One generation run from an HTTP handler thread (cpp-httplib serves each connection on a
// thread of its own, which may block): submitted to the queue, its events taken as they come
// (streaming) or all at once (WaitResult), and cancelled when the handler gives up on it
// (the client went away) or is destroyed before the request finished.
//
//   ASSIGN_OR_RETURN(auto gen, HttpGeneration::Submit(queue, std::move(request)));
//   while (auto event = gen->Next(absl::Seconds(1))) { ... if (client gone) gen->Cancel(); }
//
// Thread-safety: the queue's thread delivers events; one handler thread uses the object.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/generation_queue.h"
#include "coordinator/server/generation_result.h"

namespace switchyard {

class HttpGeneration {
 public:
  // Submits `request`; Submit's errors pass through (kResourceExhausted: queue full;
  // kUnavailable: draining or failed; kInvalidArgument).
  static absl::StatusOr<std::unique_ptr<HttpGeneration>> Submit(GenerationQueue* queue,
                                                                GenerateRequest request);
  ~HttpGeneration();  // cancels the request unless it finished

  HttpGeneration(const HttpGeneration&) = delete;
  HttpGeneration& operator=(const HttpGeneration&) = delete;

  // The next event, waiting up to `timeout`; nullopt when none came in time or the final
  // event was already taken (see finished()). Pending deltas are merged into one event.
  std::optional<RequestEvent> Next(absl::Duration timeout);
  // Every event until the final one: the whole result, or the final event's error
  // (kCancelled for a cancelled request). `client_gone`, when given, is asked every 100 ms
  // while waiting; once it says yes the request is cancelled (its KV freed at the next step).
  absl::StatusOr<GenerationResult> WaitResult(std::function<bool()> client_gone = nullptr);
  // Ends the request at the next step boundary (its KV is freed then). Idempotent.
  void Cancel();
  bool finished() const { return finished_taken_; }

 private:
  class Sink;
  HttpGeneration(GenerationQueue* queue, std::shared_ptr<Sink> sink)
      : queue_(queue), sink_(std::move(sink)) {}

  GenerationQueue* const queue_;
  std::shared_ptr<Sink> sink_;
  RequestId id_ = -1;
  bool finished_taken_ = false;
  bool cancelled_ = false;
};

}  // namespace switchyard
