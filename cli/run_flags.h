// Flags and process plumbing shared by the commands that run the model.
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/model_session.h"

namespace switchyard::cli {

struct RunFlags {
  std::string model;
  int ep = 1;
  int pp = 1;
  std::string placement;
  double comm_timeout_s = 60;
  double liveness_timeout_s = 5;
  int max_step_tokens = 512;
  std::string device = "auto";
  std::string device_comm = "nccl";
  bool share_gpu = false;
  bool no_shared_memory = false;
};

// --model (required, an existing directory).
void AddModelOption(CLI::App* cmd, std::string* dir);
// --model, --ep, --pp, --placement, --comm-timeout, --liveness-timeout, --device,
// --device-comm, --share-gpu, --no-shared-memory, --max-step-tokens.
void AddRunFlags(CLI::App* cmd, RunFlags* flags);
SessionOptions ToSessionOptions(const RunFlags& flags, bool show_progress);
// The checkpoint folder's name: "models/brown-moe/" -> "brown-moe" (the served model name).
std::string ModelDirName(const std::string& model_dir);

// A byte size such as 80GiB or 512M (common/byte_size.h's ParseByteSize); with
// allow_zero, also "0". ByteSizeCheck validates an option at parse time with the same rules.
absl::StatusOr<uint64_t> ParseByteSizeFlag(const std::string& text, bool allow_zero);
CLI::Validator ByteSizeCheck(bool allow_zero);

// Prints "switchyard: error: MESSAGE" to stderr and returns exit code 1.
int Fail(const absl::Status& status);
// Ranks other than 0: serve steps until rank 0 is done; returns the exit code.
int WorkerMain(ModelSession& session);
// Rank 0 after the command's work: release the workers, then return `code`.
int Finish(ModelSession& session, int code);

}  // namespace switchyard::cli
