// A StepExecutor that runs the whole model on one GPU (EP = PP = 1): the device twin of
// LocalExecutor. Compiles without CUDA: then CudaDeviceAvailable() is false and the factory
// returns kUnimplemented "built without CUDA".
//
//   if (CudaDeviceAvailable()) {
//     ASSIGN_OR_RETURN(auto exec, MakeCudaExecutor(*weights, {.num_blocks = 256},
//                                                  {.max_tokens = 512, .max_context = 4096}));
//     RETURN_IF_ERROR(exec->Execute(plan, &result));
//   }
//
// What it does:
// - Weights: the shard's matrices are uploaded once as bf16 (q/k/v fused into one [q+2kv, H]
//   matrix, each expert's w1/w3 into one [2F, H] matrix); norms as fp32.
// - KV cache: paged, in device memory, bf16, same block layout and block tables as the CPU
//   cache (PagedKvCache), so the coordinator's BlockAllocator drives it unchanged.
// - Forward pass: mirrors ShardForward with the kernels of kernels/cuda/ops.h: bf16 GEMM
//   inputs and KV cache, fp32 residual stream, q/k/v, accumulation and statistics (see the
//   numerics note in kernels/cuda/ops.h); final norm, lm_head and
//   sampling on the device; next tokens (and requested logits) are copied back.
// - Decode steps (every sequence of the step carries exactly one token) run with static shapes
//   and are captured as CUDA graphs keyed by the batch size B (the number of sequences):
//   the first decode step at a given B runs eagerly (warm-up: lazy module loading, cuBLAS
//   heuristics), the second captures the step into a graph and launches it, later ones replay
//   it. Per-step inputs (tokens, positions, slots, block tables, sampling parameters) live in a
//   fixed device buffer whose layout depends only on B, refreshed by one copy before launch.
//   B above CudaExecutorOptions::max_graph_batch runs eagerly. Other steps (prefill, mixed)
//   run eagerly with one device-to-host copy of the expert row counts per layer.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "model/weights.h"
#include "worker/local_executor.h"
#include "worker/shard_forward.h"
#include "worker/step.h"

namespace switchyard {

// True when this build has the CUDA backend and a CUDA device can be used.
bool CudaDeviceAvailable();

struct CudaExecutorOptions {
  bool use_graphs = true;     // capture decode steps as CUDA graphs
  int max_graph_batch = 128;  // largest decode batch captured (and run with static shapes)
};

struct CudaExecutorStats {
  int64_t eager_steps = 0;     // steps enqueued kernel by kernel (incl. graph warm-ups)
  int64_t graph_captures = 0;  // decode graphs instantiated
  int64_t graph_launches = 0;  // decode steps run from a graph (incl. the capturing step)
  int64_t graph_failures = 0;  // captures that failed (that batch size then runs eagerly)
};

// The executor's interface beyond StepExecutor (what tests and benchmarks look at).
class CudaStepExecutor : public StepExecutor {
 public:
  virtual const CudaExecutorStats& stats() const = 0;
  // Device bytes held: weights, KV cache, buffers.
  virtual uint64_t device_bytes() const = 0;
};

// Runs on the CUDA device current in the calling thread. `weights` must hold the whole model
// (ShardSpec::Whole) and outlive the executor. Errors: kUnimplemented without CUDA,
// kUnavailable without a device, kInvalidArgument for a shard or shapes the kernels do not
// support, kResourceExhausted when device memory runs out.
absl::StatusOr<std::unique_ptr<StepExecutor>> MakeCudaExecutor(const ModelWeights& weights,
                                                               const KvPoolOptions& kv,
                                                               const ForwardLimits& limits);
absl::StatusOr<std::unique_ptr<CudaStepExecutor>> MakeCudaExecutor(
    const ModelWeights& weights, const KvPoolOptions& kv, const ForwardLimits& limits,
    const CudaExecutorOptions& options);

}  // namespace switchyard
