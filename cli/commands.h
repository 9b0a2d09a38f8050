// The `switchyard` subcommands. Each registers its options on a CLI11 app and returns the
// process exit code when run: 0 on success, 1 on a runtime error (printed to stderr),
// 2 on a usage error.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"

namespace switchyard::cli {

// Registers a subcommand; `*action` is set to what runs it when it is the one chosen.
using Action = std::function<int()>;
void RegisterGenerate(CLI::App& app, Action* action);
void RegisterPerplexity(CLI::App& app, Action* action);
void RegisterScore(CLI::App& app, Action* action);
void RegisterTrace(CLI::App& app, Action* action);
void RegisterInspect(CLI::App& app, Action* action);
void RegisterBench(CLI::App& app, Action* action);
// `bench dispatch`, registered by RegisterBench under `bench`.
void RegisterBenchDispatch(CLI::App& bench, Action* action);
void RegisterPlan(CLI::App& app, Action* action);
void RegisterPreflight(CLI::App& app, Action* action);
// `study simulate`.
void RegisterStudy(CLI::App& app, Action* action);
void RegisterServe(CLI::App& app, Action* action);
void RegisterLoadgen(CLI::App& app, Action* action);
void RegisterClient(CLI::App& app, Action* action);
void RegisterMakeSyntheticModel(CLI::App& app, Action* action);

// Token ids from "1 415 2394" or "1,415,2394"; errors name --tokens.
absl::StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& text);

}  // namespace switchyard::cli
