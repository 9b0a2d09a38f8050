// State shared by the gRPC services of one ServingFrontEnd: the model, the queue, readiness,
// draining and the bearer-token check. Thread-safe; the front end owns it and it outlives
// the services.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "coordinator/generation_queue.h"
#include "coordinator/server/cluster_status.h"
#include "coordinator/server/generation_reactors.h"
#include "coordinator/server/request_validation.h"
#include "coordinator/server/serving_metrics.h"
#include "coordinator/server/work_pool.h"
#include "model/config.h"
#include "model/tokenizer.h"

namespace switchyard {

struct ServingContextArgs {
  GenerationQueue* queue = nullptr;      // borrowed; outlives the context
  const Tokenizer* tokenizer = nullptr;  // borrowed; outlives the context
  ModelConfig config;
  std::string model_name;
  ServingTopology topology;
  // Called on gRPC threads, possibly concurrently; must be thread-safe. May be empty.
  std::function<ClusterStatusInfo()> cluster_status;
  std::string auth_token;  // empty: no authentication
  ServingMetrics* metrics = nullptr;  // borrowed; outlives the context; required
};

class ServingContext {
 public:
  explicit ServingContext(ServingContextArgs args);

  // OK when no token is configured or the call carries "authorization: Bearer <token>";
  // otherwise kUnauthenticated. Every RPC of the Switchyard and KServe services calls it
  // first (the health and reflection services are not ours and stay open).
  absl::Status Authorize(const grpc::CallbackServerContext& call) const;
  // The same check on a call's metadata (the interceptor's view of it).
  absl::Status AuthorizeMetadata(
      const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const;
  // The same check on an HTTP request's Authorization header (null: the header is absent).
  absl::Status AuthorizeHeader(const std::string* authorization) const;

  // Authorize, then kUnavailable "server is draining" / "server is not ready" when new
  // generation work must be refused.
  absl::Status AdmitGeneration(const grpc::CallbackServerContext& call) const;
  // OK while serving; otherwise kUnavailable saying why: "the cluster failed: <why>",
  // "server is draining" or "server is not ready".
  absl::Status Readiness() const;

  void set_ready(bool ready) { ready_.store(ready); }
  void set_draining() { draining_.store(true); }
  // The cluster failed for `why`: draining, and new generation work is refused with
  // kUnavailable "the cluster failed: <why>" (not "draining": retrying here will not help).
  void set_failed(const absl::Status& why);
  bool draining() const { return draining_.load(); }
  // Ready for inference: ready and not draining (the health status).
  bool serving() const { return ready_.load() && !draining_.load(); }

  GenerationQueue* queue() const { return args_.queue; }
  ServingMetrics* metrics() const { return args_.metrics; }
  const Tokenizer* tokenizer() const { return args_.tokenizer; }  // null: token ids only
  const ModelConfig& config() const { return args_.config; }
  const std::string& model_name() const { return args_.model_name; }
  const ServingTopology& topology() const { return args_.topology; }
  const ValidationContext& validation() const { return validation_; }
  // Where prompts are validated and tokenized, off the gRPC threads: 2 threads, at most 1024
  // requests waiting for them.
  WorkPool* pool() const { return &pool_; }
  // Validates and tokenizes `params` when run (on pool()).
  RequestBuilder Builder(GenerationParams params) const;
  // Every text that arrives passes here first, before it is copied or tokenized: kInvalid
  // argument naming `field` (the API's name of the text) when it is longer than the context
  // can hold (CheckPromptBytes; OK when the model has no tokenizer, whose refusal names that
  // instead). A large text is counted, refused or not: see large_requests().
  absl::Status CheckText(size_t bytes, const std::string& field = "text") const;
  // Requests seen so far with a text of 256 KiB or more. Their buffers are freed on gRPC and
  // pool threads, whose heap glibc keeps; the serve loop trims the heap (malloc_trim) when
  // this count moves, so memory returns to its steady size.
  uint64_t large_requests() const { return large_requests_.load(std::memory_order_relaxed); }
  // An empty ClusterStatusInfo when no callback was given.
  ClusterStatusInfo cluster_status() const;

 private:
  // `value`: the authorization metadata or header (null when absent); `where` names which.
  absl::Status AuthorizeValue(const absl::string_view* value, const char* where) const;

  const ServingContextArgs args_;
  ValidationContext validation_;
  mutable WorkPool pool_;
  mutable std::atomic<uint64_t> large_requests_{0};
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::atomic<bool> failed_{false};
  mutable std::mutex failure_mu_;
  std::string failure_;  // GUARDED_BY(failure_mu_)
};

}  // namespace switchyard
