// `switchyard preflight`: the job's fabric and devices measured before serving
// (study/preflight.h), under mpirun or srun with the same ranks the job will have:
//
//   mpirun -np 16 switchyard preflight --out calibration.json
//   mpirun -np 4 switchyard preflight --model models/brown-moe --out calibration.json
//
// With --model, every rank also times the runtime's own operations at that model's shapes
// (dense layer work, attention, one expert, the head: study/operation_costs.h), which the
// simulator then uses for a model of the same shapes instead of the multiply rates.
//
// Rank 0 prints the rank x rank bandwidth and latency matrices, each rank's copy bandwidth
// and multiply rates, and the outliers it found with what to check; --out writes the
// calibration file, --json prints it instead of the text. Without mpirun: one rank, no pairs.
//
// Exit codes: 0 measured (findings or not, unless --fail-on-findings); 1 an error (a rank
// killed, stopped or hung, named within --liveness-timeout; a peer that did not answer within
// --comm-timeout; a file that cannot be written); 2 usage; 3 findings with --fail-on-findings.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "cli/run_flags.h"
#include "comm/liveness.h"
#include "comm/mpi_communicator.h"
#include "comm/self_communicator.h"
#include "coordinator/model_session.h"
#include "study/preflight.h"

namespace switchyard::cli {
namespace {

struct PreflightArgs {
  std::string out;
  bool json = false;
  bool fail_on_findings = false;
  double comm_timeout_s = 60;
  double liveness_timeout_s = 5;
  int latency_iters = 50;
  std::string large = "4MiB";
  int bandwidth_iters = 4;
  std::string copy = "256MiB";
  int matmul_k = 4096, matmul_n = 14336, prefill_rows = 64;
  double outlier_factor = 3;
  std::string model;
  int max_step_tokens = 512;
};

int RunPreflightCommand(const PreflightArgs& a) {
  PreflightOptions o{.latency_iters = a.latency_iters,
                     .bandwidth_iters = a.bandwidth_iters,
                     .matmul_k = a.matmul_k,
                     .matmul_n = a.matmul_n,
                     .prefill_rows = a.prefill_rows,
                     .outlier_factor = a.outlier_factor};
  auto large = ParseByteSizeFlag(a.large, false);
  auto copy = ParseByteSizeFlag(a.copy, false);
  if (!large.ok()) return Fail(large.status());
  if (!copy.ok()) return Fail(copy.status());
  o.large_bytes = *large;
  o.copy_bytes = *copy;

  std::unique_ptr<MpiCommunicator> mpi;
  SelfCommunicator self("world");
  Communicator* world = &self;
  const CommOptions comm{.timeout = absl::Seconds(a.comm_timeout_s)};
  if (LaunchedUnderMpi()) {
    mpi = MpiCommunicator::World(comm);
    world = mpi.get();
  }
  if (absl::Status st = CheckSlurmWireUp(world->size()); !st.ok()) return Fail(st);
  // The threads each rank runs with while serving (its share of its node's CPUs).
  if (absl::Status st = ConfigureThreads(mpi.get()); !st.ok()) return Fail(st);
  // The liveness channel, as when serving: a rank killed, stopped or hung is named within
  // --liveness-timeout wherever the others wait (a slow round is not a dead rank: the
  // communication deadline, --comm-timeout, is for waits on a peer that is alive).
  ProgressMeter progress;
  std::unique_ptr<Liveness> live;
  if (world->size() > 1) {
    LivenessOptions lo;
    lo.timeout = absl::Seconds(a.liveness_timeout_s);
    lo.interval = std::clamp(lo.timeout / 20, absl::Milliseconds(20), absl::Milliseconds(250));
    lo.connect_timeout = comm.timeout;
    auto started = Liveness::Start(*world, &progress, lo);
    if (!started.ok()) return Fail(started.status());
    live = std::move(started).value();
  }
  const bool root = world->rank() == 0;
  OperationModel model;
  if (!a.model.empty()) {
    o.operations.max_rows = a.max_step_tokens;
    auto loaded = LoadForOperations(a.model, o.operations);
    if (!loaded.ok()) {
      if (live != nullptr) live->End(loaded.status());
      return Fail(loaded.status());
    }
    model = *std::move(loaded);
    o.operations.max_context = model.weights->config().max_position_embeddings;
    o.operations_model = model.weights.get();
  }
  auto report = RunPreflight(*world, o, [&](int round, int rounds) {
    if (!a.json) std::fprintf(stderr, "preflight: pairs, round %d of %d\n", round + 1, rounds);
  });
  if (live != nullptr) {
    if (!report.ok()) {
      live->End(report.status());  // a worker tells rank 0 why it leaves
    } else {
      // The orderly end: rank 0's goodbye before any worker's connection closes.
      if (root) live->Stop();
      if (absl::Status st = world->Barrier(); !st.ok()) return Fail(st);
      if (!root) live->Stop();
    }
  }
  if (!report.ok()) return Fail(report.status());
  if (!root) return 0;
  const nlohmann::json calibration = CalibrationJson(*report);
  if (!a.out.empty()) {
    std::ofstream f(a.out);
    f << calibration.dump(2) << "\n";
    f.close();
    if (!f) {
      return Fail(absl::UnavailableError("--out " + a.out + ": cannot write the calibration file"));
    }
  }
  if (a.json) {
    std::cout << calibration.dump(2) << "\n";
  } else {
    std::cout << FormatReport(*report);
    if (!a.out.empty()) std::cout << "calibration written to " << a.out << "\n";
  }
  std::cout.flush();
  return a.fail_on_findings && !report->findings.empty() ? 3 : 0;
}

}  // namespace

void RegisterPreflight(CLI::App& app, Action* action) {
  static PreflightArgs a;
  CLI::App* cmd = app.add_subcommand(
      "preflight",
      "Measure the job's fabric (latency and bandwidth of every rank pair) and devices (copy "
      "bandwidth, multiply rates) under mpirun/srun; name outliers; write a calibration file");
  cmd->add_option("--out", a.out, "Write the calibration file (JSON) here");
  cmd->add_flag("--json", a.json, "Print the calibration JSON instead of the text report");
  cmd->add_flag("--fail-on-findings", a.fail_on_findings,
                "Exit 3 when an outlier is found (for job scripts that should stop there)");
  cmd->add_option("--comm-timeout", a.comm_timeout_s,
                  "Seconds a rank waits on a peer that is alive (a round on a very slow link) "
                  "before naming it and failing the job")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--liveness-timeout", a.liveness_timeout_s,
                  "Seconds a rank may be silent on the liveness channel (killed, stopped, "
                  "frozen) before it is named and the job ends")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--latency-iters", a.latency_iters, "Ping-pong round trips per rank pair")
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--bandwidth-bytes", a.large, "Size of one bandwidth message")
      ->check(ByteSizeCheck(false));
  cmd->add_option("--bandwidth-iters", a.bandwidth_iters,
                  "Bandwidth messages per direction per rank pair")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--copy-bytes", a.copy, "Memory-copy buffer per rank")
      ->check(ByteSizeCheck(false));
  // At most 4 GiB of weights, and every product of two dimensions below 2^31.
  cmd->add_option("--matmul-k", a.matmul_k, "Weight columns of the timed multiply (bf16)")
      ->check(CLI::Range(1, 1 << 15));
  cmd->add_option("--matmul-n", a.matmul_n, "Weight rows of the timed multiply")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--prefill-rows", a.prefill_rows, "Rows of the prefill-shaped multiply")
      ->check(CLI::Range(1, 1 << 12));
  cmd->add_option("--model", a.model,
                  "Also time the runtime's operations at this checkpoint's shapes (every rank, "
                  "its layers cycled): the simulator's per-operation costs")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--max-step-tokens", a.max_step_tokens,
                  "With --model: the largest step (rows) the operations are timed at")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--outlier-factor", a.outlier_factor,
                  "A figure this many times off the median of its class is a finding")
      ->check(CLI::Range(1.01, 1000.0));
  cmd->callback([action] { *action = [] { return RunPreflightCommand(a); }; });
}

}  // namespace switchyard::cli
