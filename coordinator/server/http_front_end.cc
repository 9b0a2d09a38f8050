#include "coordinator/server/http_front_end.h"

#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/host_port.h"
#include "common/log.h"
#include "coordinator/server/http_generation.h"
#include "coordinator/server/json_body.h"
#include "coordinator/server/kserve_request.h"
#include "coordinator/server/kserve_rest.h"
#include "coordinator/server/openai_api.h"
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

// Debian's cpp-httplib is a compiled library that listens with a backlog of 5: a burst of
// clients (hundreds of streams connecting at once) would overflow it and see resets. Calling
// listen() again on the bound socket raises it (Linux takes the new backlog).
constexpr int kListenBacklog = 1024;

// `handler` for `method` on `pattern` (a regular expression for paths with parameters),
// noting `label` (the route as documented, "POST /v2/models/{name}/infer") for the access log
// and the request counts.
void Route(httplib::Server& s, const std::string& method, const std::string& pattern,
           const std::string& label, httplib::Server::Handler handler) {
  auto h = [route = method + " " + label, handler = std::move(handler)](
               const httplib::Request& req, httplib::Response& res) {
    t_route = route;
    handler(req, res);
  };
  if (method == "GET") {
    s.Get(pattern, std::move(h));
  } else {
    s.Post(pattern, std::move(h));
  }
}

void Get(httplib::Server& s, const std::string& pattern, httplib::Server::Handler handler) {
  Route(s, "GET", pattern, pattern, std::move(handler));
}

// The port of a socket address, and its numeric host as httplib writes it.
int PortOf(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

std::string HostOf(const sockaddr_storage& a, socklen_t len) {
  char host[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host, sizeof(host), nullptr, 0,
                  NI_NUMERICHOST) != 0) {
    return "";
  }
  return host;
}

// The socket of the connection `req` came on; -1 when not found. cpp-httplib 0.11 does not
// tell a handler its socket or whether the client is still there, so it is found by its
// addresses (local port, peer address and port) among this process's descriptors. It stays
// valid while the handler runs: the connection's own thread (this one) closes it afterwards.
int ConnectionFd(const httplib::Request& req) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    const int fd = std::atoi(entry.path().filename().c_str());
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
      continue;
    }
    if (PortOf(local) == req.local_port && PortOf(peer) == req.remote_port &&
        HostOf(peer, peer_len) == req.remote_addr) {
      return fd;
    }
  }
  return -1;
}

// Asked while a request that does not stream waits for its result: true once the client
// closed its end of the connection (it gave up), so the request is cancelled as a stream's
// would be.
std::function<bool()> ClientGone(const httplib::Request& req) {
  const int fd = ConnectionFd(req);
  if (fd < 0) return nullptr;
  return [fd] {
    pollfd p{.fd = fd, .events = POLLRDHUP, .revents = 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  };
}

// The error in the OpenAI API's form; 429 says when to retry, 401 which scheme.
void OpenAiFail(httplib::Response& res, const absl::Status& status) {
  SetJson(res, HttpStatusOf(status), OpenAiError(status));
  if (HttpStatusOf(status) == 429) res.set_header("Retry-After", "1");
  if (HttpStatusOf(status) == 401) res.set_header("WWW-Authenticate", "Bearer");
}

// The error in KServe's form: {"error": "..."}.
void KServeFail(httplib::Response& res, const absl::Status& status) {
  SetJson(res, HttpStatusOf(status), {{"error", std::string(status.message())}});
  if (HttpStatusOf(status) == 429) res.set_header("Retry-After", "1");
  if (HttpStatusOf(status) == 401) res.set_header("WWW-Authenticate", "Bearer");
}

absl::Status Authorize(const ServingContext& ctx, const httplib::Request& req) {
  if (!req.has_header("Authorization")) return ctx.AuthorizeHeader(nullptr);
  const std::string value = req.get_header_value("Authorization");
  return ctx.AuthorizeHeader(&value);
}

// Authorized, and ready for generation work (503 with the reason otherwise).
absl::Status Admit(const ServingContext& ctx, const httplib::Request& req) {
  if (absl::Status s = Authorize(ctx, req); !s.ok()) return s;
  return ctx.Readiness();
}

std::string SseEvent(const nlohmann::json& data) {
  return absl::StrCat("data: ", data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                      "\n\n");
}

// Streams a generation as server-sent events: `format` turns each event into the text to
// send (one or more "data: ...\n\n"). A client that goes away cancels the request: the write
// fails (tokens flow every step; an idle stream sends a comment every 5 s to find out).
using SseFormat = std::function<std::string(const RequestEvent& event)>;

void StreamEvents(httplib::Response& res, std::unique_ptr<HttpGeneration> generation,
                  SseFormat format) {
  struct State {
    std::unique_ptr<HttpGeneration> gen;
    SseFormat format;
    Clock::time_point last_write = Clock::now();
  };
  auto state = std::make_shared<State>(State{std::move(generation), std::move(format)});
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [state](size_t, httplib::DataSink& sink) {
        std::optional<RequestEvent> event = state->gen->Next(absl::Milliseconds(500));
        std::string out;
        if (event.has_value()) {
          out = state->format(*event);
        } else if (Clock::now() - state->last_write > std::chrono::seconds(5)) {
          out = ": keep-alive\n\n";
        }
        if (!out.empty()) {
          if (!sink.write(out.data(), out.size())) {
            state->gen->Cancel();  // the client is gone: free its KV at the next step
            return false;
          }
          state->last_write = Clock::now();
        }
        if (state->gen->finished()) sink.done();
        return true;
      },
      [state](bool success) {
        if (!success) state->gen->Cancel();
      });
}


