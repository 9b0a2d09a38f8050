// `switchyard bench decode|prefill`: single-process throughput of the model, printed beside
// the machine's measured memory-copy bandwidth.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <span>

#include "absl/strings/str_cat.h"

#include "cli/commands.h"
#include "cli/run_flags.h"
#include "common/log.h"
#include "common/memory_bandwidth.h"
#include "common/progress.h"
#include "common/run_spread.h"
#include "common/stats.h"
#include "common/status_macros.h"
#include "coordinator/model_session.h"
#include "coordinator/sequence_runner.h"
#include "nlohmann/json.hpp"
#include "worker/cuda_executor.h"
#include "worker/kv_cache.h"

namespace switchyard::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchArgs {
  RunFlags run;
  int tokens = 128;       // decode: generated tokens; prefill: prompt length
  int prompt_len = 16;    // decode only
  int batch = 1;          // decode only: sequences decoding together
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

// `batch` sequences decoding together, as the scheduler batches equal requests: spread
// round-robin over the data-parallel indices, prefilled (untimed), then `tokens` decode steps
// of one row per sequence, every sequence sampling. Measures the mean decode step and the
// weight bytes a step reads: the dense weights once, and each expert its rows picked once
// (counted from the routing the steps return; a replicated expert counts once).
struct DecodeTiming {
  double step_s = 0;
  double weight_bytes_per_step = 0;
};
absl::StatusOr<DecodeTiming> TimeBatchDecode(ModelSession& s, int batch, int prompt_len,
                                             int tokens, uint32_t seed) {
  struct Seq {
    int dp = 0;
    std::vector<int32_t> prompt, table;
    int32_t next = 0;
  };
  const int dp = s.dp_size();
  std::vector<Seq> seqs(batch);
  StepPlan plan;
  StepResult result;
  auto release = [&] {
    for (Seq& q : seqs) s.allocator(q.dp)->Free(&q.table);
  };
  auto reserve = [&](Seq& q, int positions) -> absl::Status {
    if (!s.allocator(q.dp)->Grow(&q.table, positions)) {
      release();
      return absl::ResourceExhaustedError(absl::StrCat(
          "--batch ", batch, ": the KV pool of data-parallel index ", q.dp, " cannot hold ",
          (batch + dp - 1) / dp, " sequences of ", prompt_len + tokens,
          " positions"));
    }
    return absl::OkStatus();
  };
  // Prefill, one sequence a step (chunked by the step limit); each samples its first token.
  for (int i = 0; i < batch; ++i) {
    Seq& q = seqs[i];
    q.dp = i % dp;
    q.prompt = RandomPrompt(s.config, prompt_len, seed + i);
    RETURN_IF_ERROR(reserve(q, prompt_len));
    const int chunk = s.executor->max_step_tokens();
    for (int at = 0; at < prompt_len; at += chunk) {
      const int n = std::min(chunk, prompt_len - at);
      plan.Clear();
      plan.AddSequence({.seq_id = i + 1, .dp_rank = q.dp, .start_pos = at,
                        .sample = at + n == prompt_len},
                       std::span<const int32_t>(q.prompt).subspan(at, n), q.table);
      if (absl::Status st = s.executor->Execute(plan, &result); !st.ok()) {
        release();
        return st;
      }
    }
    q.next = result.next_tokens[0];
  }
  // Decode: every sequence one token a step.
  const ModelConfig& c = s.config;
  const bool routing = s.executor->records_routing();
  const int L = c.num_hidden_layers, K = c.num_experts_per_tok;
  const double dense_bytes = 2.0 * (c.ActiveParamsPerToken() - int64_t{L} * K * c.ExpertParams());
  double seconds = 0, bytes = 0;
  std::vector<uint8_t> used;
  for (int t = 0; t < tokens; ++t) {
    plan.Clear();
    for (int i = 0; i < batch; ++i) {
      Seq& q = seqs[i];
      RETURN_IF_ERROR(reserve(q, prompt_len + t + 1));
      plan.AddSequence({.seq_id = i + 1, .dp_rank = q.dp, .start_pos = prompt_len + t,
                        .sample = true,
                        .routing = routing ? RoutingMode::kLast : RoutingMode::kNone,
                        .sample_index = static_cast<uint64_t>(t + 1)},
                       std::span<const int32_t>(&q.next, 1), q.table);
    }
    const auto t0 = Clock::now();
    if (absl::Status st = s.executor->Execute(plan, &result); !st.ok()) {
      release();
      return st;
    }
    seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    for (int i = 0; i < batch; ++i) seqs[i].next = result.next_tokens[i];
    if (!routing) continue;
    used.assign(static_cast<size_t>(L) * c.num_local_experts, 0);
    for (int i = 0; i < batch; ++i) {
      const auto experts = result.SeqRoutingExperts(i, L * K);
      for (int l = 0; l < L && !experts.empty(); ++l) {
        for (int k = 0; k < K; ++k) used[l * c.num_local_experts + experts[l * K + k]] = 1;
      }
    }
    bytes += dense_bytes + 2.0 * c.ExpertParams() * std::count(used.begin(), used.end(), 1);
  }
  release();
  return DecodeTiming{.step_s = seconds / tokens, .weight_bytes_per_step = bytes / tokens};
}

int RunBench(const std::string& kind, const BenchArgs& a) {
  RunFlags flags = a.run;
  if (kind == "prefill") flags.max_step_tokens = std::max(flags.max_step_tokens, a.tokens);
  SessionOptions options = ToSessionOptions(flags, !a.json);
  if (kind == "decode" && a.batch > 1) {
    // Room for the batch's sequences on each data-parallel index (the default pool holds one
    // full-context sequence).
    const int per_index = (a.batch + a.run.ep - 1) / a.run.ep;
    const int blocks = (a.prompt_len + a.tokens + options.block_size - 1) / options.block_size;
    options.kv_blocks = per_index * blocks;
  }
  auto session = ModelSession::Open(options);
  if (!session.ok()) return Fail(session.status());
  ModelSession& s = **session;
  if (!s.is_coordinator()) return WorkerMain(s);
  SequenceRunner runner(s.executor.get(), s.allocator(0), s.config);
  nlohmann::json j = {{"benchmark", kind},
                      {"model", a.run.model},
                      {"ep", a.run.ep},
                      {"pp", a.run.pp},
                      {"threads_per_rank", omp_get_max_threads()}};
  std::vector<double> rates, steps, step_bytes;
  if (kind == "decode") {
    if (a.prompt_len + a.tokens > s.config.max_position_embeddings) {
      return Finish(s, Fail(absl::InvalidArgumentError(absl::StrCat(
          "--prompt-len + --tokens: ", a.prompt_len + a.tokens, " positions exceed the model's ",
          s.config.max_position_embeddings))));
    }
    for (int r = 0; r < a.repeats + 1; ++r) {  // the first run warms up
      auto step = TimeBatchDecode(s, a.batch, a.prompt_len, a.tokens, 1);
      if (!step.ok()) return Finish(s, Fail(step.status()));
      if (r > 0) {
        steps.push_back(step->step_s);
        step_bytes.push_back(step->weight_bytes_per_step);
        rates.push_back(a.batch / step->step_s);
      }
    }
    j["batch"] = a.batch;
    j["prompt_len"] = a.prompt_len;
    j["decode_tokens"] = a.tokens;
    j["decode_step_s_median"] = Median(steps);
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
  // The host's copy bandwidth bounds a CPU run; a GPU run is set against the device's peaks
  // below (S-MBU, S-MFU).
  const double copy_bw = s.on_gpu ? 0.0 : MeasureCopyBandwidth();
  if (!s.on_gpu) j["memory_copy_bandwidth_Bps"] = copy_bw;
  // Decode reads each weight a step needs once: the rate is those bytes over the step time
  // (batch 1: the active weights of one token).
  const bool weight_rate =
      !s.on_gpu && kind == "decode" && (a.batch == 1 || s.executor->records_routing());
  if (weight_rate) {
    const double bytes = a.batch == 1 ? DecodeBytesPerToken(s.config) : Median(step_bytes);
    const double achieved = bytes / Median(steps);
    j["weight_bytes_per_step"] = bytes;
    j["achieved_weight_read_Bps"] = achieved;
    j["ratio_to_copy_bandwidth"] = achieved / copy_bw;
  } else {
    const double flops = 2.0 * s.config.ActiveParamsPerToken();
    j["gflops_per_s"] = flops * median / 1e9;
  }
  // On a GPU, MoE-CAP's sparsity-aware utilisation against the device's peaks: S-MBU for
  // decode (activated weights and the KV cache read per step, over the step, over peak
  // memory bandwidth; batch 1, whose activated bytes are known without routing), S-MFU for
  // prefill (activated-parameter and attention FLOPs per second over peak bf16 FLOP/s).
  if (s.on_gpu) {
    auto peaks = CurrentGpuPeaks();
    if (peaks.ok()) {
      j["gpu"] = peaks->name;
      j["gpu_peak_memory_Bps"] = peaks->memory_Bps;
      j["gpu_peak_bf16_flops"] = peaks->bf16_flops;
      const ModelConfig& c = s.config;
      if (kind == "decode" && a.batch == 1 && peaks->memory_Bps > 0) {
        const double context = a.prompt_len + a.tokens / 2.0;
        const double kv = static_cast<double>(KvBytesPerToken(c.num_hidden_layers, c.kv_dim(),
                                                              kCudaKvDType)) * context;
        j["s_mbu"] = (DecodeBytesPerToken(c) + kv) / Median(steps) / peaks->memory_Bps;
      } else if (kind == "prefill" && peaks->bf16_flops > 0) {
        // Causal attention: QK^T and PV over half the prompt on average, per token.
        const double attention = 2.0 * 2.0 * c.num_hidden_layers * c.q_dim() * (a.tokens / 2.0);
        j["s_mfu"] = (2.0 * c.ActiveParamsPerToken() + attention) * median / peaks->bf16_flops;
      }
    } else {
      spdlog::warn("GPU peaks unknown: {}", peaks.status().ToString());
    }
  }
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return Finish(s, 0);
  }
  std::printf("bench %s: %s, ep %d x pp %d, %d threads per rank\n", kind.c_str(),
              a.run.model.c_str(), a.run.ep, a.run.pp, omp_get_max_threads());
  if (kind == "decode") {
    std::printf("  batch %d, %d tokens after a %d-token prompt, %d runs\n", a.batch, a.tokens,
                a.prompt_len, a.repeats);
    std::printf("  decode step              %.3f ms (median of the runs' means)\n",
                Median(steps) * 1e3);
  } else {
    std::printf("  %d-token prompt, %d runs\n", a.tokens, a.repeats);
  }
  std::printf("  tokens/s                 %.1f (median), %.1f (best)\n", median, rates.back());
  if (!s.on_gpu) {
    std::printf("  memory-copy bandwidth    %.2f GB/s (read+write, all threads)\n", copy_bw / 1e9);
  }
  if (weight_rate) {
    std::printf("  weight bytes per step    %s\n",
                ByteProgress::FormatBytes(j["weight_bytes_per_step"].get<double>()).c_str());
    std::printf("  achieved weight reads    %.2f GB/s\n", j["achieved_weight_read_Bps"].get<double>() / 1e9);
    std::printf("  ratio to copy bandwidth  %.2f\n", j["ratio_to_copy_bandwidth"].get<double>());
  } else if (kind == "prefill") {
    std::printf("  model GFLOP/s            %.1f\n", j["gflops_per_s"].get<double>());
  }
  if (j.contains("s_mbu")) {
    std::printf("  S-MBU                    %.3f (of %s's %.0f GB/s)\n", j["s_mbu"].get<double>(),
                j["gpu"].get<std::string>().c_str(), j["gpu_peak_memory_Bps"].get<double>() / 1e9);
  }
  if (j.contains("s_mfu")) {
    std::printf("  S-MFU                    %.3f (of %s's %.0f bf16 TFLOP/s)\n",
                j["s_mfu"].get<double>(), j["gpu"].get<std::string>().c_str(),
                j["gpu_peak_bf16_flops"].get<double>() / 1e12);
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
        kind, std::string(kind) == "decode" ? "Decode step time and tokens/s at a batch size, weight-read bandwidth"
                                            : "Prompt processing tokens/s");
    AddRunFlags(cmd, &a->run);
    cmd->add_option("--tokens", a->tokens,
                    std::string(kind) == "decode" ? "Tokens to generate" : "Prompt length")
        ->check(CLI::Range(2, 1 << 20));
    if (std::string(kind) == "decode") {
      cmd->add_option("--prompt-len", a->prompt_len, "Prompt length")->check(CLI::Range(1, 1 << 20));
      cmd->add_option("--batch", a->batch,
                      "Sequences decoding together (spread over the data-parallel indices)")
          ->check(CLI::Range(1, 1 << 16));
    }
    cmd->add_option("--repeats", a->repeats, "Timed runs (after one warm-up)")->check(CLI::Range(1, 1000));
    cmd->add_flag("--json", a->json, "Print JSON");
    std::string k = kind;
    cmd->callback([a, k, action] { *action = [a, k] { return RunBench(k, *a); }; });
  }
}

}  // namespace switchyard::cli
