// `switchyard loadgen`: a closed-loop load generator for a running `switchyard serve`. It
// streams switchyard.v1.Switchyard/Generate calls (--protocol grpc, the default) or
// OpenAI-style POST /v1/completions with "stream": true (--protocol http, the --target being
// the server's --http-listen port) from --concurrency workers until --requests calls have
// been issued in total, and reports throughput and latency percentiles, so the two front ends
// are compared on the same load.
//
// Contracts:
//  - Prompts are token ids, not text: request i (0-based, whichever worker issues it) sends
//    exactly --prompt-len ids, BOS (1) followed by ids drawn uniformly from [3, 4000) by a
//    SplitMix64 generator seeded with i. The prompts therefore depend only on the request index
//    and --prompt-len (not on --seed, --concurrency or timing), so runs are repeatable; the
//    served model's vocabulary must hold at least 4000 ids.
//  - Every request carries max_tokens = --max-tokens, temperature = --temperature and
//    seed = --seed. Generation may end early at EOS unless --ignore-eos, so token
//    counts are the ids actually received.
//  - A request succeeds when its stream ends with status OK after a message with finish_reason
//    set. A stream that ends OK without one is counted as the error NO_FINISH_REASON. Over
//    HTTP: status 200 and a chunk with finish_reason; other statuses count as HTTP_<status>,
//    a failed connection as HTTP_<httplib's error>, an error event as STREAM_ERROR. Token ids
//    per chunk come from the server's return_token_ids extension, so TTFT and ITL mean the
//    same over both protocols.
//  - Latencies are measured on this host with a monotonic clock from just before the call is
//    started (so the first calls include connecting to the server):
//      TTFT        until the first message carrying at least one token id;
//      ITL         for every later message carrying n >= 1 ids, the time since the previous
//                  message carrying ids, divided by n, counted once per id (ids that arrive in
//                  the same message as the first token add no ITL sample);
//      end-to-end  until the stream's final status.
//  - Only successful requests contribute latency samples, output tokens and requests/s.
//    Percentiles are nearest-rank: the ceil(p/100 * n)-th smallest of n samples.
//  - cpu_s is this process's CPU time (user and system, all threads) over the run, from the
//    same start as wall_s: what the client takes from a machine it shares with the server.
//  - Exit code 0 when every request succeeded, 1 otherwise (the report is printed either way),
//    2 on a usage error.
#include <sys/resource.h>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/client_connection.h"
#include "cli/commands.h"
#include "coordinator/server/grpc_status.h"
#include "cli/run_flags.h"
#include "common/stats.h"
#include "nlohmann/json.hpp"
#include "httplib.h"
#include "switchyard/v1/switchyard.grpc.pb.h"

namespace switchyard::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int32_t kBosId = 1;
constexpr int32_t kPromptIdLo = 3;     // first id a prompt may draw (after BOS, EOS, ...)
constexpr int32_t kPromptIdHi = 4000;  // one past the last

struct LoadgenArgs {
  ClientFlags conn{.target = "", .timeout_s = 300};
  int concurrency = 1;
  int requests = 8;
  int prompt_len = 16;
  int max_tokens = 64;
  double temperature = 0;
  uint64_t seed = 0;
  bool ignore_eos = false;
  bool json = false;
  std::string protocol = "grpc";  // or "http"
};

// What one request observed. Written only by the worker that issued it.
struct RequestResult {
  bool ok = false;
  std::string code_name;  // the gRPC status code name, or NO_FINISH_REASON
  std::string message;    // the error message; empty on success
  int tokens = 0;         // token ids received
  double ttft_s = -1;     // < 0: no token arrived
  double e2e_s = 0;
  std::vector<double> itl_s;
};

// SplitMix64 (Steele, Lea, Flood 2014): a fixed, portable sequence for a given seed, unlike
// the standard library's distributions whose output is implementation-defined.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi), by rejection so there is no modulo bias.
  int32_t Uniform(int32_t lo, int32_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi - lo);
    const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t x;
    do x = Next();
    while (x >= limit);
    return lo + static_cast<int32_t>(x % span);
  }

 private:
  uint64_t state_;
};

// The prompt of request `index`: BOS then len - 1 ids uniform in [kPromptIdLo, kPromptIdHi).
std::vector<int32_t> PromptFor(uint64_t index, int len) {
  SplitMix64 rng(index);
  std::vector<int32_t> ids(len);
  ids[0] = kBosId;
  for (int i = 1; i < len; ++i) ids[i] = rng.Uniform(kPromptIdLo, kPromptIdHi);
  return ids;
}



