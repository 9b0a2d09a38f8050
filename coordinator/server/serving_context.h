// State shared by the gRPC services of one ServingFrontEnd: the model, the queue, readiness,
// draining and the bearer-token check. Thread-safe; the front end owns it and it outlives
// the services.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "coordinator/scheduler.h"
#include "coordinator/server/cluster_status.h"
#include "coordinator/server/request_validation.h"
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
};

class ServingContext {
 public:
  explicit ServingContext(ServingContextArgs args);

  // OK when no token is configured or the call carries "authorization: Bearer <token>";
  // otherwise kUnauthenticated. Every RPC of the Switchyard and KServe services calls it
  // first (the health and reflection services are not ours and stay open).
  absl::Status Authorize(const grpc::CallbackServerContext& call) const;

  // Authorize, then kUnavailable "server is draining" / "server is not ready" when new
  // generation work must be refused.
  absl::Status AdmitGeneration(const grpc::CallbackServerContext& call) const;

  void set_ready(bool ready) { ready_.store(ready); }
  void set_draining() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  // Ready for inference: ready and not draining (the health status).
  bool serving() const { return ready_.load() && !draining_.load(); }

  GenerationQueue* queue() const { return args_.queue; }
  const Tokenizer* tokenizer() const { return args_.tokenizer; }  // null: token ids only
  const ModelConfig& config() const { return args_.config; }
  const std::string& model_name() const { return args_.model_name; }
  const ServingTopology& topology() const { return args_.topology; }
  const ValidationContext& validation() const { return validation_; }
  // An empty ClusterStatusInfo when no callback was given.
  ClusterStatusInfo cluster_status() const;

 private:
  const ServingContextArgs args_;
  ValidationContext validation_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
};

}  // namespace switchyard