// Validates and tokenizes on this thread (an HTTP connection's own), then submits.
absl::StatusOr<std::unique_ptr<HttpGeneration>> SubmitParams(const ServingContext& ctx,
                                                             const GenerationParams& params) {
  absl::StatusOr<GenerateRequest> request = BuildGenerateRequest(params, ctx.validation());
  if (!request.ok()) return request.status();
  return HttpGeneration::Submit(ctx.queue(), *std::move(request));
}

absl::Status CheckModel(const ServingContext& ctx, const std::string& model) {
  if (model.empty() || model == ctx.model_name()) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("model: the model \"", model,
                                          "\" does not exist; this server serves \"",
                                          ctx.model_name(), "\""));
}

// POST /v1/completions and /v1/chat/completions.
void OpenAiGenerate(const ServingContext& ctx, const HttpFrontEnd::Options& options, bool chat,
                    const httplib::Request& req, httplib::Response& res) {
  if (absl::Status s = Admit(ctx, req); !s.ok()) return OpenAiFail(res, s);
  const OpenAiOptions api{.default_max_tokens = options.default_max_tokens};
  absl::StatusOr<OpenAiRequest> parsed =
      chat ? ParseChatRequest(req.body, api, options.chat_template, ctx.tokenizer())
           : ParseCompletionRequest(req.body, api);
  if (!parsed.ok()) return OpenAiFail(res, parsed.status());
  if (absl::Status s = CheckModel(ctx, parsed->model); !s.ok()) return OpenAiFail(res, s);
  if (parsed->params.text.has_value()) {
    if (absl::Status s = ctx.CheckText(parsed->params.text->size(), "prompt"); !s.ok()) {
      return OpenAiFail(res, s);
    }
  }
  auto gen = SubmitParams(ctx, parsed->params);
  if (!gen.ok()) return OpenAiFail(res, gen.status());

  auto meta = std::make_shared<OpenAiResponseMeta>(OpenAiResponseMeta{
      .id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", res.get_header_value("x-request-id")),
      .created = static_cast<int64_t>(std::time(nullptr)),
      .model = ctx.model_name()});
  if (!parsed->stream) {
    absl::StatusOr<GenerationResult> result = (*gen)->WaitResult(ClientGone(req));
    if (!result.ok()) return OpenAiFail(res, result.status());
    return SetJson(res, 200, CompletionResponse(*parsed, *meta, *result, ctx.tokenizer()));
  }
  auto request = std::make_shared<OpenAiRequest>(*std::move(parsed));
  struct StreamState {
    bool first = true;
    int text_offset = 0;  // of the completion's logprobs, across chunks
  };
  auto state = std::make_shared<StreamState>();
  const Tokenizer* tokenizer = ctx.tokenizer();
  StreamEvents(res, *std::move(gen), [request, meta, state, tokenizer](const RequestEvent& e) {
    std::string out;
    if (state->first && request->chat) {
      out += SseEvent(StreamChunk(*request, *meta, "", nullptr, true));
    }
    state->first = false;
    if (!e.error.ok()) {
      return out + SseEvent(OpenAiError(e.error)) + "data: [DONE]\n\n";
    }
    std::optional<nlohmann::json> logprobs;
    if (request->params.logprobs.has_value() && tokenizer != nullptr && !e.token_ids.empty()) {
      logprobs = LogprobsJson(request->chat, e.token_ids, e.logprobs, *tokenizer,
                              &state->text_offset);
    }
    const nlohmann::json* lp = logprobs ? &*logprobs : nullptr;
    if (!e.finished) {
      if (e.text.empty() && e.token_ids.empty()) return out;
      return out + SseEvent(StreamChunk(*request, *meta, e.text, nullptr, false, &e.token_ids, lp));
    }
    const nlohmann::json reason = OpenAiFinishReason(e.finish_reason);
    out += SseEvent(StreamChunk(*request, *meta, e.text, &reason, false, &e.token_ids, lp));
    if (request->include_usage) {
      out += SseEvent(UsageChunk(*request, *meta, e.prompt_tokens, e.completion_tokens));
    }
    return out + "data: [DONE]\n\n";
  });
}

