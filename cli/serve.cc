// `switchyard serve`: every rank of the job loads its shard; rank 0 runs the scheduler and
// the gRPC front end until SIGTERM/SIGINT, then drains and shuts every rank down cleanly.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "cli/run_flags.h"
#include "coordinator/model_session.h"
#include "coordinator/scheduler.h"
#include "coordinator/server/front_end.h"
#include "worker/distributed_executor.h"

namespace switchyard::cli {
namespace {

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal.store(sig); }

struct ServeArgs {
  RunFlags run;
  std::string listen = "127.0.0.1:50051";
  std::string tls_cert, tls_key, auth_token_file;
  int max_message_bytes = 4 << 20;
  std::string model_name;
  std::string port_file;
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
    info.ranks.push_back({.world_rank = r.world_rank,
                          .stage = r.stage,
                          .ep_rank = r.ep_rank,
                          .layer_begin = r.layer_begin,
                          .layer_end = r.layer_end,
                          .experts = r.experts,
                          .weight_bytes = r.weight_bytes,
                          .kv_bytes = r.kv_bytes,
                          .steps = r.steps});
    for (size_t i = 0; i < r.expert_tokens.size(); ++i) {
      for (size_t e = 0; e < r.expert_tokens[i].size(); ++e) {
        info.expert_token_counts[r.layer_begin + i][e] += r.expert_tokens[i][e];
      }
    }
  }
  return info;
}

absl::StatusOr<std::string> ReadToken(const std::string& path) {
  if (path.empty()) return std::string();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("--auth-token-file: cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string token = ss.str();
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) {
    token.pop_back();
  }
  if (token.empty()) return absl::InvalidArgumentError("--auth-token-file: " + path + " is empty");
  return token;
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
  auto token = ReadToken(a.auth_token_file);
  if (!token.ok()) return Fail(token.status());
  auto opened = ModelSession::Open(so);
  if (!opened.ok()) return Fail(opened.status());
  ModelSession& s = **opened;
  if (!s.is_coordinator()) return WorkerMain(s);

  StatusSnapshot snapshot;
  const int ep = a.run.ep, pp = a.run.pp;
  auto refresh = [&]() -> absl::Status {
    auto ranks = s.executor->CollectStatus();
    if (!ranks.ok()) return ranks.status();
    snapshot.Set(ToClusterStatus(*ranks, s.config, ep, pp));
    return absl::OkStatus();
  };
  if (absl::Status st = refresh(); !st.ok()) return Finish(s, Fail(st));

  SchedulerOptions sched_opts;
  sched_opts.max_queue = a.max_queue;
  sched_opts.max_running = a.max_running;
  sched_opts.step_token_budget = a.run.max_step_tokens;
  sched_opts.prefill_chunk = std::min(a.prefill_chunk, a.run.max_step_tokens);
  std::vector<BlockAllocator*> allocators;
  for (int dp = 0; dp < s.dp_size(); ++dp) allocators.push_back(s.allocator(dp));
  Scheduler scheduler(s.executor.get(), s.tokenizer.get(), s.config, sched_opts, allocators,
                      refresh);
  std::string name = a.model_name;
  if (name.empty()) {  // the checkpoint folder's name, "models/brown-moe/" -> "brown-moe"
    std::filesystem::path dir = std::filesystem::path(a.run.model).lexically_normal();
    if (dir.filename().empty()) dir = dir.parent_path();
    name = dir.filename().string();
  }
  ServingFrontEnd front(&scheduler, s.tokenizer.get(), s.config,
                        [&snapshot] { return snapshot.Get(); },
                        {.ep = ep, .pp = pp, .world_size = s.world_size},
                        {.listen = a.listen,
                         .tls_cert = a.tls_cert,
                         .tls_key = a.tls_key,
                         .auth_token = *token,
                         .max_message_bytes = a.max_message_bytes,
                         .model_name = name});
  if (absl::Status st = front.Start(); !st.ok()) return Finish(s, Fail(st));
  scheduler.Start();
  front.SetReady(true);
  if (!a.port_file.empty()) {
    std::ofstream(a.port_file) << front.bound_port() << "\n";
  }
  std::fprintf(stderr, "switchyard: serving %s on port %d (%d ranks: ep %d x pp %d)\n",
               name.c_str(), front.bound_port(), s.world_size, ep, pp);

  // Wait for a signal or a failed cluster.
  while (g_signal.load() == 0 && scheduler.failure().ok()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  absl::Status failure = scheduler.failure();
  if (!failure.ok()) {
    // A rank died or hung: in-flight requests already failed with UNAVAILABLE.
    front.Drain();
    front.Shutdown(absl::Now() + absl::Seconds(2));
    scheduler.Stop();
    return Fail(failure);  // main() aborts the job so the launcher sees it
  }
  std::fprintf(stderr, "switchyard: signal %d: draining\n", g_signal.load());
  front.Drain();
  // Let in-flight requests finish for up to --drain-timeout, then cancel the rest.
  std::thread drainer([&scheduler] { scheduler.Drain(); });
  const absl::Time give_up = absl::Now() + absl::Seconds(a.drain_timeout_s);
  while (absl::Now() < give_up && scheduler.Stats().running + scheduler.Stats().waiting > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  scheduler.Stop();
  drainer.join();
  front.Shutdown(absl::Now() + absl::Seconds(5));
  std::fprintf(stderr, "switchyard: drained; shutting down %d rank(s)\n", s.world_size);
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
  cmd->add_option("--auth-token-file", a.auth_token_file,
                  "File holding a bearer token every RPC but health must present");
  cmd->add_option("--max-message-bytes", a.max_message_bytes, "Largest request accepted")
      ->check(CLI::Range(1024, 1 << 30));
  cmd->add_option("--model-name", a.model_name, "Name clients use (default: the folder name)");
  cmd->add_option("--port-file", a.port_file, "Write the bound port to this file once ready");
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
  cmd->add_option("--max-queue", a.max_queue, "Waiting requests before UNAVAILABLE")
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
