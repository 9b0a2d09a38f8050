// The `switchyard` subcommands. Each registers its options on a CLI11 app and returns the
// process exit code when run: 0 on success, 1 on a runtime error (printed to stderr),
// 2 on a usage error.
#pragma once

#include <functional>

#include "CLI/CLI.hpp"

namespace switchyard::cli {

// Registers a subcommand; `*action` is set to what runs it when it is the one chosen.
using Action = std::function<int()>;
void RegisterGenerate(CLI::App& app, Action* action);
void RegisterPerplexity(CLI::App& app, Action* action);
void RegisterScore(CLI::App& app, Action* action);
void RegisterInspect(CLI::App& app, Action* action);
void RegisterBench(CLI::App& app, Action* action);
// `bench dispatch`, registered by RegisterBench under `bench`.
void RegisterBenchDispatch(CLI::App& bench, Action* action);
void RegisterPlan(CLI::App& app, Action* action);
void RegisterServe(CLI::App& app, Action* action);
void RegisterLoadgen(CLI::App& app, Action* action);
void RegisterClient(CLI::App& app, Action* action);
void RegisterMakeSyntheticModel(CLI::App& app, Action* action);

}  // namespace switchyard::cli