double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Issues request `index` as one streaming Generate call and records what arrived.
RequestResult RunOne(switchyard::v1::Switchyard::Stub& stub, const LoadgenArgs& a,
                     const ClientConnection& conn, uint64_t index) {
  switchyard::v1::GenerateRequest req;
  for (int32_t id : PromptFor(index, a.prompt_len)) req.add_token_ids(id);
  req.set_max_tokens(a.max_tokens);
  req.set_temperature(static_cast<float>(a.temperature));
  req.set_seed(a.seed);
  if (a.ignore_eos) req.set_ignore_eos(true);

  grpc::ClientContext ctx;
  conn.Prepare(&ctx);  // deadline, token

  RequestResult r;
  bool finished = false;
  const Clock::time_point start = Clock::now();
  Clock::time_point last_token;
  std::unique_ptr<grpc::ClientReader<switchyard::v1::GenerateResponse>> reader =
      stub.Generate(&ctx, req);
  switchyard::v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    const Clock::time_point now = Clock::now();
    const int n = msg.token_ids_size();
    if (n > 0) {
      if (r.ttft_s < 0) {
        r.ttft_s = Seconds(now - start);
      } else {
        const double per_token = Seconds(now - last_token) / n;
        r.itl_s.insert(r.itl_s.end(), n, per_token);
      }
      last_token = now;
      r.tokens += n;
    }
    if (msg.finish_reason() != switchyard::v1::FINISH_REASON_UNSPECIFIED) finished = true;
  }
  const grpc::Status status = reader->Finish();
  r.e2e_s = Seconds(Clock::now() - start);
  if (!status.ok()) {
    r.code_name = StatusCodeName(status.error_code());
    r.message = status.error_message();
  } else if (!finished) {
    r.code_name = "NO_FINISH_REASON";
    r.message = "the stream ended OK without a message with finish_reason set";
  } else {
    r.ok = true;
    r.code_name = "OK";
  }
  return r;
}

// The HTTP client of one worker: keep-alive, TLS with the client flags' files.
std::unique_ptr<httplib::Client> HttpClient(const LoadgenArgs& a) {
  const bool tls = !a.conn.tls_ca.empty() || !a.conn.tls_cert.empty();
  auto c = std::make_unique<httplib::Client>((tls ? "https://" : "http://") + a.conn.target,
                                             a.conn.tls_cert, a.conn.tls_key);
  if (!a.conn.tls_ca.empty()) c->set_ca_cert_path(a.conn.tls_ca.c_str());
  c->set_keep_alive(true);
  c->set_tcp_nodelay(true);
  const auto timeout = std::chrono::duration<double>(a.conn.timeout_s);
  c->set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
  c->set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
  return c;
}

// Issues request `index` as one streamed POST /v1/completions and records what arrived.
RequestResult RunOneHttp(httplib::Client& client, const LoadgenArgs& a, const std::string& token,
                         uint64_t index) {
  const nlohmann::json body = {{"prompt", PromptFor(index, a.prompt_len)},
                               {"max_tokens", a.max_tokens},
                               {"temperature", a.temperature},
                               {"seed", a.seed},
                               {"ignore_eos", a.ignore_eos},
                               {"stream", true},
                               {"return_token_ids", true}};
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  if (!token.empty()) req.set_header("Authorization", "Bearer " + token);

  RequestResult r;
  bool finished = false;
  std::string stream_error;
  std::string pending;  // bytes of an event not yet complete
  std::string raw;      // the body of a refusal
  const Clock::time_point start = Clock::now();
  Clock::time_point last_token;
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    pending.append(data, len);
    if (raw.size() < 4096) raw.append(data, std::min(len, 4096 - raw.size()));
    size_t end;
    while ((end = pending.find("\n\n")) != std::string::npos) {
      const std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
      const nlohmann::json j = nlohmann::json::parse(event.substr(6), nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) {
        stream_error = j["error"].is_object() ? j["error"].value("message", "") : j["error"].dump();
        continue;
      }
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const nlohmann::json& choice = j["choices"][0];
      const int n = choice.contains("token_ids") ? static_cast<int>(choice["token_ids"].size()) : 0;
      const Clock::time_point now = Clock::now();
      if (n > 0) {
        if (r.ttft_s < 0) {
          r.ttft_s = Seconds(now - start);
        } else {
          r.itl_s.insert(r.itl_s.end(), n, Seconds(now - last_token) / n);
        }
        last_token = now;
        r.tokens += n;
      }
      if (!choice.value("finish_reason", nlohmann::json()).is_null()) finished = true;
    }
    return true;
  };
  httplib::Result res = client.send(req);
  r.e2e_s = Seconds(Clock::now() - start);
  if (!res) {
    r.code_name = "HTTP_" + httplib::to_string(res.error());
    r.message = "no response from " + a.conn.target;
  } else if (res->status != 200) {
    r.code_name = "HTTP_" + std::to_string(res->status);
    const nlohmann::json j = nlohmann::json::parse(raw, nullptr, false);
    r.message = raw;
    if (!j.is_discarded() && j.contains("error")) {
      r.message = j["error"].is_object() ? j["error"].value("message", raw) : j["error"].dump();
    }
  } else if (!stream_error.empty()) {
    r.code_name = "STREAM_ERROR";
    r.message = stream_error;
  } else if (!finished) {
    r.code_name = "NO_FINISH_REASON";
    r.message = "the stream ended without a chunk with finish_reason set";
  } else {
    r.ok = true;
    r.code_name = "OK";
  }
  return r;
}

