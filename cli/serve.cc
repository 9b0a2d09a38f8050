// `switchyard serve`: every rank of the job loads its shard; rank 0 runs the scheduler and
// the gRPC front end until SIGTERM/SIGINT, then drains and shuts every rank down cleanly.
#include <malloc.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/client_connection.h"
#include "cli/commands.h"
#include "cli/run_flags.h"
#include "comm/job_failure.h"
#include "comm/liveness.h"
#include "common/host_port.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "coordinator/model_session.h"
#include "coordinator/rebalancer.h"
#include "coordinator/scheduler.h"
#include "coordinator/server/chat_template.h"
#include "coordinator/server/front_end.h"
#include "coordinator/server/serving_metrics.h"
#include "worker/distributed_executor.h"

namespace switchyard::cli {
namespace {

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal.store(sig); }

struct ServeArgs {
  RunFlags run;
  std::string listen = "127.0.0.1:50051";
  std::string tls_cert, tls_key, tls_client_ca, auth_token_file;
  bool expose_reflection = false;
  int max_message_bytes = 4 << 20;
  std::string model_name;
  std::string port_file;
  std::string http_listen;
  std::string http_port_file;
  int http_threads = 64;
  int metrics_pair_ranks = 64;
  int rebalance_interval = 0;
  int rebalance_redundant = 1;
  double rebalance_min_gain = 0.05;
  std::string chat_template;  // empty: the checkpoint's, when recognised
  int default_max_tokens = 256;
  int kv_blocks = 0;
  std::string kv_memory = "1GiB";
  int block_size = 16;
  int max_queue = 256;
  int max_running = 64;
  int prefill_chunk = 256;
  double drain_timeout_s = 30;
};

// The latest cluster status, refreshed by the scheduler thread and read by gRPC threads.
class StatusSnapshot {
 public:
  void Set(ClusterStatusInfo info) {
    std::lock_guard<std::mutex> lock(mu_);
    info_ = std::move(info);
  }
  ClusterStatusInfo Get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return info_;
  }

 private:
  mutable std::mutex mu_;
  ClusterStatusInfo info_;
};

ClusterStatusInfo ToClusterStatus(const std::vector<RankStatus>& ranks, const ModelConfig& cfg,
                                  int ep, int pp) {
  ClusterStatusInfo info;
  info.ep = ep;
  info.pp = pp;
  info.expert_token_counts.assign(cfg.num_hidden_layers,
                                  std::vector<int64_t>(cfg.num_local_experts, 0));
  for (const RankStatus& r : ranks) {
    info.ranks.push_back(r);
    for (size_t i = 0; i < r.expert_tokens.size(); ++i) {
      for (size_t e = 0; e < r.expert_tokens[i].size(); ++e) {
        info.expert_token_counts[r.layer_begin + i][e] += r.expert_tokens[i][e];
      }
    }
  }
  return info;
}

