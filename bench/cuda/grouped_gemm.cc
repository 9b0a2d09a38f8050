// bench_grouped_gemm_cuda: the grouped expert FFN of a Mixtral prefill step (4096 tokens, top-2,
// 8 experts, hidden 4096, intermediate 14336 by default) against dense cuBLAS GEMMs of the same
// FLOPs.
//
//   bench_grouped_gemm_cuda [--tokens 4096] [--experts 8] [--top-k 2] [--hidden 4096]
//                           [--ffn 14336] [--iters 20] [--padded]
//
// Rows are routed uniformly at random (distinct experts per token), grouped by MoePermute, and
// timed through cuda::ExpertFfnPacked (one cublasGemmEx per expert for w13, the SiLU-gate
// kernel, one per expert for w2). The dense reference runs the same two GEMM shapes over all
// T * k rows with one expert's weights (two cublasGemmEx calls, no SiLU): identical FLOPs,
// 2 * rows * H * 3F. TFLOP/s = useful FLOPs / time; the ratio grouped / dense is the cost of
// splitting the rows by expert. --padded also times the static-shape decode path
// (ExpertFfnBatched with capacity = tokens per slot), whose useful-FLOP rate shows why prefill
// does not use it.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/bf16.h"
#include "kernels/cuda/ops.h"

namespace switchyard {
namespace {

using cuda::bf16;

void Check(const absl::Status& st, const char* what) {
  if (st.ok()) return;
  std::fprintf(stderr, "bench_grouped_gemm_cuda: %s: %s\n", what, st.ToString().c_str());
  std::exit(1);
}
#define CHECK_CUDA(expr) Check(cuda::CudaCheck((expr), #expr), "CUDA")

template <typename T>
T* DeviceAlloc(size_t n) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

// Fills `n` bf16 values with N(0, 0.02)-ish noise: a random 32 Mi-element block, replicated.
void FillRandom(bf16* dst, size_t n, std::mt19937& rng) {
  const size_t block = std::min<size_t>(n, size_t{1} << 25);
  std::vector<uint16_t> host(block);
  std::normal_distribution<float> d(0.0f, 0.02f);
  for (uint16_t& v : host) v = FloatToBf16(d(rng));
  for (size_t off = 0; off < n; off += block) {
    CHECK_CUDA(
        cudaMemcpy(dst + off, host.data(), std::min(block, n - off) * 2, cudaMemcpyHostToDevice));
  }
}

// Mean milliseconds of `fn` over `iters` runs after two warm-ups.
double TimeMs(cudaStream_t stream, int iters, const std::function<void()>& fn) {
  fn();
  fn();
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  CHECK_CUDA(cudaEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) fn();
  CHECK_CUDA(cudaEventRecord(stop, stream));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / iters;
}

struct Args {
  int tokens = 4096, experts = 8, top_k = 2, hidden = 4096, ffn = 14336, iters = 20;
  bool padded = false;
};

int Run(const Args& a) {
  if (!cuda::DeviceAvailable()) {
    std::fprintf(stderr, "bench_grouped_gemm_cuda: no CUDA device\n");
    return 1;
  }
  const int T = a.tokens, E = a.experts, K = a.top_k, H = a.hidden, F = a.ffn;
  const size_t rows = static_cast<size_t>(T) * K;
  std::mt19937 rng(11);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t handle;
  Check(cuda::CublasCheck(cublasCreate(&handle), "cublasCreate"), "cuBLAS");
  const size_t ws_bytes = size_t{32} << 20;
  void* ws = DeviceAlloc<uint8_t>(ws_bytes);
  const cuda::GemmContext ctx{handle, stream};
  Check(cuda::BindCublas(ctx, ws, ws_bytes), "BindCublas");

  bf16* x = DeviceAlloc<bf16>(static_cast<size_t>(T) * H);
  bf16* w13 = DeviceAlloc<bf16>(static_cast<size_t>(E) * 2 * F * H);
  bf16* w2 = DeviceAlloc<bf16>(static_cast<size_t>(E) * H * F);
  FillRandom(x, static_cast<size_t>(T) * H, rng);
  FillRandom(w13, static_cast<size_t>(E) * 2 * F * H, rng);
  FillRandom(w2, static_cast<size_t>(E) * H * F, rng);

  // Uniform routing, distinct experts per token.
  std::vector<int32_t> experts(rows);
  std::vector<int32_t> ids(E);
  std::iota(ids.begin(), ids.end(), 0);
  for (int t = 0; t < T; ++t) {
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int j = 0; j < K; ++j) experts[static_cast<size_t>(t) * K + j] = ids[j];
  }
  int32_t* d_experts = DeviceAlloc<int32_t>(rows);
  CHECK_CUDA(cudaMemcpy(d_experts, experts.data(), rows * 4, cudaMemcpyHostToDevice));

