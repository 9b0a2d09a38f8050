// The CUDA entry points of the worker, usable from code built without CUDA (then
// CudaDeviceAvailable() is false and the factories return kUnimplemented "built without
// CUDA"). Both build on the CUDA stage backend (worker/cuda_stage_backend.h) driven by the
// DistributedWorker, the one orchestration of every job:
// - MakeCudaExecutor: a single-process job on one GPU, the one-rank case (EP = PP = 1 over a
//   group of one rank);
// - MakeCudaWorker: one rank of a distributed GPU job (mpirun/srun, any EP x PP and placement),
//   with device communicators for the stage link and the EP group's rows: NCCL, or staged
//   through pinned host memory over the MPI groups (several ranks may then share one GPU).
//
//   if (CudaDeviceAvailable()) {
//     ASSIGN_OR_RETURN(auto exec, MakeCudaExecutor(*weights, {.num_blocks = 256},
//                                                  {.max_tokens = 512, .max_context = 4096}));
//     RETURN_IF_ERROR(exec->Execute(plan, &result));
//   }
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "model/weights.h"
#include "worker/distributed_executor.h"
#include "worker/shard_forward.h"
#include "worker/step.h"

namespace switchyard {

// True when this build has the CUDA backend and a CUDA device can be used.
bool CudaDeviceAvailable();

// The current GPU's name and peaks, for utilisation figures (MoE-CAP's S-MBU and S-MFU):
// memory bandwidth from the memory clock and bus width; dense bf16 tensor-core FLOP/s from
// the vendor's figure for the model (0 when the model is not in the table).
struct GpuPeaks {
  std::string name;
  double memory_Bps = 0;
  double bf16_flops = 0;
};
absl::StatusOr<GpuPeaks> CurrentGpuPeaks();

// Makes this rank's GPU current (the local rank's, modulo the GPUs it sees: SelectCudaDevice
// in comm/cuda_device.h) and returns its UUID, by which ranks sharing a GPU are found.
// kUnimplemented without CUDA.
absl::StatusOr<std::string> SelectRankGpu();

struct CudaExecutorOptions {
  bool use_graphs = true;     // capture decode steps as CUDA graphs
  int max_graph_batch = 128;  // largest decode batch captured (and run with static shapes)
};

struct CudaExecutorStats {
  int64_t eager_steps = 0;     // stage runs with no graph launched (incl. graph warm-ups)
  int64_t graph_captures = 0;  // decode graphs instantiated
  // Graphs launched (incl. the capturing one): one per decode stage run with one EP rank,
  // one per layer with EP > 1.
  int64_t graph_launches = 0;
  int64_t graph_failures = 0;  // captures that failed (that shape then runs eagerly)
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

struct CudaWorkerOptions {
  // How device buffers move between ranks: "nccl" (NCCL send/recv and grouped all-to-all-v)
  // or "staged" (pinned host buffers over the MPI groups).
  std::string device_comm = "nccl";
  CudaExecutorOptions graphs;
  absl::Duration deadline = absl::Seconds(60);  // every wait on the device
};

// Refuses a device_comm this build cannot provide (kInvalidArgument for an unknown name,
// kUnimplemented for "nccl" in a build without NCCL).
absl::Status CheckDeviceComm(const std::string& device_comm);

// One rank of a distributed GPU job: its stream, device communicators, CUDA stage backend and
// the DistributedWorker that drives them.
class CudaWorker {
 public:
  virtual ~CudaWorker() = default;
  virtual DistributedWorker* worker() = 0;
  virtual const CudaExecutorStats& stats() const = 0;
  virtual uint64_t device_bytes() const = 0;
};

// Collective over `world` (every rank calls it): on the CUDA device current in the calling
// thread (SelectCudaDevice, comm/cuda_device.h), builds the device communicators over `world`
// (the stage link) and `ep_group` (the stage's EP group, host; its rows move on the device
// twin) and the rank's backend. `routing` covers the stage's layers. All arguments must
// outlive the result.
absl::StatusOr<std::unique_ptr<CudaWorker>> MakeCudaWorker(
    const ModelWeights& weights, const ParallelShape& shape, Communicator* world,
    Communicator* ep_group, ExpertRanks routing, const KvPoolOptions& kv,
    const ForwardLimits& limits, const CudaWorkerOptions& options);

}  // namespace switchyard
