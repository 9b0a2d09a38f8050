#include "coordinator/server/http_front_end.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/host_port.h"
#include "common/log.h"
#include "coordinator/server/request_id.h"
#include "coordinator/server/serving_context.h"

namespace switchyard {
namespace {

using Clock = std::chrono::steady_clock;

// Requests that operators' probes and scrapers send every few seconds: not logged or counted
// (they would flood both), as gRPC health checks are not.
const std::set<std::string> kProbePaths = {"/health", "/metrics"};

// When the request being handled on this thread began, and the route that took it (a
// connection is served by one thread from its first byte to its response, one request after
// another).
thread_local std::optional<Clock::time_point> t_request_start;
thread_local std::string t_route;

void SetJson(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  // Bytes that are not UTF-8 (a client's path) become U+FFFD instead of throwing.
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  "application/json");
}

// A client's path, fit for a message or a log line: at most 256 bytes, control characters
// and non-ASCII bytes escaped (no forged log lines).
std::string Printable(const std::string& path) {
  std::string out = absl::CHexEscape(path.substr(0, 256));
  if (path.size() > 256) out += "...";
  return out;
}

// Reuse a port in TIME_WAIT, but never share a bound one (httplib's default sets
// SO_REUSEPORT, which lets a second server bind the same port silently).
void SocketOptions(int sock) {
  const int yes = 1;
  setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
}

// `handler` for GET `pattern`, noting the route for the access log and the request counts.
void Get(httplib::Server& s, const std::string& pattern, httplib::Server::Handler handler) {
  s.Get(pattern, [route = "GET " + pattern, handler = std::move(handler)](
                     const httplib::Request& req, httplib::Response& res) {
    t_route = route;
    handler(req, res);
  });
}

}  // namespace

HttpFrontEnd::HttpFrontEnd(const ServingContext* context, Options options)
    : context_(context), options_(std::move(options)) {}

HttpFrontEnd::~HttpFrontEnd() { Stop(); }

void HttpFrontEnd::AddRoutes() {
  httplib::Server& s = *server_;
  Get(s, "/health", [this](const httplib::Request&, httplib::Response& res) {
    const absl::Status ready = context_->Readiness();
    if (ready.ok()) {
      SetJson(res, 200, {{"status", "serving"}});
    } else {
      SetJson(res, 503, {{"status", "not serving"}, {"reason", std::string(ready.message())}});
    }
  });
  Get(s, "/metrics", [this](const httplib::Request&, httplib::Response& res) {
    ServingInfo info{.model = context_->model_name(),
                     .version = SWITCHYARD_VERSION,
                     .serving = context_->Readiness().ok()};
    res.set_content(
        context_->metrics()->Render(context_->cluster_status(), context_->queue()->Stats(), info),
        "text/plain; version=0.0.4; charset=utf-8");
  });
}

absl::Status HttpFrontEnd::Start() {
  const std::string flag = "http_listen";
  absl::StatusOr<HostPort> hp = SplitHostPort(options_.listen, flag);
  if (!hp.ok()) return hp.status();
  if (options_.tls_cert.empty() != options_.tls_key.empty()) {
    return absl::InvalidArgumentError("tls_cert and tls_key: give both PEM files, or neither");
  }
  if (options_.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads: must be >= 1, got ", options_.threads));
  }

  std::lock_guard lock(mu_);
  if (server_ != nullptr || stopped_) {
    return absl::FailedPreconditionError("the HTTP front end was already started");
  }
  if (options_.tls_cert.empty()) {
    server_ = std::make_unique<httplib::Server>();
  } else {
    server_ = std::make_unique<httplib::SSLServer>(
        options_.tls_cert.c_str(), options_.tls_key.c_str(),
        options_.tls_client_ca.empty() ? nullptr : options_.tls_client_ca.c_str());
    if (!server_->is_valid()) {
      server_.reset();
      return absl::InvalidArgumentError(absl::StrCat(
          "tls_cert/tls_key: cannot load ", options_.tls_cert, " and ", options_.tls_key,
          options_.tls_client_ca.empty() ? "" : absl::StrCat(" with ", options_.tls_client_ca),
          " for HTTPS"));
    }
  }
  httplib::Server& s = *server_;
  const int threads = options_.threads;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.set_socket_options(SocketOptions);
  s.set_payload_max_length(options_.max_body_bytes);
  // An idle keep-alive connection holds a thread, and Stop waits for it: keep it short.
  s.set_keep_alive_timeout(2);
  s.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    t_request_start = Clock::now();
    t_route.clear();
    const std::string id = req.get_header_value("x-request-id");
    res.set_header("x-request-id", ValidRequestId(id) ? id : NewRequestId());
    return httplib::Server::HandlerResponse::Unhandled;
  });
  const size_t max_body = options_.max_body_bytes;
  s.set_error_handler([max_body](const httplib::Request& req, httplib::Response& res) {
    if (!res.has_header("x-request-id")) res.set_header("x-request-id", NewRequestId());
    if (!res.body.empty()) return;  // a handler's own error
    std::string message;
    switch (res.status) {
      case 404:
        message = absl::StrCat("unknown route ", Printable(req.method), " ", Printable(req.path));
        break;
      case 413:
        message = absl::StrCat("request body larger than ", max_body,
                               " bytes (the server's --max-message-bytes)");
        break;
      case 400:
        message = "malformed HTTP request";
        break;
      default:
        message = absl::StrCat("HTTP status ", res.status);
        break;
    }
    SetJson(res, res.status, {{"error", message}});
  });
  s.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    const std::optional<Clock::time_point> start = std::exchange(t_request_start, std::nullopt);
    // Requests no route took share one label: a client must not create series at will.
    std::string route = std::exchange(t_route, std::string());
    if (route.empty()) route = "unmatched";
    if (kProbePaths.count(req.path) > 0) return;
    context_->metrics()->CountRequest("http", route, std::to_string(res.status));
    const double ms =
        start ? std::chrono::duration<double, std::milli>(Clock::now() - *start).count() : 0;
    spdlog::info("access: id={} peer={}:{} method={} {} status={} total_ms={:.1f}",
                 res.get_header_value("x-request-id"), req.remote_addr, req.remote_port,
                 Printable(req.method), Printable(req.path), res.status, ms);
  });
  AddRoutes();

  int port = hp->port;
  if (port == 0) {
    port = s.bind_to_any_port(hp->host);
  } else if (!s.bind_to_port(hp->host, port)) {
    port = -1;
  }
  if (port <= 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen,
                     " (http_listen): the address is in use, not local, or malformed"));
  }
  bound_port_ = port;
  listening_done_ = std::make_shared<std::atomic<bool>>(false);
  thread_ = std::thread([server = server_.get(), done = listening_done_] {
    server->listen_after_bind();
    done->store(true);
  });
  return absl::OkStatus();
}

void HttpFrontEnd::Stop() {
  std::lock_guard lock(mu_);
  if (stopped_) return;
  stopped_ = true;
  if (server_ == nullptr) return;
  // httplib's stop() does nothing until the listening loop has begun: wait for it first.
  while (!server_->is_running() && !listening_done_->load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

int HttpFrontEnd::bound_port() const {
  std::lock_guard lock(mu_);
  return bound_port_;
}

}  // namespace switchyard