// POST /tokenize (vLLM's): {"prompt": "...", "add_special_tokens": true} or {"messages":
// [...]} -> {"tokens": [...], "count", "max_model_len", "prompt": the rendered chat prompt}.
void OpenAiTokenize(const ServingContext& ctx, const HttpFrontEnd::Options& options,
                    const httplib::Request& req, httplib::Response& res) {
  if (absl::Status s = Authorize(ctx, req); !s.ok()) return OpenAiFail(res, s);
  absl::StatusOr<nlohmann::json> body = ParseJsonObject(req.body);
  if (!body.ok()) return OpenAiFail(res, body.status());
  if (ctx.tokenizer() == nullptr) {
    return OpenAiFail(res, absl::FailedPreconditionError(
                               "the served model has no tokenizer.model (token ids only)"));
  }
  const nlohmann::json& model = JsonField(*body, "model");
  if (!model.is_null() && !model.is_string()) {
    return OpenAiFail(res, JsonWrongType("model", "a string", model));
  }
  if (absl::Status s = CheckModel(ctx, model.is_string() ? model.get<std::string>() : "");
      !s.ok()) {
    return OpenAiFail(res, s);
  }
  nlohmann::json out;
  std::vector<int32_t> ids;
  if (body->contains("messages")) {
    absl::StatusOr<std::vector<ChatMessage>> messages = ParseChatMessages((*body)["messages"]);
    if (!messages.ok()) return OpenAiFail(res, messages.status());
    absl::StatusOr<ChatTemplate> chat_template = RequestChatTemplate(*body, options.chat_template);
    if (!chat_template.ok()) return OpenAiFail(res, chat_template.status());
    absl::StatusOr<ChatPrompt> prompt = RenderChat(*chat_template, *messages, *ctx.tokenizer());
    if (!prompt.ok()) return OpenAiFail(res, prompt.status());
    ids = std::move(prompt->token_ids);
    out["prompt"] = prompt->text;
  } else {
    const nlohmann::json& prompt = JsonField(*body, "prompt");
    if (!prompt.is_string()) {
      return OpenAiFail(res, JsonWrongType("prompt", "a string (or give messages)", prompt));
    }
    const nlohmann::json& special = JsonField(*body, "add_special_tokens");
    if (!special.is_null() && !special.is_boolean()) {
      return OpenAiFail(res, JsonWrongType("add_special_tokens", "a boolean", special));
    }
    const std::string text = prompt.get<std::string>();
    if (absl::Status s = ctx.CheckText(text.size(), "prompt"); !s.ok()) return OpenAiFail(res, s);
    ids = ctx.tokenizer()->Encode(text, special.is_null() || special.get<bool>());
  }
  out["tokens"] = ids;
  out["count"] = ids.size();
  out["max_model_len"] = ctx.config().max_position_embeddings;
  SetJson(res, 200, out);
}

// The model of a /v2/models/{name}[/versions/{version}]/... path: NotFound unless served.
absl::Status KServeModel(const ServingContext& ctx, const httplib::Request& req) {
  const std::string name = req.matches.size() > 1 ? std::string(req.matches[1]) : "";
  const std::string version = req.matches.size() > 2 ? std::string(req.matches[2]) : "";
  if (name == ctx.model_name() && (version.empty() || version == kKServeModelVersion)) {
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("unknown model \"", Printable(name), "\"",
                                          version.empty() ? "" : absl::StrCat(" version \"", Printable(version), "\""),
                                          "; this server serves \"", ctx.model_name(),
                                          "\" version ", kKServeModelVersion));
}

// How a KServe route reads its body into the gRPC request (InferRequestFromJson,
// GenerateRequestFromJson).
using KServeFromJson = absl::StatusOr<inference::ModelInferRequest> (*)(const std::string& body,
                                                                       const std::string& model,
                                                                       const std::string& version);

