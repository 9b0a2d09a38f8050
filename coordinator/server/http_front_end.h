// The coordinator's HTTP server (cpp-httplib): one listener, `serve --http-listen`, for
// operators' tools and HTTP clients. Today it serves
//   GET /health   200 {"status":"serving"} while ready; 503 {"status":"not serving",
//                 "reason":"server is draining"} (or "server is not ready", "the cluster
//                 failed: ...") otherwise, so a load balancer stops routing to it;
//   GET /metrics  Prometheus text format (coordinator/server/serving_metrics.h).
// Other paths answer 404, bodies over max_body_bytes 413, each with a JSON {"error": "..."}.
// Every response carries `x-request-id` (the client's, when valid, else a new one); requests
// other than /health and /metrics are written to the access log and counted in
// switchyard_requests_total{protocol="http"} (probes and scrapes never are, as gRPC health
// checks are not).
//
//   HttpFrontEnd http(context, {.listen = "127.0.0.1:8080"});
//   RETURN_IF_ERROR(http.Start());  // bound and serving on its own threads
//   ...
//   http.Stop();                    // in-flight requests finish first
//
// Security: TLS with the gRPC server's certificate flags (and mutual TLS with a client CA).
// /health and /metrics need no token, like gRPC health checks and vLLM's /metrics.
//
// Thread-safety: Start, Stop and bound_port may be called from any thread; Start once.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "coordinator/server/chat_template.h"

namespace httplib {
class Server;
}

namespace switchyard {

class ServingContext;

class HttpFrontEnd {
 public:
  struct Options {
    std::string listen;               // host:port; port 0 picks a free one (see bound_port())
    std::string tls_cert;             // PEM certificate chain: HTTPS (with tls_key)
    std::string tls_key;              // PEM private key
    std::string tls_client_ca;        // PEM CA bundle: clients must present a certificate it signed
    size_t max_body_bytes = 4 << 20;  // larger request bodies get 413
    int threads = 64;                 // connections served at once (each open connection holds one)
    ChatTemplate chat_template;       // of /v1/chat/completions (kNone: chat is refused)
    int default_max_tokens = 256;     // OpenAI requests without max_tokens (capped by the context)
  };

  // `context` is borrowed and must outlive the front end.
  HttpFrontEnd(const ServingContext* context, Options options);
  ~HttpFrontEnd();  // Stop()

  HttpFrontEnd(const HttpFrontEnd&) = delete;
  HttpFrontEnd& operator=(const HttpFrontEnd&) = delete;

  // Binds the address and serves on a thread of its own. Errors: kInvalidArgument naming
  // `listen` or a TLS file that does not load; kUnavailable when the address cannot be bound
  // (in use, not local); kFailedPrecondition when already started.
  absl::Status Start();

  // Stops accepting; requests in flight finish; joins the threads. Idempotent.
  void Stop();

  // The port bound by Start (the chosen one for port 0); 0 before.
  int bound_port() const;

 private:
  void AddRoutes();

  const ServingContext* const context_;
  const Options options_;
  mutable std::mutex mu_;
  std::unique_ptr<httplib::Server> server_;            // GUARDED_BY(mu_) for creation and Stop
  std::thread thread_;                                 // GUARDED_BY(mu_)
  std::shared_ptr<std::atomic<bool>> listening_done_;  // set when the listening loop ended
  int bound_port_ = 0;                                 // GUARDED_BY(mu_)
  bool stopped_ = false;                               // GUARDED_BY(mu_)
};

}  // namespace switchyard
