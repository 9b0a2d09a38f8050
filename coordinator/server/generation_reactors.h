// gRPC callback reactors that run one generation through a GenerationQueue.
//
//   // In a CallbackService method:
//   return StartGenerateStream(queue, std::move(request));         // server streaming
//   return StartUnaryGeneration(queue, std::move(request), fill);  // unary
//
// Bridging: the queue calls the request's sink on its own thread and the sink must not
// block, so events are converted and queued under a mutex and the writes are driven from
// the reactor (OnWriteDone); at most one write is in flight. Cancellation of the call (the
// client cancels, its deadline expires, or the server shuts down) calls
// GenerationQueue::Cancel for the request.
//
// Status: a Submit error passes through (its absl code); a final event with an error ends
// the call with that code; a request finished as cancelled ends it CANCELLED.
//
// Ownership: gRPC owns each reactor until OnDone (which deletes it); the queue co-owns the
// sink (a shared_ptr), which outlives the reactor safely: once the call is finished the sink
// drops every further event and never touches the reactor again.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>

#include "absl/status/status.h"
#include "coordinator/scheduler.h"
#include "coordinator/server/generation_result.h"
#include "switchyard/v1/switchyard.pb.h"

namespace switchyard {

// Submits `request` to `queue` (which must outlive the call) and streams its events as
// GenerateResponse messages: deltas, then a last message with finish_reason and counts.
grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerateStream(GenerationQueue* queue,
                                                                    GenerateRequest request);

// A streaming call that ends at once with `status` (which must not be OK).
grpc::ServerWriteReactor<v1::GenerateResponse>* FailedGenerateStream(const absl::Status& status);

// Submits `request` and, once it finished successfully, calls `fill(result)` exactly once
// (on the queue's thread, before the call is finished) to write the response; `fill` must
// not block. On any failure `fill` is not called and the call ends with the error.
grpc::ServerUnaryReactor* StartUnaryGeneration(GenerationQueue* queue, GenerateRequest request,
                                               std::function<void(const GenerationResult&)> fill);

}  // namespace switchyard