// What every KServe generation route does first: admit, check the model of the path, read
// the body into `*infer` with `from_json`, validate it as the gRPC ModelInfer would, submit.
absl::StatusOr<std::unique_ptr<HttpGeneration>> SubmitKServe(const ServingContext& ctx,
                                                             const httplib::Request& req,
                                                             KServeFromJson from_json,
                                                             inference::ModelInferRequest* infer) {
  if (absl::Status s = Admit(ctx, req); !s.ok()) return s;
  if (absl::Status s = KServeModel(ctx, req); !s.ok()) return s;
  absl::StatusOr<inference::ModelInferRequest> read = from_json(req.body, ctx.model_name(), "");
  if (!read.ok()) return read.status();
  *infer = *std::move(read);
  absl::StatusOr<GenerationParams> params = ParseModelInferRequest(*infer, ctx.model_name());
  if (!params.ok()) return params.status();
  if (absl::Status s = ctx.CheckText(params->text->size(), kKServeInput); !s.ok()) return s;
  return SubmitParams(ctx, *params);
}

// POST /v2/models/{name}/infer.
void KServeInfer(const ServingContext& ctx, const httplib::Request& req, httplib::Response& res) {
  inference::ModelInferRequest infer;
  auto gen = SubmitKServe(ctx, req, InferRequestFromJson, &infer);
  if (!gen.ok()) return KServeFail(res, gen.status());
  absl::StatusOr<GenerationResult> result = (*gen)->WaitResult(ClientGone(req));
  if (!result.ok()) return KServeFail(res, result.status());
  inference::ModelInferResponse response;
  FillModelInferResponse(infer, ctx.model_name(), *result, &response);
  SetJson(res, 200, InferResponseToJson(response));
}

// POST /v2/models/{name}/generate and /generate_stream (Triton's generate extension).
void KServeGenerate(const ServingContext& ctx, bool stream, const httplib::Request& req,
                    httplib::Response& res) {
  inference::ModelInferRequest infer;
  auto gen = SubmitKServe(ctx, req, GenerateRequestFromJson, &infer);
  if (!gen.ok()) return KServeFail(res, gen.status());
  const std::string model = ctx.model_name();
  if (!stream) {
    absl::StatusOr<GenerationResult> result = (*gen)->WaitResult(ClientGone(req));
    if (!result.ok()) return KServeFail(res, result.status());
    return SetJson(res, 200, GenerateResponseJson(model, result->text, &*result));
  }
  StreamEvents(res, *std::move(gen), [model](const RequestEvent& e) {
    if (!e.error.ok()) return SseEvent({{"error", std::string(e.error.message())}});
    if (!e.finished) {
      return e.text.empty() ? std::string() : SseEvent(GenerateResponseJson(model, e.text, nullptr));
    }
    GenerationResult last;
    last.Add(e);
    return SseEvent(GenerateResponseJson(model, e.text, &last));
  });
}

