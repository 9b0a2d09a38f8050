#include "cli/run_flags.h"

#include <filesystem>

#include <cstdio>

#include "common/byte_size.h"
#include "comm/job_failure.h"
#include "common/log.h"

namespace switchyard::cli {

absl::StatusOr<uint64_t> ParseByteSizeFlag(const std::string& text, bool allow_zero) {
  if (allow_zero && text == "0") return 0;
  return ParseByteSize(text);
}

CLI::Validator ByteSizeCheck(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& text) {
        auto bytes = ParseByteSizeFlag(text, allow_zero);
        return bytes.ok() ? std::string() : std::string(bytes.status().message());
      },
      "");
}

void AddModelOption(CLI::App* cmd, std::string* dir) {
  cmd->add_option("--model", *dir,
                  "Checkpoint directory (config.json, *.safetensors, tokenizer.model)")
      ->required()
      ->check(CLI::ExistingDirectory);
}

void AddRunFlags(CLI::App* cmd, RunFlags* f) {
  AddModelOption(cmd, &f->model);
  cmd->add_option("--ep", f->ep, "Expert-parallel ranks per pipeline stage")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--pp", f->pp, "Pipeline stages (world size must be ep x pp)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--placement", f->placement, "Placement file (JSON) overriding the planner")
      ->check(CLI::ExistingFile);
  cmd->add_option("--comm-timeout", f->comm_timeout_s,
                  "Seconds any rank waits for a peer's data before failing the job (the "
                  "longest legitimate step must fit)")
      ->check(CLI::Range(0.1, 86400.0));
  cmd->add_option("--liveness-timeout", f->liveness_timeout_s,
                  "Seconds a rank may be silent on the liveness channel (killed, stopped, "
                  "hung) before the job fails naming it")
      ->check(CLI::Range(0.2, 3600.0));
  cmd->add_option("--device", f->device,
                  "cpu, cuda, or auto (cuda when built with CUDA and every rank of a node has "
                  "a GPU of its own, or --share-gpu)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--device-comm", f->device_comm,
                  "How GPU ranks exchange device buffers: nccl, or staged (through pinned "
                  "host memory over MPI; lets ranks share one GPU)")
      ->check(CLI::IsMember({"nccl", "staged"}));
  cmd->add_flag("--share-gpu", f->share_gpu,
                "Let several ranks of a node share one GPU (tests and small models; with "
                "--device-comm staged, or NCCL 2.30+ with NCCL_MULTI_RANK_GPU_ENABLE=1)");
  cmd->add_flag("--no-shared-memory", f->no_shared_memory,
                "CPU ranks on one host exchange routed tokens with MPI all-to-alls instead of "
                "reading each other's rows in shared memory (/dev/shm)");
  cmd->add_option("--max-step-tokens", f->max_step_tokens,
                  "Tokens per forward step per data-parallel rank (prefill chunk)")
      ->check(CLI::Range(1, 1 << 20));
}

std::string ModelDirName(const std::string& model_dir) {
  std::filesystem::path dir = std::filesystem::path(model_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();
  return dir.filename().string();
}

SessionOptions ToSessionOptions(const RunFlags& f, bool show_progress) {
  return {.model_dir = f.model,
          .max_step_tokens = f.max_step_tokens,
          .show_progress = show_progress,
          .ep = f.ep,
          .pp = f.pp,
          .placement_file = f.placement,
          .comm_timeout = absl::Seconds(f.comm_timeout_s),
          .shared_memory = !f.no_shared_memory,
          .liveness_timeout = absl::Seconds(f.liveness_timeout_s),
          .device = f.device,
          .device_comm = f.device_comm,
          .share_gpu = f.share_gpu};
}

namespace {
// True when the liveness channel already logged `st` on this rank.
bool LoggedByLiveness(const absl::Status& st) {
  return JobFailed() && JobFailure().message() == st.message();
}
}  // namespace

int Fail(const absl::Status& st) {
  if (ReportedByCoordinator(st) || LoggedByLiveness(st)) return 1;  // printed already
  spdlog::error("{}", st.message());
  return 1;
}

int WorkerMain(ModelSession& s) {
  absl::Status st = s.RunWorker();
  return st.ok() ? 0 : Fail(st);
}

int Finish(ModelSession& s, int code) {
  absl::Status st = s.Shutdown();
  if (!st.ok()) return Fail(st);
  return code;
}

}  // namespace switchyard::cli
