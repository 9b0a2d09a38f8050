// The CUDA entry points (worker/cuda_executor.h): a single-GPU executor and a distributed GPU
// rank, both the DistributedWorker over a CUDA stage backend.
#include "worker/cuda_executor.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/cuda_device.h"
#include "comm/self_communicator.h"
#include "comm/staged_communicator.h"
#include "common/status_macros.h"
#include "kernels/cuda/ops.h"
#include "worker/cuda_stage_backend.h"
#include "worker/expert_parallel_moe.h"  // SingleRankRouting
#ifdef SWITCHYARD_WITH_NCCL
#include "comm/nccl_communicator.h"
#endif

namespace switchyard {
namespace {

class CudaWorkerImpl final : public CudaWorker {
 public:
  ~CudaWorkerImpl() override {
    worker_.reset();  // the backend drains the stream before the communicators go
    ep_device_.reset();
    world_device_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init(const ModelWeights& weights, const ParallelShape& shape, Communicator* world,
                    Communicator* ep_group, ExpertRanks routing, const KvPoolOptions& kv,
                    const ForwardLimits& limits, const CudaWorkerOptions& options) {
    if (!cuda::DeviceAvailable()) return absl::UnavailableError("no CUDA device");
    RETURN_IF_ERROR(CheckDeviceComm(options.device_comm));
    RETURN_IF_ERROR(cuda::CudaCheck(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                                    "cudaStreamCreate"));
    if (world->size() == 1) {
      // A group of one rank: nothing moves between ranks.
      world_device_ = std::make_unique<SelfCommunicator>("self[device]");
      ep_device_ = std::make_unique<SelfCommunicator>("ep[device]");
    } else if (options.device_comm == "staged") {
      world_device_ = std::make_unique<StagedCommunicator>(world, stream_, options.deadline);
      ep_device_ = std::make_unique<StagedCommunicator>(ep_group, stream_, options.deadline);
    } else {
#ifdef SWITCHYARD_WITH_NCCL
      ASSIGN_OR_RETURN(auto nccl,
                       NcclCommunicator::Create(world, {.name = "world[nccl]",
                                                        .comm = {.timeout = options.deadline},
                                                        .stream = stream_}));
      ASSIGN_OR_RETURN(auto ep, nccl->Split(shape.stage(), shape.ep_rank(),
                                            absl::StrCat("ep(stage ", shape.stage(), ")[nccl]")));
      world_device_ = std::move(nccl);
      ep_device_ = std::move(ep);
#else
      return absl::UnimplementedError("--device-comm nccl: this build has no NCCL");
#endif
    }
    ASSIGN_OR_RETURN(auto backend,
                     CudaStageBackend::Create(weights, ep_group, ep_device_.get(),
                                              std::move(routing), kv, limits,
                                              {.use_graphs = options.graphs.use_graphs,
                                               .max_graph_batch = options.graphs.max_graph_batch,
                                               .deadline = options.deadline},
                                              stream_));
    backend_ = backend.get();
    worker_ = std::make_unique<DistributedWorker>(weights, shape, world, world_device_.get(),
                                                  std::move(backend), kv);
    return absl::OkStatus();
  }

  DistributedWorker* worker() override { return worker_.get(); }
  const CudaExecutorStats& stats() const override { return backend_->stats(); }
  uint64_t device_bytes() const override { return backend_->device_bytes(); }

 private:
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Communicator> world_device_;
  std::unique_ptr<Communicator> ep_device_;
  CudaStageBackend* backend_ = nullptr;  // owned by worker_
  std::unique_ptr<DistributedWorker> worker_;
};

// The single-GPU executor: the one-rank case of the distributed path.
class CudaExecutor final : public CudaStepExecutor {
 public:
  absl::Status Init(const ModelWeights& weights, const KvPoolOptions& kv,
                    const ForwardLimits& limits, const CudaExecutorOptions& options) {
    const ShardSpec& spec = weights.spec();
    const ModelConfig& cfg = weights.config();
    bool whole = spec.layer_begin == 0 && spec.layer_end == cfg.num_hidden_layers &&
                 spec.has_embedding && spec.has_head;
    for (int l = spec.layer_begin; whole && l < spec.layer_end; ++l) {
      for (int e = 0; e < cfg.num_local_experts; ++e) whole = whole && weights.layer(l).HasExpert(e);
    }
    if (!whole) {
      return absl::InvalidArgumentError(
          "the CUDA executor needs the whole model on one GPU (EP = PP = 1)");
    }
    ASSIGN_OR_RETURN(worker_, MakeCudaWorker(weights, {.ep = 1, .pp = 1, .world_rank = 0}, &self_,
                                             &self_, SingleRankRouting(cfg), kv, limits,
                                             {.device_comm = "staged", .graphs = options}));
    exec_ = std::make_unique<DistributedExecutor>(worker_->worker());
    return absl::OkStatus();
  }

