// switchyard: a distributed expert-parallel runtime for Mixtral-family MoE models.
#include <cstdio>

#include "cli/commands.h"
#include "common/log.h"
#include "comm/mpi_communicator.h"
#include "coordinator/model_session.h"

int main(int argc, char** argv) {
  CLI::App app{"Switchyard: expert-parallel inference for Mixtral-family MoE models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "switchyard 0.1.0");
  // Under mpirun every rank runs this binary; MPI lives for the whole process.
  switchyard::InitLogging(0);
  std::unique_ptr<switchyard::MpiRuntime> mpi;
  if (switchyard::LaunchedUnderMpi()) {
    auto rt = switchyard::MpiRuntime::Init(&argc, &argv);
    if (!rt.ok()) {
      spdlog::error("{}", rt.status().message());
      return 1;
    }
    mpi = std::move(rt).value();
    switchyard::InitLogging(switchyard::WorldRank());
  }
  // `--help` shows every option's default.
  app.option_defaults()->always_capture_default();
  switchyard::cli::Action action;
  switchyard::cli::RegisterGenerate(app, &action);
  switchyard::cli::RegisterPerplexity(app, &action);
  switchyard::cli::RegisterScore(app, &action);
  switchyard::cli::RegisterTrace(app, &action);
  switchyard::cli::RegisterInspect(app, &action);
  switchyard::cli::RegisterBench(app, &action);
  switchyard::cli::RegisterPlan(app, &action);
  switchyard::cli::RegisterPreflight(app, &action);
  switchyard::cli::RegisterStudy(app, &action);
  switchyard::cli::RegisterServe(app, &action);
  switchyard::cli::RegisterLoadgen(app, &action);
  switchyard::cli::RegisterClient(app, &action);
  switchyard::cli::RegisterMakeSyntheticModel(app, &action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  const int code = action ? action() : 2;
  // A failed rank takes the whole job down at once rather than leaving peers to time out
  // (and MPI_Finalize to wait on them): the launcher sees a non-zero exit and can restart it.
  if (code != 0 && mpi != nullptr) switchyard::AbortJob(code);
  return code;
}
