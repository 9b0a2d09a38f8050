// The CUDA stage backend (worker/stage_backend.h): any layer range and any expert subset of a
// placement on one GPU, driven by the DistributedWorker like the CPU backend. A single-GPU
// job is its one-rank case (worker/cuda_executor.h); a distributed GPU job runs one per rank
// (MakeCudaWorker in worker/cuda_executor.h).
//
//   ASSIGN_OR_RETURN(auto backend, CudaStageBackend::Create(weights, &ep_control, &ep_device,
//                                                           routing, kv, limits, {}, stream));
//
// What it does:
// - Weights: the shard's matrices uploaded once as bf16 (q/k/v fused into [q+2kv, H], each
//   held expert's w1/w3 into [2F, H]; a layer's experts packed in increasing id, its "local
//   slots"); norms fp32. Embedding and head only where the shard holds them.
// - KV cache: paged, bf16, in device memory, for the stage's layers; the block layout and
//   block tables of the CPU cache.
// - RunLayers: the CPU backend's sequence of operations on the kernels of kernels/cuda/ops.h
//   (numerics in that header), over the micro-batch's rows of the device hidden buffer, which
//   the stage link moves between stages. It ends with the residual stream complete.
// - MoE with one EP rank: router, MoePermute, grouped experts, MoeUnpermute, all on the device.
//   With EP > 1, per layer: router on the device; its choices copied to the host, where
//   DeviceDispatchPlan (worker/device_dispatch.h) computes the indices; row counts and the
//   (expert, weight) pairs travel on the EP group's host communicator (`ep_control`), the
//   bf16 rows and the fp32 partial sums on its device communicator (`ep_device`: NCCL, or
//   staged through host memory), all ordered on the compute stream.
// - Decode micro-batches (every sequence one token, at most max_graph_batch of them) run with
//   static shapes and are captured as CUDA graphs: the first run of a shape is eager (warm-up),
//   the second captures, later ones replay. With one EP rank the whole stage is one graph,
//   keyed by (batch, first row). With EP > 1 each layer's attention block (norms, q/k/v,
//   RoPE, cache write, attention, output projection, router) is a graph keyed by (layer,
//   batch, first row), and the dispatch between them runs eagerly: its exchange sizes come
//   from the routing, and both device communicators need them on the host when the
//   exchange is enqueued (see docs/architecture.md, "GPU path").
// - Head: final norm of the head rows, lm_head and sampling on the device; sampled tokens and
//   requested logits are copied back.
// - Every wait on the device polls against `deadline` (kDeadlineExceeded naming what it
//   waited for); after any failure once work was enqueued the backend refuses further work
//   (kFailedPrecondition with the first error): device state is unknown.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "model/weights.h"
#include "worker/cuda_executor.h"  // CudaExecutorStats
#include "worker/distributed_executor.h"
#include "worker/stage_backend.h"

namespace switchyard {

struct CudaBackendOptions {
  bool use_graphs = true;     // capture decode micro-batches as CUDA graphs
  int max_graph_batch = 128;  // largest decode batch run with static shapes
  absl::Duration deadline = absl::Seconds(60);  // every wait on the device
};

class CudaStageBackend : public StageBackend {
 public:
  // Runs on the CUDA device current in the calling thread, on `stream` (not owned). The EP
  // group's communicators: `ep_control` on host memory, `ep_device` on device memory ordered
  // on `stream` (both of size 1 for one EP rank; never used then). `weights` holds the
  // stage's layers and, per layer, exactly the experts `routing` gives this rank. All must
  // outlive the backend. Errors: kUnavailable without a device, kInvalidArgument for a shard
  // or shapes the kernels do not support, kResourceExhausted when device memory runs out.
  static absl::StatusOr<std::unique_ptr<CudaStageBackend>> Create(
      const ModelWeights& weights, Communicator* ep_control, Communicator* ep_device,
      ExpertRanks routing, const KvPoolOptions& kv, const ForwardLimits& limits,
      const CudaBackendOptions& options, cudaStream_t stream);

  virtual const CudaExecutorStats& stats() const = 0;
  // Device bytes held: weights, KV cache, buffers.
  virtual uint64_t device_bytes() const = 0;
};

}  // namespace switchyard