  absl::Status Execute(const StepPlan& plan, StepResult* result) override {
    return exec_->Execute(plan, result);
  }
  bool records_routing() const override { return exec_->records_routing(); }
  int max_step_tokens() const override { return exec_->max_step_tokens(); }
  absl::StatusOr<std::vector<RankStatus>> CollectStatus() override {
    return exec_->CollectStatus();
  }
  const CudaExecutorStats& stats() const override { return worker_->stats(); }
  uint64_t device_bytes() const override { return worker_->device_bytes(); }

 private:
  SelfCommunicator self_{"self"};
  std::unique_ptr<CudaWorker> worker_;
  std::unique_ptr<DistributedExecutor> exec_;
};

}  // namespace

bool CudaDeviceAvailable() { return cuda::DeviceAvailable(); }

absl::StatusOr<GpuPeaks> CurrentGpuPeaks() {
  int device = 0, clock_khz = 0, bus_bits = 0;
  cudaDeviceProp prop{};
  RETURN_IF_ERROR(cuda::CudaCheck(cudaGetDevice(&device), "cudaGetDevice"));
  RETURN_IF_ERROR(cuda::CudaCheck(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
  RETURN_IF_ERROR(cuda::CudaCheck(
      cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device), "memory clock"));
  RETURN_IF_ERROR(cuda::CudaCheck(
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device), "bus width"));
  GpuPeaks p;
  p.name = prop.name;
  p.memory_Bps = 2.0 * clock_khz * 1e3 * bus_bits / 8.0;  // double data rate
  // Dense bf16 tensor-core peaks (vendor data sheets), by model.
  struct Known {
    const char* name;
    double flops;
  };
  for (const Known& k : {Known{"H200", 989e12}, Known{"H100 PCIe", 756e12},
                         Known{"H100 NVL", 835e12}, Known{"H100", 989e12},
                         Known{"A100", 312e12}, Known{"L40S", 362e12}}) {
    if (p.name.find(k.name) != std::string::npos) {
      p.bf16_flops = k.flops;
      break;
    }
  }
  return p;
}

absl::StatusOr<std::string> SelectRankGpu() {
  ASSIGN_OR_RETURN(const int device, SelectCudaDevice());
  std::string uuid = CurrentCudaDeviceUuid();
  return uuid.empty() ? absl::StrCat("device ", device) : uuid;
}

absl::Status CheckDeviceComm(const std::string& device_comm) {
  if (device_comm != "nccl" && device_comm != "staged") {
    return absl::InvalidArgumentError("--device-comm must be nccl or staged, got " + device_comm);
  }
#ifndef SWITCHYARD_WITH_NCCL
  if (device_comm == "nccl") {
    return absl::UnimplementedError(
        "--device-comm nccl: this build has no NCCL (use --device-comm staged)");
  }
#endif
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaWorker>> MakeCudaWorker(
    const ModelWeights& weights, const ParallelShape& shape, Communicator* world,
    Communicator* ep_group, ExpertRanks routing, const KvPoolOptions& kv,
    const ForwardLimits& limits, const CudaWorkerOptions& options) {
  auto w = std::make_unique<CudaWorkerImpl>();
  RETURN_IF_ERROR(w->Init(weights, shape, world, ep_group, std::move(routing), kv, limits, options));
  return std::unique_ptr<CudaWorker>(std::move(w));
}

absl::StatusOr<std::unique_ptr<CudaStepExecutor>> MakeCudaExecutor(
    const ModelWeights& weights, const KvPoolOptions& kv, const ForwardLimits& limits,
    const CudaExecutorOptions& options) {
  auto exec = std::make_unique<CudaExecutor>();
  RETURN_IF_ERROR(exec->Init(weights, kv, limits, options));
  return std::unique_ptr<CudaStepExecutor>(std::move(exec));
}

absl::StatusOr<std::unique_ptr<StepExecutor>> MakeCudaExecutor(const ModelWeights& weights,
                                                               const KvPoolOptions& kv,
                                                               const ForwardLimits& limits) {
  ASSIGN_OR_RETURN(auto exec, MakeCudaExecutor(weights, kv, limits, CudaExecutorOptions{}));
  return std::unique_ptr<StepExecutor>(std::move(exec));
}

}  // namespace switchyard
