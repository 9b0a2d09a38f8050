// Microbenchmarks of the CPU MatMul on bf16 weights: decode GEMV (memory-bound) at a small
// and at Mixtral size, and a small prefill. Bytes processed = weight bytes + activations in
// and out, so bytes/s of the GEMV cases reads as achieved memory bandwidth.
//
//   ./kernels_cpu_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdint>
#include <random>
#include <vector>

#include "common/bf16.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/sampling.h"

namespace switchyard::cpu {
namespace {

void BM_MatMulBf16(benchmark::State& state) {
  const int T = static_cast<int>(state.range(0));
  const int N = static_cast<int>(state.range(1));
  const int K = static_cast<int>(state.range(2));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> w(static_cast<size_t>(N) * K);
  for (uint16_t& v : w) v = FloatToBf16(dist(rng));
  std::vector<float> x(static_cast<size_t>(T) * K), y(static_cast<size_t>(T) * N);
  for (float& v : x) v = dist(rng);
  const WeightMatrix W{DType::kBF16, w.data(), N, K};
  for (auto _ : state) {
    MatMul(x.data(), T, W, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const int64_t bytes = static_cast<int64_t>(W.bytes()) + 4 * (int64_t{T} * K + int64_t{T} * N);
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * T * N * K * state.iterations(), benchmark::Counter::kIsRate,
                         benchmark::Counter::kIs1000);
}

BENCHMARK(BM_MatMulBf16)
    ->ArgNames({"T", "N", "K"})
    ->Args({1, 512, 256})
    ->Args({1, 14336, 4096})
    ->Args({64, 512, 256})
    ->UseRealTime();

// Attention over a paged cache: args n_heads, n_kv_heads, head_dim, start_pos, T.
void BM_Attention(benchmark::State& state) {
  const AttentionShape shape{static_cast<int>(state.range(0)), static_cast<int>(state.range(1)),
                             static_cast<int>(state.range(2))};
  const int start_pos = static_cast<int>(state.range(3));
  const int T = static_cast<int>(state.range(4));
  const int ctx = start_pos + T, bs = 16, blocks = (ctx + bs - 1) / bs;
  const int kv_dim = shape.n_kv_heads * shape.head_dim;
  const int q_dim = shape.n_heads * shape.head_dim;
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> k(static_cast<size_t>(blocks) * bs * kv_dim), v(k.size());
  std::vector<float> q(static_cast<size_t>(T) * q_dim), out(q.size());
  for (float& f : k) f = dist(rng);
  for (float& f : v) f = dist(rng);
  for (float& f : q) f = dist(rng);
  std::vector<int32_t> table(blocks);
  for (int b = 0; b < blocks; ++b) table[b] = blocks - 1 - b;
  const int threads = omp_get_max_threads();
  std::vector<float> scratch(threads * AttentionScratchFloats(ctx));
  const KvLayer cache{k.data(), v.data(), bs, kv_dim};
  for (auto _ : state) {
    Attention(q.data(), T, start_pos, cache, table.data(), shape, out.data(), scratch.data(),
              threads);
    benchmark::DoNotOptimize(out.data());
  }
  // K and V bytes read per call (each query row reads its causal prefix).
  const int64_t rows = int64_t{T} * start_pos + int64_t{T} * (T + 1) / 2;
  state.SetBytesProcessed(state.iterations() * rows * 2 * kv_dim * 4);
}

BENCHMARK(BM_Attention)
    ->ArgNames({"H", "KV", "D", "start", "T"})
    ->Args({8, 2, 32, 511, 1})     // brown-moe decode at 512 context
    ->Args({32, 8, 128, 4095, 1})  // Mixtral decode at 4096 context
    ->Args({8, 2, 32, 0, 500})     // brown-moe prefill of 500 tokens
    ->UseRealTime();

// SampleToken over a 32000-token vocabulary: args top_k, top_p * 100 (temperature 1).
void BM_SampleToken(benchmark::State& state) {
  const int vocab = 32000;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> logits(vocab);
  for (float& f : logits) f = dist(rng);
  const SamplingParams p{.temperature = 1.0f,
                         .top_k = static_cast<int>(state.range(0)),
                         .top_p = static_cast<float>(state.range(1)) / 100.0f,
                         .seed = 1};
  SamplingScratch scratch;
  uint64_t step = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(SampleToken(logits.data(), vocab, p, step++, &scratch));
}

BENCHMARK(BM_SampleToken)
    ->ArgNames({"top_k", "top_p%"})
    ->Args({0, 100})
    ->Args({40, 95})
    ->Args({0, 90});

}  // namespace
}  // namespace switchyard::cpu

BENCHMARK_MAIN();
