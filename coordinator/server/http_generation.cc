#include "coordinator/server/http_generation.h"

#include <chrono>
#include <utility>

namespace switchyard {

// Events queued by the scheduler's thread (never blocks: a push under a mutex).
class HttpGeneration::Sink final : public RequestSink {
 public:
  void OnEvent(const RequestEvent& event) override {
    {
      std::lock_guard lock(mu_);
      events_.push_back(event);
    }
    cv_.notify_one();
  }

  // Takes every pending event, merged (deltas concatenated; the final event's fields win).
  std::optional<RequestEvent> Take(absl::Duration timeout) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                      [this] { return !events_.empty(); })) {
      return std::nullopt;
    }
    RequestEvent merged = std::move(events_.front());
    events_.pop_front();
    while (!events_.empty() && !merged.finished) {
      RequestEvent& e = events_.front();
      merged.token_ids.insert(merged.token_ids.end(), e.token_ids.begin(), e.token_ids.end());
      merged.logprobs.insert(merged.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      merged.routing.insert(merged.routing.end(), e.routing.begin(), e.routing.end());
      merged.text += e.text;
      merged.finished = e.finished;
      merged.finish_reason = e.finish_reason;
      merged.prompt_tokens = e.prompt_tokens;
      merged.completion_tokens = e.completion_tokens;
      merged.error = e.error;
      events_.pop_front();
    }
    return merged;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestEvent> events_;  // GUARDED_BY(mu_)
};

absl::StatusOr<std::unique_ptr<HttpGeneration>> HttpGeneration::Submit(GenerationQueue* queue,
                                                                      GenerateRequest request) {
  auto sink = std::make_shared<Sink>();
  std::unique_ptr<HttpGeneration> gen(new HttpGeneration(queue, sink));
  absl::StatusOr<RequestId> id = queue->Submit(std::move(request), sink);
  if (!id.ok()) {
    gen->finished_taken_ = true;  // nothing to cancel
    return id.status();
  }
  gen->id_ = *id;
  return gen;
}

HttpGeneration::~HttpGeneration() {
  if (!finished_taken_) Cancel();
}

void HttpGeneration::Cancel() {
  if (cancelled_ || finished_taken_) return;
  cancelled_ = true;
  queue_->Cancel(id_);
}

std::optional<RequestEvent> HttpGeneration::Next(absl::Duration timeout) {
  if (finished_taken_) return std::nullopt;
  std::optional<RequestEvent> event = sink_->Take(timeout);
  if (event.has_value() && event->finished) finished_taken_ = true;
  return event;
}

absl::StatusOr<GenerationResult> HttpGeneration::WaitResult(std::function<bool()> client_gone) {
  GenerationResult result;
  while (!finished_taken_) {
    if (client_gone && !cancelled_ && client_gone()) Cancel();
    std::optional<RequestEvent> event = Next(client_gone ? absl::Milliseconds(100) : absl::Hours(1));
    if (!event.has_value()) continue;
    result.Add(*event);
    if (!event->finished) continue;
    if (!event->error.ok()) return event->error;
    if (event->finish_reason == FinishReason::kCancelled) {
      return absl::CancelledError("the request was cancelled");
    }
  }
  return result;
}

}  // namespace switchyard
