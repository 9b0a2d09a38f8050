#include "coordinator/server/generation_reactors.h"

#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "coordinator/server/grpc_status.h"
#include "coordinator/server/proto_convert.h"

namespace switchyard {
namespace {

const grpc::Status kCallCancelled(grpc::StatusCode::CANCELLED, "the call was cancelled");

// The status a final event ends the call with.
grpc::Status FinalStatus(const RequestEvent& event) {
  if (!event.error.ok()) return ToGrpcStatus(event.error);
  if (event.finish_reason == FinishReason::kCancelled) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled");
  }
  return grpc::Status::OK;
}

// The request's id in the queue and whether the call asked to cancel it, so that a cancel
// arriving before Submit returned still reaches the queue. Thread-safe.
class QueuedRequest {
 public:
  explicit QueuedRequest(GenerationQueue* queue) : queue_(queue) {}

  void SetId(RequestId id) {
    std::unique_lock lock(mu_);
    id_ = id;
    if (!cancelled_) return;
    lock.unlock();
    queue_->Cancel(id);
  }

  bool cancelled() {
    std::lock_guard lock(mu_);
    return cancelled_;
  }

  // Idempotent.
  void Cancel() {
    std::unique_lock lock(mu_);
    if (cancelled_) return;
    cancelled_ = true;
    if (!id_.has_value()) return;
    RequestId id = *id_;
    lock.unlock();
    queue_->Cancel(id);
  }

 private:
  GenerationQueue* queue_;
  std::mutex mu_;
  std::optional<RequestId> id_;  // GUARDED_BY(mu_)
  bool cancelled_ = false;       // GUARDED_BY(mu_)
};

// The sink of a streaming call. Messages and the final status are queued in order; the one
// thread that holds `pumping_` starts the next write or the Finish, outside the mutex (a
// reaction may run inline).
class StreamBridge final : public RequestSink {
 public:
  explicit StreamBridge(grpc::ServerWriteReactor<v1::GenerateResponse>* reactor)
      : reactor_(reactor) {}

  // Scheduler thread.
  void OnEvent(const RequestEvent& event) override {
    std::unique_lock lock(mu_);
    if (closed_) return;
    const bool has_delta = !event.token_ids.empty() || !event.text.empty();
    if (!event.finished) {
      if (!has_delta) return;
      PushMessageLocked(event);
    } else {
      grpc::Status status = FinalStatus(event);
      if (status.ok()) PushMessageLocked(event);
      PushFinishLocked(std::move(status));
    }
    if (pumping_) return;
    pumping_ = true;
    Pump(std::move(lock));
  }

  // Drops unsent messages and ends the call with `status`. Any thread.
  void Close(grpc::Status status) {
    std::unique_lock lock(mu_);
    if (finished_) return;
    pending_.clear();
    PushFinishLocked(std::move(status));
    if (pumping_) return;  // the write in flight pumps the finish when it completes
    pumping_ = true;
    Pump(std::move(lock));
  }

  // The reactor's OnWriteDone: the pumping thread continues.
  void WriteDone(bool ok) {
    std::unique_lock lock(mu_);
    if (!ok) {  // the stream is broken (client gone): no further write can succeed
      pending_.clear();
      PushFinishLocked(kCallCancelled);
    }
    Pump(std::move(lock));
  }

 private:
  struct Item {
    std::optional<v1::GenerateResponse> message;  // empty: finish with `status`
    grpc::Status status;
  };

  void PushMessageLocked(const RequestEvent& event) {
    Item item;
    item.message.emplace();
    EventToProto(event, &*item.message);
    pending_.push_back(std::move(item));
  }

  void PushFinishLocked(grpc::Status status) {
    closed_ = true;
    pending_.push_back(Item{std::nullopt, std::move(status)});
  }

  // Called by the pumping thread with the lock held; releases it.
  void Pump(std::unique_lock<std::mutex> lock) {
    if (pending_.empty()) {
      pumping_ = false;
      return;
    }
    Item item = std::move(pending_.front());
    pending_.pop_front();
    if (!item.message.has_value()) {
      finished_ = true;  // from here on nobody touches reactor_
      lock.unlock();
      reactor_->Finish(std::move(item.status));
      return;
    }
    writing_ = std::move(*item.message);
    lock.unlock();
    reactor_->StartWrite(&writing_);
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* const reactor_;  // valid until finished_
  std::mutex mu_;
  std::deque<Item> pending_;      // GUARDED_BY(mu_)
  bool pumping_ = false;          // GUARDED_BY(mu_): a write or the finish is being started
  bool closed_ = false;           // GUARDED_BY(mu_): the finish is queued; events are dropped
  bool finished_ = false;         // GUARDED_BY(mu_): Finish was called
  v1::GenerateResponse writing_;  // owned by the pumping thread; alive until OnWriteDone
};

// Runs `build` on `pool` (or here when null), then submits; a failure closes `bridge`.
template <typename Bridge>
void PrepareAndSubmit(GenerationQueue* queue, WorkPool* pool, RequestBuilder build,
                      std::shared_ptr<QueuedRequest> request, std::shared_ptr<Bridge> bridge) {
  auto job = [queue, build = std::move(build), request, bridge]() {
    if (request->cancelled()) return;  // the call ended while waiting
    absl::StatusOr<GenerateRequest> req = build();
    if (!req.ok()) {
      bridge->Close(ToGrpcStatus(req.status()));
      return;
    }
    absl::StatusOr<RequestId> id = queue->Submit(*std::move(req), bridge);
    if (!id.ok()) {
      bridge->Close(ToGrpcStatus(id.status()));
      return;
    }
    request->SetId(*id);
  };
  if (pool == nullptr) {
    job();
  } else if (!pool->Post(std::move(job))) {
    bridge->Close(PoolBusyStatus(*pool));
  }
}

class GenerateStreamReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  explicit GenerateStreamReactor(GenerationQueue* queue)
      : queue_(queue),
        request_(std::make_shared<QueuedRequest>(queue)),
        bridge_(std::make_shared<StreamBridge>(this)) {}