// Binds (and releases) the address the server will listen on, so that a port in use is
// reported with the system's reason before anything loads.
absl::Status CheckBindable(const std::string& flag, const std::string& listen,
                           const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string port_text = std::to_string(port);
  if (int rc = getaddrinfo(host.c_str(), port_text.c_str(), &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", listen, ": cannot resolve \"", host, "\": ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(found, &freeaddrinfo);
  const int fd = socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as gRPC does
  const int rc = bind(fd, found->ai_addr, found->ai_addrlen);
  const int err = errno;
  close(fd);
  if (rc == 0) return absl::OkStatus();
  if (err == EADDRINUSE) {
    return absl::UnavailableError(
        absl::StrCat(flag, " ", listen, ": address already in use (another server on this port?)"));
  }
  return absl::UnavailableError(absl::StrCat(flag, " ", listen, ": ", std::strerror(err)));
}

// What can fail at start without loading anything, checked on rank 0 before any rank loads
// weights: the address, the TLS files, the token file (its token goes to `*token`), the chat
// template (to `*chat`).
absl::Status CheckServeFlags(const ServeArgs& a, std::string* token, ChatTemplate* chat) {
  if (a.rebalance_interval > 0 && a.run.ep < 2) {
    return absl::InvalidArgumentError(
        "--rebalance-interval: moving experts needs expert parallelism (--ep 2 or more); with "
        "one EP rank every rank holds every expert of its layers");
  }
  ASSIGN_OR_RETURN(HostPort grpc_address, SplitHostPort(a.listen, "--listen"));
  RETURN_IF_ERROR(CheckBindable("--listen", a.listen, grpc_address.host, grpc_address.port));
  bool loopback = IsLoopbackHost(grpc_address.host);
  if (!a.http_listen.empty()) {
    ASSIGN_OR_RETURN(HostPort http_address, SplitHostPort(a.http_listen, "--http-listen"));
    if (http_address.port != 0 && http_address.port == grpc_address.port) {
      return absl::InvalidArgumentError(absl::StrCat("--http-listen ", a.http_listen,
                                                     ": the same port as --listen ", a.listen,
                                                     "; give the HTTP server a port of its own"));
    }
    RETURN_IF_ERROR(
        CheckBindable("--http-listen", a.http_listen, http_address.host, http_address.port));
    loopback = loopback && IsLoopbackHost(http_address.host);
  }
  RETURN_IF_ERROR(CheckTlsFiles(a.tls_cert, a.tls_key, "--tls-cert", "--tls-key"));
  if (!a.tls_client_ca.empty() && a.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca: mutual TLS needs the server's own --tls-cert and --tls-key");
  }
  ASSIGN_OR_RETURN(*token, ReadBearerToken(a.auth_token_file, "--auth-token-file"));
  ASSIGN_OR_RETURN(*chat, ChatTemplateForModel(a.run.model, a.chat_template));
  // A token sent in plaintext across a network can be read by anyone on the path.
  if (!a.auth_token_file.empty() && a.tls_cert.empty() && !loopback) {
    spdlog::warn(
        "--auth-token-file without TLS on {}: clients send the token in plaintext over the "
        "network; add --tls-cert/--tls-key",
        a.listen);
  }
  return absl::OkStatus();
}

// Where clients reach a listener of `listen` bound to `port`: this host's name for a wildcard
// address (a client on another node needs a name, not 0.0.0.0), else the address given.
std::string Reachable(const std::string& listen, int port) {
  absl::StatusOr<HostPort> hp = SplitHostPort(listen, "--listen");
  std::string host = hp.ok() ? hp->host : "";
  if (host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]") {
    char name[256] = {};
    host = gethostname(name, sizeof(name) - 1) == 0 ? name : "localhost";
  }
  if (host.find(':') != std::string::npos && host.front() != '[') host = "[" + host + "]";
  return absl::StrCat(host, ":", port);
}

int RunServe(const ServeArgs& a) {
  // Every rank ignores SIGTERM/SIGINT's default action: rank 0 drains and then releases the
  // workers, so the whole job exits 0 together (mpirun forwards the signal to every rank).
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  SessionOptions so = ToSessionOptions(a.run, true);
  so.kv_blocks = a.kv_blocks;
  so.kv_memory = *ParseByteSizeFlag(a.kv_memory, /*allow_zero=*/true);  // checked at parse
  so.kv_max_sequences = a.max_running;
  so.block_size = a.block_size;
  std::string token;  // rank 0's, read by the check
  ChatTemplate chat;  // likewise
  so.coordinator_check = [&a, &token, &chat] { return CheckServeFlags(a, &token, &chat); };
  auto opened = ModelSession::Open(so);
  if (!opened.ok()) return Fail(opened.status());
  ModelSession& s = **opened;
  if (!s.is_coordinator()) return WorkerMain(s);

  // Request-sized buffers (a prompt of megabytes, its gRPC message) are mapped on their own
  // and unmapped when freed, so a burst of large requests leaves no heap behind: glibc's
  // default threshold rises to 32 MiB after the first such free and keeps them in arenas.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);

  StatusSnapshot snapshot;
  const int ep = a.run.ep, pp = a.run.pp;
  auto refresh = [&]() -> absl::Status {
    auto ranks = s.executor->CollectStatus();
    if (!ranks.ok()) return ranks.status();
    snapshot.Set(ToClusterStatus(*ranks, s.config, ep, pp));
    return absl::OkStatus();
  };
  if (absl::Status st = refresh(); !st.ok()) return Finish(s, Fail(st));

  ServingMetrics metrics({.max_pair_ranks = a.metrics_pair_ranks});
  SchedulerOptions sched_opts;
  sched_opts.observer = &metrics;
  sched_opts.max_queue = a.max_queue;
  sched_opts.max_running = a.max_running;
  sched_opts.step_token_budget = a.run.max_step_tokens;
  sched_opts.prefill_chunk = std::min(a.prefill_chunk, a.run.max_step_tokens);
  std::unique_ptr<Rebalancer> rebalancer;
  if (a.rebalance_interval > 0 && s.worker() != nullptr && !s.worker()->backend().moves_experts()) {
    return Finish(s, Fail(absl::UnimplementedError(
                         "--rebalance-interval: this job's stage backend (the CUDA backend) "
                         "cannot move experts yet; run on --device cpu")));
  }
  if (a.rebalance_interval > 0 && s.distributed_executor() != nullptr) {
    rebalancer = std::make_unique<Rebalancer>(
        s.distributed_executor(), s.placement, s.config,
        RebalanceOptions{.interval_steps = a.rebalance_interval,
                         .redundant = a.rebalance_redundant,
                         .min_gain = a.rebalance_min_gain});
    sched_opts.after_step = [&rebalancer] { return rebalancer->AfterStep(); };
    spdlog::info(
        "rebalancing experts every {} steps from the load of the last {} (up to {} extra "
        "replicas per layer; moves that cut the most loaded rank's load by {:.0f}% or more)",
        a.rebalance_interval, a.rebalance_interval, a.rebalance_redundant,
        100 * a.rebalance_min_gain);
  }
  std::vector<BlockAllocator*> allocators;
  for (int dp = 0; dp < s.dp_size(); ++dp) allocators.push_back(s.allocator(dp));
  Scheduler scheduler(s.executor.get(), s.tokenizer.get(), s.config, sched_opts, allocators,
                      refresh);
  const std::string name = a.model_name.empty() ? ModelDirName(a.run.model) : a.model_name;
  ServingFrontEnd front(&scheduler, s.tokenizer.get(), s.config,
                        [&snapshot] { return snapshot.Get(); },
                        {.ep = ep, .pp = pp, .world_size = s.world_size},
                        {.listen = a.listen,
                         .tls_cert = a.tls_cert,
                         .tls_key = a.tls_key,
                         .tls_client_ca = a.tls_client_ca,
                         .expose_reflection = a.expose_reflection,
                         .auth_token = token,
                         .max_message_bytes = a.max_message_bytes,
                         .model_name = name,
                         .http_listen = a.http_listen,
                         .http_threads = a.http_threads,
                         .metrics = &metrics,
                         .chat_template = chat,
                         .default_max_tokens = a.default_max_tokens});
  if (absl::Status st = front.Start(); !st.ok()) return Finish(s, Fail(st));
  scheduler.Start();
  front.SetReady(true);
  // The HTTP port file first: a script waiting for --port-file then finds both.
  if (!a.http_port_file.empty()) {
    std::ofstream(a.http_port_file) << front.http_bound_port() << "\n";
  }
  if (!a.port_file.empty()) {
    std::ofstream(a.port_file) << front.bound_port() << "\n";
  }
  spdlog::info("serving {} on {} ({} ranks: ep {} x pp {}), {:.2f} s after start", name,
               Reachable(a.listen, front.bound_port()), s.world_size, ep, pp,
               SecondsSinceStart());
  if (front.http_bound_port() != 0) {
    spdlog::info(
        "HTTP on {}: OpenAI /v1/completions, /v1/chat/completions (chat template: {}), "
        "KServe v2 /v2/models/{}/..., /health, /metrics",
        Reachable(a.http_listen, front.http_bound_port()),
        chat.kind == ChatTemplateKind::kNone ? "none, chat is refused" : ChatTemplateName(chat.kind),
        name);
    if (chat.kind == ChatTemplateKind::kNone) spdlog::info("chat: {}", chat.why_none);
  }

  // Wait for a signal or a failed cluster. After requests with large texts (refused or
  // tokenized), give the heap glibc keeps on the gRPC and pool threads back to the system,
  // a few times a second at most, so rank 0 returns to its steady size.
  Liveness* live = s.liveness();  // null on one process
  if (live != nullptr) {
    live->OnFailure([&front](const absl::Status& why) { front.Fail(why); });
    live->ExpectOperationsEvery(sched_opts.heartbeat);
  }
  absl::Cleanup forget_front = [live] {  // `front` goes before the session's liveness thread
    if (live != nullptr) live->OnFailure(nullptr);
  };
  auto cluster_failure = [&scheduler]() -> absl::Status {
    if (JobFailed()) return JobFailure();  // the liveness channel named a rank
    return scheduler.failure();
  };
  uint64_t trimmed_at = front.large_requests();
  auto last_trim = std::chrono::steady_clock::now();
  while (g_signal.load() == 0 && cluster_failure().ok()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const uint64_t large = front.large_requests();
    if (large != trimmed_at &&
        std::chrono::steady_clock::now() - last_trim >= std::chrono::milliseconds(250)) {
      malloc_trim(0);
      trimmed_at = large;
      last_trim = std::chrono::steady_clock::now();
    }
  }
  // A failed rank: every request in flight or queued ends UNAVAILABLE naming it, new ones
  // are refused the same way, health is NOT_SERVING; then the job ends (main() aborts it, so
  // the launcher sees the failure).
  auto fail = [&](const absl::Status& failure) {
    if (live != nullptr) live->ExpectOperationsEvery(absl::ZeroDuration());
    front.Fail(failure);
    scheduler.Stop(absl::UnavailableError(absl::StrCat("the cluster failed: ", failure.message())));
    front.Shutdown(absl::Now() + absl::Seconds(2));
    if (live != nullptr) live->AbortWorkers();  // clients have their errors: workers go now
    return Fail(failure);
  };
  absl::Status failure = cluster_failure();
  // A signal may be Open MPI tearing the job down because a rank died: that is a failure to
  // report as such, not a drain. Ask every rank for a fresh beat before draining.
  if (failure.ok() && live != nullptr) failure = live->ConfirmAlive(absl::Milliseconds(600));
  if (!failure.ok()) return fail(failure);
  spdlog::info("signal {}: draining", g_signal.load());
  front.Drain();
  // Let in-flight requests finish for up to --drain-timeout, then cancel the rest.
  std::thread drainer([&scheduler] { scheduler.Drain(); });
  const absl::Time give_up = absl::Now() + absl::Seconds(a.drain_timeout_s);
  while (absl::Now() < give_up && scheduler.Stats().running + scheduler.Stats().waiting > 0 &&
         cluster_failure().ok()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (failure = cluster_failure(); !failure.ok()) {  // a rank failed during the drain
    const int code = fail(failure);
    drainer.join();
    return code;
  }
  if (live != nullptr) live->ExpectOperationsEvery(absl::ZeroDuration());
  scheduler.Stop(absl::UnavailableError(absl::StrCat(
      "server drained: the request did not finish within --drain-timeout (", a.drain_timeout_s,
      " s) of the shutdown; retry on another server")));
  drainer.join();
  front.Shutdown(absl::Now() + absl::Seconds(5));
  spdlog::info("drained; shutting down {} rank(s)", s.world_size);
  return Finish(s, 0);
}

}  // namespace

void RegisterServe(CLI::App& app, Action* action) {
  static ServeArgs a;
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve the model over gRPC (switchyard.v1, KServe v2, health, reflection)");
  AddRunFlags(cmd, &a.run);
  cmd->add_option("--listen", a.listen, "Address to listen on (host:port; port 0 picks one)");
  cmd->add_option("--tls-cert", a.tls_cert, "PEM certificate chain: serve TLS")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-key", a.tls_key, "PEM private key for --tls-cert")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-client-ca", a.tls_client_ca,
                  "PEM CA bundle: clients must present a certificate it signed (mutual TLS)")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--expose-reflection", a.expose_reflection,
                "Serve gRPC reflection even with --auth-token-file (it cannot check the token)");
  cmd->add_option("--auth-token-file", a.auth_token_file,
                  "File holding a bearer token every RPC but health must present");
  cmd->add_option("--max-message-bytes", a.max_message_bytes, "Largest request accepted")
      ->check(CLI::Range(1024, 1 << 30));
  cmd->add_option("--model-name", a.model_name, "Name clients use (default: the folder name)");
  cmd->add_option("--port-file", a.port_file, "Write the bound port to this file once ready");
  cmd->add_option("--http-listen", a.http_listen,
                  "Also serve HTTP on host:port (port 0 picks one): the OpenAI API, KServe v2 "
                  "REST, /health, /metrics; TLS with --tls-cert/--tls-key; off unless given");
  cmd->add_option("--http-port-file", a.http_port_file,
                  "Write the bound HTTP port to this file once ready (before --port-file)");
  cmd->add_option("--http-threads", a.http_threads, "HTTP connections served at once")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--chat-template", a.chat_template,
                  "Chat template of /v1/chat/completions: " +
                      absl::StrJoin(ChatTemplateNames(), ", ") +
                      " (default: the checkpoint's tokenizer_config.json chat_template when it "
                      "is one of these)")
      ->check(CLI::IsMember(ChatTemplateNames()));
  cmd->add_option("--default-max-tokens", a.default_max_tokens,
                  "max_tokens of an OpenAI request that leaves it out (capped by what the "
                  "context leaves after the prompt; KV is reserved for it)")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--rebalance-interval", a.rebalance_interval,
                  "Every this many steps, place experts for the load of those steps and move to "
                  "the placement while serving when it helps (0: off; needs --ep 2 or more)")
      ->check(CLI::Range(0, 1 << 30))
      ->capture_default_str();
  cmd->add_option("--rebalance-redundant", a.rebalance_redundant,
                  "Extra expert replicas per layer a rebalanced placement may use (each rank "
                  "holds at most ceil((experts + this) / ep) experts of a layer)")
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  cmd->add_option("--rebalance-min-gain", a.rebalance_min_gain,
                  "Move only when the new placement lowers the most loaded rank's load by at "
                  "least this fraction")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--metrics-pair-ranks", a.metrics_pair_ranks,
                  "Export the rank x rank dispatched-bytes matrix as one series per pair up to "
                  "this world size (per-rank totals beyond)")
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  cmd->add_option("--kv-blocks", a.kv_blocks,
                  "KV-cache blocks per data-parallel rank (0: sized by --kv-memory)")
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--kv-memory", a.kv_memory,
                  "With --kv-blocks 0: bytes of KV cache per rank (e.g. 1GiB, 0: one full "
                  "context), at least one full-context sequence, at most --max-running")
      ->type_name("BYTES")
      ->check(ByteSizeCheck(/*allow_zero=*/true))
      ->capture_default_str();
  cmd->add_option("--block-size", a.block_size, "Tokens per KV-cache block")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--max-queue", a.max_queue, "Waiting requests before RESOURCE_EXHAUSTED (HTTP 429)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--max-running", a.max_running, "Sequences decoding at once")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--prefill-chunk", a.prefill_chunk, "Most prompt tokens per sequence per step")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--drain-timeout", a.drain_timeout_s,
                  "Seconds in-flight requests may run after SIGTERM before being cancelled")
      ->check(CLI::Range(0.0, 3600.0));
  cmd->callback([action] { *action = [] { return RunServe(a); }; });
}

}  // namespace switchyard::cli