void KServeReady(const ServingContext& ctx, const nlohmann::json& base, httplib::Response& res) {
  nlohmann::json body = base;
  const absl::Status ready = ctx.Readiness();
  body["ready"] = ready.ok();
  if (!ready.ok()) body["reason"] = std::string(ready.message());
  SetJson(res, ready.ok() ? 200 : 503, body);
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

  // The OpenAI-compatible API.
  const ServingContext& ctx = *context_;
  const Options& opts = options_;
  Route(s, "POST", "/v1/completions", "/v1/completions",
        [&ctx, &opts](const httplib::Request& req, httplib::Response& res) {
          OpenAiGenerate(ctx, opts, /*chat=*/false, req, res);
        });
  Route(s, "POST", "/v1/chat/completions", "/v1/chat/completions",
        [&ctx, &opts](const httplib::Request& req, httplib::Response& res) {
          OpenAiGenerate(ctx, opts, /*chat=*/true, req, res);
        });
  Route(s, "GET", "/v1/models", "/v1/models",
        [&ctx, started = static_cast<int64_t>(std::time(nullptr))](const httplib::Request& req,
                                                                   httplib::Response& res) {
          if (absl::Status st = Authorize(ctx, req); !st.ok()) return OpenAiFail(res, st);
          SetJson(res, 200,
                  {{"object", "list"},
                   {"data", nlohmann::json::array({{{"id", ctx.model_name()},
                                                    {"object", "model"},
                                                    {"created", started},
                                                    {"owned_by", "switchyard"},
                                                    {"max_model_len",
                                                     ctx.config().max_position_embeddings}}})}});
        });
  Route(s, "POST", "/tokenize", "/tokenize",
        [&ctx, &opts](const httplib::Request& req, httplib::Response& res) {
          OpenAiTokenize(ctx, opts, req, res);
        });

  // KServe v2 REST and the generate extension.
  Route(s, "GET", "/v2/health/live", "/v2/health/live",
        [&ctx](const httplib::Request& req, httplib::Response& res) {
          if (absl::Status st = Authorize(ctx, req); !st.ok()) return KServeFail(res, st);
          SetJson(res, 200, {{"live", true}});
        });
  Route(s, "GET", "/v2/health/ready", "/v2/health/ready",
        [&ctx](const httplib::Request& req, httplib::Response& res) {
          if (absl::Status st = Authorize(ctx, req); !st.ok()) return KServeFail(res, st);
          KServeReady(ctx, nlohmann::json::object(), res);
        });
  Route(s, "GET", "/v2", "/v2", [&ctx](const httplib::Request& req, httplib::Response& res) {
    if (absl::Status st = Authorize(ctx, req); !st.ok()) return KServeFail(res, st);
    SetJson(res, 200,
            {{"name", "switchyard"}, {"version", SWITCHYARD_VERSION}, {"extensions", {"generate"}}});
  });
  const std::string model = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)";
  Route(s, "GET", model, "/v2/models/{name}",
        [&ctx](const httplib::Request& req, httplib::Response& res) {
          if (absl::Status st = Authorize(ctx, req); !st.ok()) return KServeFail(res, st);
          if (absl::Status st = KServeModel(ctx, req); !st.ok()) return KServeFail(res, st);
          const nlohmann::json tensor = {{"datatype", "BYTES"}, {"shape", {1}}};
          nlohmann::json in = tensor, out = tensor;
          in["name"] = kKServeInput;
          out["name"] = kKServeOutput;
          SetJson(res, 200,
                  {{"name", ctx.model_name()},
                   {"versions", {kKServeModelVersion}},
                   {"platform", "switchyard"},
                   {"inputs", {in}},
                   {"outputs", {out}}});
        });
  Route(s, "GET", model + "/ready", "/v2/models/{name}/ready",
        [&ctx](const httplib::Request& req, httplib::Response& res) {
          if (absl::Status st = Authorize(ctx, req); !st.ok()) return KServeFail(res, st);
          if (absl::Status st = KServeModel(ctx, req); !st.ok()) return KServeFail(res, st);
          KServeReady(ctx, {{"name", ctx.model_name()}}, res);
        });
  Route(s, "POST", model + "/infer", "/v2/models/{name}/infer",
        [&ctx](const httplib::Request& req, httplib::Response& res) { KServeInfer(ctx, req, res); });
  Route(s, "POST", model + "/generate", "/v2/models/{name}/generate",
        [&ctx](const httplib::Request& req, httplib::Response& res) {
          KServeGenerate(ctx, /*stream=*/false, req, res);
        });
  Route(s, "POST", model + "/generate_stream", "/v2/models/{name}/generate_stream",
        [&ctx](const httplib::Request& req, httplib::Response& res) {
          KServeGenerate(ctx, /*stream=*/true, req, res);
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
  // The listening socket passes here just before httplib binds it: note it, to raise its
  // backlog once bound.
  auto listen_fd = std::make_shared<int>(-1);
  s.set_socket_options([listen_fd](int sock) {
    SocketOptions(sock);
    *listen_fd = sock;
  });
  s.set_payload_max_length(options_.max_body_bytes);
  // A stream writes one small event per token: Nagle's algorithm would hold each one back
  // until the client's delayed ACK (tens of milliseconds).
  s.set_tcp_nodelay(true);
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
    if (req.path.rfind("/v1/", 0) == 0) {  // the OpenAI API's form of an error
      SetJson(res, res.status,
              {{"error",
                {{"message", message},
                 {"type", res.status == 404 ? "not_found_error" : "invalid_request_error"},
                 {"param", nullptr},
                 {"code", res.status}}}});
      return;
    }
    SetJson(res, res.status, {{"error", message}});
  });
  // Counted just before the status line is written, so that a client which has its answer
  // (or a stream's first bytes) finds the request in /metrics (the logger runs after the
  // body, too late for that).
  s.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (kProbePaths.count(req.path) > 0) return;
    // Requests no route took share one label: a client must not create series at will.
    context_->metrics()->CountRequest("http", t_route.empty() ? "unmatched" : t_route,
                                      std::to_string(res.status));
  });
  s.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    const std::optional<Clock::time_point> start = std::exchange(t_request_start, std::nullopt);
    t_route.clear();
    if (kProbePaths.count(req.path) > 0) return;
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
  if (*listen_fd >= 0 && ::listen(*listen_fd, kListenBacklog) != 0) {
    spdlog::warn("HTTP: cannot raise the listen backlog to {}: {}", kListenBacklog,
                 std::strerror(errno));
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
