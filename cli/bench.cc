// `switchyard bench decode|prefill`: single-process throughput of the model, printed beside
// the machine's measured memory-copy bandwidth.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>

#include "cli/commands.h"
#include "cli/run_flags.h"
#include "common/log.h"
#include "common/memory_bandwidth.h"
#include "common/progress.h"
#include "common/run_spread.h"
#include "coordinator/model_session.h"
#include "coordinator/sequence_runner.h"
#include "nlohmann/json.hpp"

namespace switchyard::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchArgs {
  RunFlags run;
  int tokens = 128;       // decode: generated tokens; prefill: prompt length
  int prompt_len = 16;    // decode only
  int repeats = 3;
  bool json = false;
};

std::vector<int32_t> RandomPrompt(const ModelConfig& cfg, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(3, cfg.vocab_size - 1);
  std::vector<int32_t> ids(n);
  ids[0] = cfg.bos_token_id;
  for (int i = 1; i < n; ++i) ids[i] = dist(rng);
  return ids;
}

// Bytes of weights one decode token reads, whichever rank holds them: attention, norms and
// router of every layer, top-k experts, final norm and lm_head (bf16: 2 bytes a parameter).
double DecodeBytesPerToken(const ModelConfig& c) {
  return 2.0 * c.ActiveParamsPerToken();
}

int RunBench(const std::string& kind, const BenchArgs& a) {
  RunFlags flags = a.run;
  if (kind == "prefill") flags.max_step_tokens = std::max(flags.max_step_tokens, a.tokens);
  auto session = ModelSession::Open(ToSessionOptions(flags, !a.json));
  if (!session.ok()) return Fail(session.status());
  ModelSession& s = **session;
  if (!s.is_coordinator()) return WorkerMain(s);
  SequenceRunner runner(s.executor.get(), s.allocator(0), s.config);
  nlohmann::json j = {{"benchmark", kind},
                      {"model", a.run.model},
                      {"ep", a.run.ep},
                      {"pp", a.run.pp},
                      {"threads_per_rank", omp_get_max_threads()}};
  std::vector<double> rates;
  if (kind == "decode") {
    const auto prompt = RandomPrompt(s.config, a.prompt_len, 1);
    for (int r = 0; r < a.repeats + 1; ++r) {  // the first run warms up
      Clock::time_point first, last;
      int n = 0;
      auto out = runner.Generate(prompt, {.max_tokens = a.tokens, .stop_at_eos = false},
                                 [&](int32_t) {
                                   (n++ == 0 ? first : last) = Clock::now();
                                 });
      if (!out.ok()) return Finish(s, Fail(out.status()));
      if (r > 0) rates.push_back((n - 1) / std::chrono::duration<double>(last - first).count());
    }
  } else {
    const auto prompt = RandomPrompt(s.config, a.tokens, 2);
    for (int r = 0; r < a.repeats + 1; ++r) {
      auto t0 = Clock::now();
      auto out = runner.Generate(prompt, {.max_tokens = 1}, nullptr);
      if (!out.ok()) return Finish(s, Fail(out.status()));
      if (r > 0) rates.push_back(a.tokens / std::chrono::duration<double>(Clock::now() - t0).count());
    }
  }
  std::sort(rates.begin(), rates.end());
  const double median = rates[rates.size() / 2];
  j["tokens_per_s_median"] = median;
  j["tokens_per_s_best"] = rates.back();
  j["tokens_per_s_worst"] = rates.front();
  // Runs that spread widely were disturbed: the median is then not the machine's rate.
  if (std::string w = RunSpreadWarning(rates, "tokens/s"); !w.empty()) spdlog::warn("{}", w);
  const double copy_bw = MeasureCopyBandwidth();
  j["memory_copy_bandwidth_Bps"] = copy_bw;
  if (kind == "decode") {
    const double bytes = DecodeBytesPerToken(s.config);
    const double achieved = bytes * median;
    j["weight_bytes_per_token"] = bytes;
    j["achieved_weight_read_Bps"] = achieved;
    j["ratio_to_copy_bandwidth"] = achieved / copy_bw;
  } else {
    const double flops = 2.0 * s.config.ActiveParamsPerToken();
    j["gflops_per_s"] = flops * median / 1e9;
  }
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return Finish(s, 0);
  }
  std::printf("bench %s: %s, ep %d x pp %d, %d threads per rank\n", kind.c_str(),
              a.run.model.c_str(), a.run.ep, a.run.pp, omp_get_max_threads());
  if (kind == "decode") {
    std::printf("  batch 1, %d tokens after a %d-token prompt, %d runs\n", a.tokens, a.prompt_len,
                a.repeats);
  } else {
    std::printf("  %d-token prompt, %d runs\n", a.tokens, a.repeats);
  }
  std::printf("  tokens/s                 %.1f (median), %.1f (best)\n", median, rates.back());
  std::printf("  memory-copy bandwidth    %.2f GB/s (read+write, all threads)\n", copy_bw / 1e9);
  if (kind == "decode") {
    std::printf("  weight bytes per token   %s\n",
                ByteProgress::FormatBytes(j["weight_bytes_per_token"].get<double>()).c_str());
    std::printf("  achieved weight reads    %.2f GB/s\n", j["achieved_weight_read_Bps"].get<double>() / 1e9);
    std::printf("  ratio to copy bandwidth  %.2f\n", j["ratio_to_copy_bandwidth"].get<double>());
  } else {
    std::printf("  model GFLOP/s            %.1f\n", j["gflops_per_s"].get<double>());
  }
  return Finish(s, 0);
}

}  // namespace

void RegisterBench(CLI::App& app, Action* action) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (decode, prefill, dispatch)");
  RegisterBenchDispatch(*bench, action);
  bench->require_subcommand(1);
  for (const char* kind : {"decode", "prefill"}) {
    static BenchArgs args[2];
    BenchArgs* a = &args[std::string(kind) == "decode" ? 0 : 1];
    if (std::string(kind) == "prefill") a->tokens = 512;
    CLI::App* cmd = bench->add_subcommand(
        kind, std::string(kind) == "decode" ? "Batch-1 decode tokens/s and weight-read bandwidth"
                                            : "Prompt processing tokens/s");
    AddRunFlags(cmd, &a->run);
    cmd->add_option("--tokens", a->tokens,
                    std::string(kind) == "decode" ? "Tokens to generate" : "Prompt length")
        ->check(CLI::Range(2, 1 << 20));
    if (std::string(kind) == "decode") {
      cmd->add_option("--prompt-len", a->prompt_len, "Prompt length")->check(CLI::Range(1, 1 << 20));
    }
    cmd->add_option("--repeats", a->repeats, "Timed runs (after one warm-up)")->check(CLI::Range(1, 1000));
    cmd->add_flag("--json", a->json, "Print JSON");
    std::string k = kind;
    cmd->callback([a, k, action] { *action = [a, k] { return RunBench(k, *a); }; });
  }
}

}  // namespace switchyard::cli
