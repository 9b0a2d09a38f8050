// bench_decode_cuda: decode step time of the CUDA executor at batch 1, 8 and 64 on a
// Mixtral-shaped checkpoint, and the bytes a step reads per second beside the device's copy
// bandwidth.
//
//   switchyard make-synthetic-model --preset mixtral-8x7b --layers 4 --out /tmp/mx4
//   bench_decode_cuda --model /tmp/mx4 [--batches 1,8,64] [--context 256] [--steps 32]
//
// Per batch size B: B sequences are prefilled with `context` random tokens, then three decode
// steps warm up (eager, graph capture, first replay) and `steps` decode steps are timed. Step
// time is wall clock around Execute: host preparation, the input copy, the graph launch, the
// copy of the sampled tokens and the synchronisation.
// Bytes per step: the weights the static decode path reads (every layer's attention and router
// matrices, min(E, B * top_k) experts per layer, lm_head, B embedding rows) plus the K/V the
// attention reads. Copy bandwidth: best of 5 device-to-device cudaMemcpy of 1 GiB counted read
// + write (STREAM style), so both figures count DRAM bytes moved; the ratio is how close a
// decode step comes to streaming memory at the copy rate.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "worker/cuda_executor.h"
#include "worker/kv_cache.h"

namespace switchyard {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kBlockSize = 16;

int Die(const absl::Status& st) {
  std::fprintf(stderr, "bench_decode_cuda: %s\n", st.ToString().c_str());
  return 1;
}

// Best of 5 device-to-device copies of `bytes`, in bytes read + written per second.
double CopyBandwidth(size_t bytes) {
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0;
  cudaMemset(a, 1, bytes);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float best_ms = 1e30f;
  for (int rep = 0; rep < 6; ++rep) {  // the first is a warm-up
    cudaEventRecord(start);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (rep > 0) best_ms = std::min(best_ms, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (best_ms * 1e-3);
}

int Run(const std::string& model, const std::vector<int>& batches, int context, int steps) {
  if (!CudaDeviceAvailable()) return Die(absl::UnavailableError("no CUDA device"));
  auto cfg = LoadModelConfig(model + "/config.json");
  if (!cfg.ok()) return Die(cfg.status());
  auto ckpt = SafetensorsCheckpoint::Open(model);
  if (!ckpt.ok()) return Die(ckpt.status());
  auto weights = ModelWeights::Load(**ckpt, *cfg, ShardSpec::Whole(*cfg), {.show_progress = true});
  if (!weights.ok()) return Die(weights.status());
  const ModelConfig& c = *cfg;

  const int max_b = *std::max_element(batches.begin(), batches.end());
  const int max_ctx = context + steps + 8;
  const int blocks_per_seq = (max_ctx + kBlockSize - 1) / kBlockSize;
  const ForwardLimits limits{.max_tokens = std::max(max_b, 256), .max_context = max_ctx};
  auto exec =
      MakeCudaExecutor(**weights, {.num_blocks = max_b * blocks_per_seq, .block_size = kBlockSize},
                       limits, CudaExecutorOptions{.max_graph_batch = std::max(max_b, 128)});
  if (!exec.ok()) return Die(exec.status());
  CudaStepExecutor& ex = **exec;

  const double copy_bw = CopyBandwidth(size_t{1} << 30);
  const double H = c.hidden_size, F = c.intermediate_size, V = c.vocab_size,
               L = c.num_hidden_layers;
  const double attn_bytes = 2.0 * (H * (c.q_dim() + 2.0 * c.kv_dim()) + H * c.q_dim());
  const double router_bytes = 2.0 * H * c.num_local_experts;
  const double expert_bytes = 2.0 * 3.0 * H * F;
  const double kv_token_bytes =  // K and V of every layer, as the executor's cache holds them
      static_cast<double>(KvBytesPerToken(c.num_hidden_layers, c.kv_dim(), kCudaKvDType));
  std::printf("model %s: %d layers, hidden %d, %d experts top-%d; device memory held %.1f GiB\n",
              model.c_str(), c.num_hidden_layers, c.hidden_size, c.num_local_experts,
              c.num_experts_per_tok, ex.device_bytes() / double(1 << 30));
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_bw / 1e9);
  // MoE-CAP's S-MBU: the bytes a step must read (activated weights and the KV cache) per
  // second over the device's peak memory bandwidth.
  const auto peaks = CurrentGpuPeaks();
  const double peak_bw = peaks.ok() ? peaks->memory_Bps : 0.0;
  if (peaks.ok()) {
    std::printf("%s: peak memory bandwidth %.0f GB/s\n", peaks->name.c_str(), peak_bw / 1e9);
  }
  std::printf("%6s %8s %12s %12s %12s %10s %8s %8s\n", "batch", "context", "step ms", "tokens/s",
              "read GB/s", "vs copy", "S-MBU", "graphs");

  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(3, c.vocab_size - 1);
  for (int B : batches) {
    std::vector<std::vector<int32_t>> tables(B, std::vector<int32_t>(blocks_per_seq));
    for (int i = 0; i < B; ++i) {
      for (int b = 0; b < blocks_per_seq; ++b) tables[i][b] = i * blocks_per_seq + b;
    }
    StepPlan plan;
    StepResult result;
    std::vector<int32_t> last(B);
    // Prefill each sequence in chunks of max_tokens.
    for (int i = 0; i < B; ++i) {
      std::vector<int32_t> prompt(context);
      for (int32_t& t : prompt) t = token(rng);
      for (int start = 0; start < context; start += limits.max_tokens) {
        const int len = std::min(limits.max_tokens, context - start);
        plan.Clear();
        plan.AddSequence({.seq_id = i, .start_pos = start, .sample = start + len == context},
                         std::span<const int32_t>(prompt).subspan(start, len), tables[i]);
        if (auto st = ex.Execute(plan, &result); !st.ok()) return Die(st);
      }
      last[i] = result.next_tokens[0];
    }
    const int64_t launches_before = ex.stats().graph_launches;
    std::vector<double> ms;
    for (int s = 0; s < steps + 3; ++s) {
      plan.Clear();
      for (int i = 0; i < B; ++i) {
        plan.AddSequence({.seq_id = i,
                          .start_pos = context + s,
                          .sample = true,
                          .sample_index = static_cast<uint64_t>(s)},
                         std::span<const int32_t>(&last[i], 1), tables[i]);
      }
      const auto t0 = Clock::now();
      if (auto st = ex.Execute(plan, &result); !st.ok()) return Die(st);
      const auto t1 = Clock::now();
      for (int i = 0; i < B; ++i) last[i] = result.next_tokens[i];
      if (s >= 3) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    const double slots =
        std::min<double>(c.num_local_experts, static_cast<double>(B) * c.num_experts_per_tok);
    const double kv_read = kv_token_bytes * B * (context + steps / 2.0);
    const double bytes = L * (attn_bytes + router_bytes + slots * expert_bytes) + 2.0 * V * H +
                         2.0 * B * H + kv_read;
    const double gbs = bytes / (med * 1e-3) / 1e9;
    const double s_mbu = peak_bw > 0 ? gbs * 1e9 / peak_bw : 0.0;
    std::printf("%6d %8d %12.3f %12.0f %12.0f %9.2fx %8.3f %8lld\n", B, context, med,
                B / (med * 1e-3), gbs, gbs * 1e9 / copy_bw, s_mbu,
                static_cast<long long>(ex.stats().graph_launches - launches_before));
    // The same figures for machines (launch/gpu_check.py collects BENCH_JSON lines).
    std::printf(
        "BENCH_JSON {\"bench\": \"decode\", \"model\": \"%s\", \"batch\": %d, \"context\": %d, "
        "\"step_ms\": %.4f, \"tokens_per_s\": %.1f, \"read_gb_s\": %.1f, \"copy_gb_s\": %.1f, "
        "\"ratio_to_copy\": %.4f, \"s_mbu\": %.4f}\n",
        model.c_str(), B, context, med, B / (med * 1e-3), gbs, copy_bw / 1e9,
        gbs * 1e9 / copy_bw, s_mbu);
  }
  return 0;
}

}  // namespace
}  // namespace switchyard

int main(int argc, char** argv) {
  CLI::App app{"Decode step time of the CUDA executor (see bench/cuda/decode.cc)"};
  std::string model;
  std::vector<int> batches = {1, 8, 64};
  int context = 256, steps = 32;
  app.add_option("--model", model, "Checkpoint directory (e.g. from make-synthetic-model)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--batches", batches, "Batch sizes")->delimiter(',');
  app.add_option("--context", context, "Prefilled tokens per sequence")
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--steps", steps, "Timed decode steps per batch size")
      ->check(CLI::Range(1, 1 << 16));
  CLI11_PARSE(app, argc, argv);
  return switchyard::Run(model, batches, context, steps);
}
