// The coordinator's gRPC front end: switchyard.v1.Switchyard, the KServe v2 inference
// service, the standard grpc.health.v1.Health service and server reflection, on one port.
//
//   ServingFrontEnd::Options opts{.listen = "0.0.0.0:50051", .model_name = "brown-moe"};
//   ServingFrontEnd front(&scheduler, tokenizer.get(), cfg, cluster_status_fn,
//                         {.ep = 2, .pp = 2, .world_size = 4}, opts);
//   RETURN_IF_ERROR(front.Start());     // health: NOT_SERVING
//   front.SetReady(true);               // health: SERVING
//   ...                                 // on SIGTERM:
//   front.Drain();                      // NOT_SERVING; new generations get UNAVAILABLE
//   scheduler.Drain();                  // in-flight requests finish
//   front.Shutdown(absl::Now() + absl::Seconds(5));
//
// Security: binds 127.0.0.1 by default; TLS when tls_cert/tls_key are given; with an
// auth_token every RPC of the Switchyard and KServe services requires metadata
// "authorization: Bearer <token>" (UNAUTHENTICATED otherwise), health checks stay open, and
// reflection is not served unless expose_reflection. With tls_client_ca, clients need a
// certificate signed by that CA (mutual TLS). Requests larger than max_message_bytes get
// RESOURCE_EXHAUSTED from gRPC itself.
//
// Thread-safety: all methods may be called from any thread; Start once, before the others.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "coordinator/generation_queue.h"
#include "coordinator/server/chat_template.h"
#include "coordinator/server/cluster_status.h"
#include "model/config.h"
#include "model/tokenizer.h"

namespace grpc {
class Server;
}

namespace switchyard {

class HttpFrontEnd;
class ServingContext;
class ServingMetrics;
class SwitchyardService;
class KServeService;

// Checks a TLS certificate chain and private key before serving: both given or neither, both
// readable PEM, and the key matching the certificate. Errors name the option as `cert_name` /
// `key_name` (the command line passes its flag names): kInvalidArgument, or kNotFound for an
// unreadable file.
absl::Status CheckTlsFiles(const std::string& cert, const std::string& key,
                           const std::string& cert_name = "tls_cert",
                           const std::string& key_name = "tls_key");

class ServingFrontEnd {
 public:
  struct Options {
    // host:port; "127.0.0.1:0" picks a free port (see bound_port()). "0.0.0.0:50051" or
    // "[::]:50051" listen on every interface.
    std::string listen = "127.0.0.1:50051";
    std::string tls_cert;             // PEM certificate chain file; TLS when set (with tls_key)
    std::string tls_key;              // PEM private key file
    // PEM CA bundle: when set (with TLS), clients must present a certificate it signed
    // (mutual TLS).
    std::string tls_client_ca;
    // Server reflection: served when no auth_token is set; with one, only when this is true
    // (reflection cannot check the token, so exposing it is an explicit choice).
    bool expose_reflection = false;
    std::string auth_token;           // bearer token; empty: no authentication
    int max_message_bytes = 4 << 20;  // largest request accepted
    std::string model_name;           // the served model's name (required)
    // host:port of the HTTP server (/health, /metrics; coordinator/server/http_front_end.h),
    // with the same TLS files; empty: no HTTP server. Its bodies are limited to
    // max_message_bytes.
    std::string http_listen;
    int http_threads = 64;  // HTTP connections served at once
    // Where requests are counted and the scheduler's timings go (borrowed, outlives the
    // front end); null: the front end keeps its own.
    ServingMetrics* metrics = nullptr;
    // The HTTP API's chat template (chat requests are refused with its why_none when kNone)
    // and max_tokens of OpenAI requests that leave it out (capped by the context).
    ChatTemplate chat_template;
    int default_max_tokens = 256;
  };

  // `queue` and `tokenizer` are borrowed and must outlive the front end. `cluster_status` is
  // called on gRPC threads, possibly concurrently, and must be thread-safe (may be empty).
  ServingFrontEnd(GenerationQueue* queue, const Tokenizer* tokenizer, const ModelConfig& config,
                  std::function<ClusterStatusInfo()> cluster_status, ServingTopology topology,
                  Options options);
  // Shuts down at once (cancelling in-flight calls) when still running.
  ~ServingFrontEnd();

  ServingFrontEnd(const ServingFrontEnd&) = delete;
  ServingFrontEnd& operator=(const ServingFrontEnd&) = delete;

  // Starts serving (gRPC, and HTTP with http_listen), with health NOT_SERVING until
  // SetReady(true). Errors: kInvalidArgument naming the option (model_name,
  // max_message_bytes, tls_cert/tls_key given alone, http_listen); kNotFound naming an
  // unreadable TLS file; kUnavailable naming the address when it cannot be bound (in use,
  // bad address); kFailedPrecondition when already started.
  absl::Status Start();

  // Health SERVING (and generation admitted) when true and not draining; NOT_SERVING when
  // false. Before SetReady(true), Generate/Complete/ModelInfer answer UNAVAILABLE.
  void SetReady(bool ready);

  // Health NOT_SERVING for good; new Generate/Complete/ModelInfer calls answer UNAVAILABLE
  // "server is draining"; calls in flight continue. Idempotent.
  void Drain();

  // The cluster failed for `why`: health NOT_SERVING for good, new Generate/Complete/
  // ModelInfer calls answer UNAVAILABLE "the cluster failed: <why>". Idempotent.
  void Fail(const absl::Status& why);

  // Drains, stops accepting calls, waits for in-flight calls until `deadline` and then
  // cancels the rest (their requests are cancelled in the queue). Idempotent.
  void Shutdown(absl::Time deadline);

  // The port bound by Start (the chosen one for port 0); 0 before Start.
  int bound_port() const;
  // The HTTP server's port; 0 before Start or without http_listen.
  int http_bound_port() const;

  // Requests seen so far with a large text (ServingContext::CheckText): when it moves, the
  // caller trims the heap once the burst is over.
  uint64_t large_requests() const;

 private:
  void SetHealthLocked(bool serving);

  const Options options_;
  const std::unique_ptr<ServingMetrics> owned_metrics_;  // when options_.metrics is null
  const std::unique_ptr<ServingContext> context_;
  const std::unique_ptr<SwitchyardService> switchyard_service_;
  const std::unique_ptr<KServeService> kserve_service_;
  std::unique_ptr<HttpFrontEnd> http_;  // GUARDED_BY(mu_); null without http_listen

  mutable std::mutex mu_;
  std::unique_ptr<grpc::Server> server_;  // GUARDED_BY(mu_)
  int bound_port_ = 0;                    // GUARDED_BY(mu_)
  bool shut_down_ = false;                // GUARDED_BY(mu_)
};

}  // namespace switchyard