// This process's CPU time so far (user and system, every thread).
double ProcessCpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return t.tv_sec + t.tv_usec * 1e-6; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

// Nearest-rank percentile of sorted samples; nullopt when there are none.
std::optional<double> Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return std::nullopt;
  return NearestRank(sorted, p / 100.0);
}

struct Distribution {
  std::optional<double> p50_ms, p99_ms;
  size_t samples = 0;
};

Distribution Summarize(std::vector<double> seconds) {
  std::sort(seconds.begin(), seconds.end());
  auto ms = [](std::optional<double> s) {
    return s ? std::optional<double>(*s * 1e3) : std::nullopt;
  };
  return {ms(Percentile(seconds, 50)), ms(Percentile(seconds, 99)), seconds.size()};
}

nlohmann::ordered_json ToJson(const Distribution& d) {
  nlohmann::ordered_json j;
  j["p50"] = d.p50_ms ? nlohmann::ordered_json(*d.p50_ms) : nlohmann::ordered_json(nullptr);
  j["p99"] = d.p99_ms ? nlohmann::ordered_json(*d.p99_ms) : nlohmann::ordered_json(nullptr);
  j["samples"] = d.samples;
  return j;
}

std::string FormatMs(std::optional<double> ms) {
  if (!ms) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", *ms);
  return buf;
}