  void Begin(WorkPool* pool, RequestBuilder build) {
    PrepareAndSubmit(queue_, pool, std::move(build), request_, bridge_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) request_->Cancel();
    bridge_->WriteDone(ok);
  }

  void OnCancel() override {
    request_->Cancel();
    bridge_->Close(kCallCancelled);
  }

  void OnDone() override { delete this; }

 private:
  GenerationQueue* const queue_;
  const std::shared_ptr<QueuedRequest> request_;
  const std::shared_ptr<StreamBridge> bridge_;
};

class FailedStreamReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  explicit FailedStreamReactor(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

// The sink of a unary call: gathers the result, fills the response, finishes the call.
class UnaryBridge final : public RequestSink {
 public:
  UnaryBridge(grpc::ServerUnaryReactor* reactor, std::function<void(const GenerationResult&)> fill)
      : reactor_(reactor), fill_(std::move(fill)) {}

  // Scheduler thread.
  void OnEvent(const RequestEvent& event) override {
    std::unique_lock lock(mu_);
    if (finished_) return;
    result_.Add(event);
    if (!event.finished) return;
    grpc::Status status = FinalStatus(event);
    if (status.ok()) fill_(result_);
    FinishLocked(std::move(lock), std::move(status));
  }

  // Ends the call with `status` unless it already ended. Any thread.
  void Close(grpc::Status status) {
    std::unique_lock lock(mu_);
    if (finished_) return;
    FinishLocked(std::move(lock), std::move(status));
  }

 private:
  void FinishLocked(std::unique_lock<std::mutex> lock, grpc::Status status) {
    finished_ = true;  // from here on nobody touches reactor_ or fill_'s captures
    fill_ = nullptr;
    lock.unlock();
    reactor_->Finish(std::move(status));
  }

  grpc::ServerUnaryReactor* const reactor_;  // valid until finished_
  std::mutex mu_;
  std::function<void(const GenerationResult&)> fill_;  // GUARDED_BY(mu_)
  GenerationResult result_;                            // GUARDED_BY(mu_)
  bool finished_ = false;                              // GUARDED_BY(mu_)
};

class UnaryGenerationReactor final : public grpc::ServerUnaryReactor {
 public:
  UnaryGenerationReactor(GenerationQueue* queue, std::function<void(const GenerationResult&)> fill)
      : queue_(queue),
        request_(std::make_shared<QueuedRequest>(queue)),
        bridge_(std::make_shared<UnaryBridge>(this, std::move(fill))) {}

  void Begin(WorkPool* pool, RequestBuilder build) {
    PrepareAndSubmit(queue_, pool, std::move(build), request_, bridge_);
  }

  void OnCancel() override {
    request_->Cancel();
    bridge_->Close(kCallCancelled);
  }

  void OnDone() override { delete this; }

 private:
  GenerationQueue* const queue_;
  const std::shared_ptr<QueuedRequest> request_;
  const std::shared_ptr<UnaryBridge> bridge_;
};

}  // namespace

grpc::Status PoolBusyStatus(const WorkPool& pool) {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      absl::StrCat("server is busy: ", pool.max_pending(),
                                   " requests are waiting to be tokenized; retry later"));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerateStream(GenerationQueue* queue,
                                                                    WorkPool* pool,
                                                                    RequestBuilder build) {
  auto* reactor = new GenerateStreamReactor(queue);
  reactor->Begin(pool, std::move(build));
  return reactor;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* FailedGenerateStream(const absl::Status& status) {
  return new FailedStreamReactor(ToGrpcStatus(status));
}

grpc::ServerUnaryReactor* StartUnaryGeneration(GenerationQueue* queue, WorkPool* pool,
                                               RequestBuilder build,
                                               std::function<void(const GenerationResult&)> fill) {
  auto* reactor = new UnaryGenerationReactor(queue, std::move(fill));
  reactor->Begin(pool, std::move(build));
  return reactor;
}

}  // namespace switchyard