  const size_t cap_rows = a.padded ? std::max(rows, static_cast<size_t>(E) * T) : rows;
  cuda::ExpertFfnParams ffn{.w13 = w13,
                            .w2 = w2,
                            .num_experts = E,
                            .hidden = H,
                            .ffn = F,
                            .rows = DeviceAlloc<bf16>(cap_rows * H),
                            .h13 = DeviceAlloc<bf16>(cap_rows * 2 * F),
                            .act = DeviceAlloc<bf16>(cap_rows * F),
                            .y = DeviceAlloc<float>(cap_rows * H)};
  CHECK_CUDA(cudaMemset(ffn.rows, 0, cap_rows * H * 2));
  int32_t* counts = DeviceAlloc<int32_t>(E);
  int32_t* offsets = DeviceAlloc<int32_t>(E + 1);
  int32_t* row_token = DeviceAlloc<int32_t>(cap_rows);
  int32_t* pair_row = DeviceAlloc<int32_t>(rows);
  const cuda::MoePermuteParams permute{.x = x,
                                       .experts = d_experts,
                                       .num_tokens = T,
                                       .top_k = K,
                                       .ffn = ffn,
                                       .counts = counts,
                                       .offsets = offsets,
                                       .row_token = row_token,
                                       .pair_row = pair_row};
  Check(cuda::MoePermute(permute, stream), "MoePermute");
  std::vector<int32_t> host_counts(E);
  CHECK_CUDA(cudaMemcpyAsync(host_counts.data(), counts, E * 4, cudaMemcpyDeviceToHost, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));

  const double flops = 2.0 * rows * H * 3.0 * F;
  const double grouped_ms = TimeMs(stream, a.iters, [&] {
    Check(cuda::ExpertFfnPacked(ctx, ffn, host_counts.data()), "ExpertFfnPacked");
  });
  const double dense_ms = TimeMs(stream, a.iters, [&] {
    Check(cuda::Gemm(ctx, {.x = ffn.rows,
                           .rows = static_cast<int>(rows),
                           .w = w13,
                           .n = 2 * F,
                           .k = H,
                           .y = ffn.h13,
                           .out = cuda::GemmOut::kBf16}),
          "Gemm");
    Check(cuda::Gemm(ctx, {.x = ffn.act,
                           .rows = static_cast<int>(rows),
                           .w = w2,
                           .n = H,
                           .k = F,
                           .y = ffn.y,
                           .out = cuda::GemmOut::kF32}),
          "Gemm");
  });
  auto tflops = [&](double ms) { return flops / (ms * 1e-3) / 1e12; };
  std::printf(
      "expert FFN: %d tokens, top-%d, %d experts, hidden %d, ffn %d: %zu rows, %.2f TFLOP\n", T, K,
      E, H, F, rows, flops / 1e12);
  std::printf("rows per expert:");
  for (int c : host_counts) std::printf(" %d", c);
  std::printf("\n");
  std::printf("  grouped (cublasGemmEx per expert + SiLU): %8.3f ms %7.1f TFLOP/s\n", grouped_ms,
              tflops(grouped_ms));
  std::printf("  dense (2 cublasGemmEx, same FLOPs):       %8.3f ms %7.1f TFLOP/s\n", dense_ms,
              tflops(dense_ms));
  std::printf("  ratio grouped / dense:                    %8.2fx\n",
              tflops(grouped_ms) / tflops(dense_ms));
  std::printf(
      "BENCH_JSON {\"bench\": \"grouped_gemm\", \"tokens\": %d, \"top_k\": %d, \"experts\": %d, "
      "\"grouped_ms\": %.4f, \"dense_ms\": %.4f, \"grouped_tflops\": %.2f, \"dense_tflops\": %.2f, "
      "\"ratio_to_dense\": %.4f}\n",
      T, K, E, grouped_ms, dense_ms, tflops(grouped_ms), tflops(dense_ms),
      tflops(grouped_ms) / tflops(dense_ms));

  if (a.padded) {
    const void** tables = DeviceAlloc<const void*>(6 * static_cast<size_t>(E));
    const cuda::BatchedExpertPointers ptrs{
        tables,         tables + E,     const_cast<void**>(tables + 2 * E),
        tables + 3 * E, tables + 4 * E, const_cast<void**>(tables + 5 * E)};
    cuda::MoePermuteParams padded = permute;
    padded.capacity = T;
    padded.num_slots = E;
    padded.pointers = ptrs;
    Check(cuda::MoePermute(padded, stream), "MoePermute(padded)");
    const double padded_ms = TimeMs(stream, a.iters, [&] {
      Check(cuda::ExpertFfnBatched(ctx, ffn, ptrs, E, T), "ExpertFfnBatched");
    });
    std::printf("  padded batched (decode path, %d rows/slot): %6.3f ms %7.1f useful TFLOP/s\n", T,
                padded_ms, tflops(padded_ms));
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cublasDestroy(handle);
  return 0;
}

}  // namespace
}  // namespace switchyard

int main(int argc, char** argv) {
  CLI::App app{"Grouped expert GEMMs vs dense cuBLAS (see bench/cuda/grouped_gemm.cc)"};
  switchyard::Args a;
  app.add_option("--tokens", a.tokens)->check(CLI::Range(1, 1 << 20));
  app.add_option("--experts", a.experts)->check(CLI::Range(1, switchyard::cuda::kMaxExperts));
  app.add_option("--top-k", a.top_k)->check(CLI::Range(1, switchyard::cuda::kMaxTopK));
  app.add_option("--hidden", a.hidden)->check(CLI::Range(8, 1 << 16));
  app.add_option("--ffn", a.ffn)->check(CLI::Range(8, 1 << 18));
  app.add_option("--iters", a.iters)->check(CLI::Range(1, 10000));
  app.add_flag("--padded", a.padded, "Also time the static-shape (decode graph) path");
  CLI11_PARSE(app, argc, argv);
  if (a.top_k > a.experts) {
    std::fprintf(stderr, "--top-k must not exceed --experts\n");
    return 2;
  }
  return switchyard::Run(a);
}