int RunLoadgen(const LoadgenArgs& a) {
  auto conn = ClientConnection::Open(a.conn);
  if (!conn.ok()) return Fail(conn.status());
  std::string token;
  if (!a.conn.token_file.empty()) {
    auto t = ReadBearerToken(a.conn.token_file);
    if (!t.ok()) return Fail(t.status());
    token = *t;
  }
  const bool http = a.protocol == "http";
  // A server that closes a keep-alive connection as a request goes out must be an error
  // counted, not SIGPIPE ending the run (httplib's client writes without MSG_NOSIGNAL).
  if (http) std::signal(SIGPIPE, SIG_IGN);

  // One channel (one HTTP/2 connection) shared by every worker; each worker has its own stub.
  std::shared_ptr<grpc::Channel> channel = conn->channel();
  std::vector<RequestResult> results(a.requests);
  std::atomic<int> next{0};
  const int workers = std::min(a.concurrency, a.requests);

  const Clock::time_point start = Clock::now();
  const double cpu_start = ProcessCpuSeconds();
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      if (http) {  // one keep-alive connection per worker
        std::unique_ptr<httplib::Client> client = HttpClient(a);
        for (int i = next.fetch_add(1); i < a.requests; i = next.fetch_add(1)) {
          results[i] = RunOneHttp(*client, a, token, static_cast<uint64_t>(i));
        }
        return;
      }
      auto stub = switchyard::v1::Switchyard::NewStub(channel);
      for (int i = next.fetch_add(1); i < a.requests; i = next.fetch_add(1)) {
        results[i] = RunOne(*stub, a, *conn, static_cast<uint64_t>(i));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const double wall_s = Seconds(Clock::now() - start);
  const double cpu_s = ProcessCpuSeconds() - cpu_start;

  int ok = 0;
  int64_t output_tokens = 0;
  std::vector<double> ttft, itl, e2e;
  std::map<std::string, int> errors;                 // code name -> count
  std::map<std::string, std::string> first_message;  // code name -> first message seen
  for (const RequestResult& r : results) {
    if (!r.ok) {
      ++errors[r.code_name];
      first_message.emplace(r.code_name, r.message);
      continue;
    }
    ++ok;
    output_tokens += r.tokens;
    if (r.ttft_s >= 0) ttft.push_back(r.ttft_s);
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    e2e.push_back(r.e2e_s);
  }
  const double tokens_per_s = wall_s > 0 ? output_tokens / wall_s : 0;
  const double requests_per_s = wall_s > 0 ? ok / wall_s : 0;
  const Distribution ttft_d = Summarize(std::move(ttft));
  const Distribution itl_d = Summarize(std::move(itl));
  const Distribution e2e_d = Summarize(std::move(e2e));
  const int exit_code = ok == a.requests ? 0 : 1;

  if (a.json) {
    nlohmann::ordered_json j;
    j["target"] = a.conn.target;
    j["protocol"] = a.protocol;
    j["concurrency"] = a.concurrency;
    j["requests"] = a.requests;
    j["prompt_len"] = a.prompt_len;
    j["max_tokens"] = a.max_tokens;
    j["temperature"] = a.temperature;
    j["seed"] = a.seed;
    j["wall_s"] = wall_s;
    j["cpu_s"] = cpu_s;
    j["requests_ok"] = ok;
    j["requests_failed"] = a.requests - ok;
    j["output_tokens"] = output_tokens;
    j["output_tokens_per_s"] = tokens_per_s;
    j["requests_per_s"] = requests_per_s;
    j["ttft_ms"] = ToJson(ttft_d);
    j["itl_ms"] = ToJson(itl_d);
    j["e2e_ms"] = ToJson(e2e_d);
    j["errors"] = nlohmann::ordered_json::object();
    for (const auto& [name, count] : errors) j["errors"][name] = count;
    j["error_messages"] = nlohmann::ordered_json::object();
    for (const auto& [name, message] : first_message) j["error_messages"][name] = message;
    std::cout << j.dump(2) << "\n";
    return exit_code;
  }

  std::printf("loadgen: %s (%s), %d requests, concurrency %d, prompt %d tokens, max_tokens %d\n",
              a.conn.target.c_str(), a.protocol.c_str(), a.requests, a.concurrency, a.prompt_len,
              a.max_tokens);
  std::printf("  wall time          %.3f s\n", wall_s);
  std::printf("  client CPU time    %.3f s\n", cpu_s);
  std::printf("  requests ok        %d of %d\n", ok, a.requests);
  std::printf("  output tokens      %lld\n", static_cast<long long>(output_tokens));
  std::printf("  output tokens/s    %.1f\n", tokens_per_s);
  std::printf("  requests/s         %.3f\n", requests_per_s);
  std::printf("  latency (ms)       %12s %12s %10s\n", "p50", "p99", "samples");
  auto row = [](const char* label, const Distribution& d) {
    std::printf("    %-16s %12s %12s %10zu\n", label, FormatMs(d.p50_ms).c_str(),
                FormatMs(d.p99_ms).c_str(), d.samples);
  };
  row("ttft", ttft_d);
  row("itl", itl_d);
  row("end-to-end", e2e_d);
  if (errors.empty()) {
    std::printf("  errors             none\n");
  } else {
    std::printf("  errors\n");
    for (const auto& [name, count] : errors) {
      std::printf("    %s: %d (first: %s)\n", name.c_str(), count, first_message[name].c_str());
    }
  }
  std::fflush(stdout);
  return exit_code;
}

}  // namespace

void RegisterLoadgen(CLI::App& app, Action* action) {
  static LoadgenArgs a;
  CLI::App* cmd = app.add_subcommand(
      "loadgen", "Stream Generate calls at a running server and report throughput and latency");
  cmd->footer(
      "Prompts: request i sends BOS (1) then prompt-len - 1 token ids uniform in [3, 4000) from a\n"
      "SplitMix64 generator seeded with i, so every run sends the same prompts. Generation may\n"
      "stop early at EOS; token counts are the ids received. Latency percentiles (nearest rank)\n"
      "and throughput cover successful requests. Exit 0 when every request succeeded, else 1.");
  AddClientFlags(cmd, &a.conn, /*target_required=*/true, /*request_id=*/false);
  cmd->add_option("--concurrency", a.concurrency, "Streams in flight at once")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--requests", a.requests, "Requests to issue in total")
      ->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--prompt-len", a.prompt_len, "Prompt length in tokens (BOS included)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--max-tokens", a.max_tokens, "max_tokens of every request")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature", a.temperature, "Sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--seed", a.seed, "Sampler seed of every request");
  cmd->add_flag("--ignore-eos", a.ignore_eos,
                "Generate max_tokens tokens even past end-of-sequence (fixed output length)");
  cmd->add_flag("--json", a.json, "Print JSON");
  cmd->add_option("--protocol", a.protocol,
                  "grpc: switchyard.v1 Generate streams at --target; http: streamed POST "
                  "/v1/completions at --target, the server's --http-listen port")
      ->check(CLI::IsMember({"grpc", "http"}))
      ->capture_default_str();
  cmd->callback([action] { *action = [] { return RunLoadgen(a); }; });
}

}  // namespace switchyard::cli
