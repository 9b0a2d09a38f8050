// `switchyard preflight`: the job's fabric and devices measured before serving
// (study/preflight.h), under mpirun or srun with the same ranks the job will have:
//
//   mpirun -np 16 switchyard preflight --out calibration.json
//
// Rank 0 prints the rank x rank bandwidth and latency matrices, each rank's copy bandwidth
// and multiply rates, and the outliers it found with what to check; --out writes the
// calibration file, --json prints it instead of the text. Without mpirun: one rank, no pairs.
//
// Exit codes: 0 measured (findings or not, unless --fail-on-findings); 1 an error (a peer that
// stopped answering within --comm-timeout, named; a file that cannot be written); 2 usage;
// 3 findings with --fail-on-findings.
#include <cstdio>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "cli/run_flags.h"
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
  double comm_timeout_s = 10;
  int latency_iters = 50;
  std::string large = "4MiB";
  int bandwidth_iters = 4;
  std::string copy = "256MiB";
  int matmul_k = 4096, matmul_n = 14336, prefill_rows = 64;
  double outlier_factor = 3;
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
  // The threads each rank runs with while serving (its share of its node's CPUs).
  if (absl::Status st = ConfigureThreads(mpi.get()); !st.ok()) return Fail(st);
  const bool root = world->rank() == 0;
  auto report = RunPreflight(*world, o, [&](int round, int rounds) {
    if (!a.json) std::fprintf(stderr, "preflight: pairs, round %d of %d\n", round + 1, rounds);
  });
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
                  "Seconds a rank waits for a peer before naming it and failing the job")
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
  cmd->add_option("--matmul-k", a.matmul_k, "Weight columns of the timed multiply (bf16)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--matmul-n", a.matmul_n, "Weight rows of the timed multiply")
      ->check(CLI::Range(1, 1 << 17));
  cmd->add_option("--prefill-rows", a.prefill_rows, "Rows of the prefill-shaped multiply")
      ->check(CLI::Range(1, 1 << 14));
  cmd->add_option("--outlier-factor", a.outlier_factor,
                  "A figure this many times off the median of its class is a finding")
      ->check(CLI::Range(1.01, 1000.0));
  cmd->callback([action] { *action = [] { return RunPreflightCommand(a); }; });
}

}  // namespace switchyard::cli
