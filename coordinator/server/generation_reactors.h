// gRPC callback reactors that run one generation through a GenerationQueue.
//
//   // In a CallbackService method (`build` validates and tokenizes, on `pool`):
//   return StartGenerateStream(queue, pool, std::move(build));         // server streaming
//   return StartUnaryGeneration(queue, pool, std::move(build), fill);  // unary
//
// Bridging: the queue calls the request's sink on its own thread and the sink must not
// block, so events are converted and queued under a mutex and the writes are driven from
// the reactor (OnWriteDone); at most one write is in flight. Cancellation of the call (the
// client cancels, its deadline expires, or the server shuts down) calls
// GenerationQueue::Cancel for the request.
//
// Preparation: `build` (validation and tokenization) runs on `pool`, never on the gRPC thread
// that called: a large prompt does not hold up other calls. A call cancelled while its
// preparation waits is never submitted. A full pool ends the call RESOURCE_EXHAUSTED. With
// `pool` null, `build` runs at once on the calling thread.
//
// Status: a `build` error or a Submit error passes through (its absl code); a final event with an error ends
// the call with that code; a request finished as cancelled ends it CANCELLED.
//
// Ownership: gRPC owns each reactor until OnDone (which deletes it); the queue co-owns the
// sink (a shared_ptr), which outlives the reactor safely: once the call is finished the sink
// drops every further event and never touches the reactor again.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/generation_queue.h"
#include "coordinator/server/generation_result.h"
#include "coordinator/server/work_pool.h"
#include "switchyard/v1/switchyard.pb.h"

namespace switchyard {

// Builds the scheduler's request from the client's (validation, tokenization).
using RequestBuilder = std::function<absl::StatusOr<GenerateRequest>()>;

// RESOURCE_EXHAUSTED: `pool` refused a job because max_pending jobs already wait.
grpc::Status PoolBusyStatus(const WorkPool& pool);

// Submits the built request to `queue` (which, like `pool`, must outlive the call) and
// streams its events as GenerateResponse messages: deltas, then a last message with
// finish_reason and counts.
grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerateStream(GenerationQueue* queue,
                                                                    WorkPool* pool,
                                                                    RequestBuilder build);

// A streaming call that ends at once with `status` (which must not be OK).
grpc::ServerWriteReactor<v1::GenerateResponse>* FailedGenerateStream(const absl::Status& status);

// Submits the built request and, once it finished successfully, calls `fill(result)` exactly
// once (on the queue's thread, before the call is finished) to write the response; `fill`
// must not block. On any failure `fill` is not called and the call ends with the error.
grpc::ServerUnaryReactor* StartUnaryGeneration(GenerationQueue* queue, WorkPool* pool,
                                               RequestBuilder build,
                                               std::function<void(const GenerationResult&)> fill);

}  // namespace switchyard
