// The CUDA entry points in a build without CUDA (SWITCHYARD_HAVE_CUDA off).
#include "worker/cuda_executor.h"

namespace switchyard {

bool CudaDeviceAvailable() { return false; }

absl::StatusOr<GpuPeaks> CurrentGpuPeaks() {
  return absl::UnimplementedError("switchyard was built without CUDA");
}

absl::StatusOr<std::string> SelectRankGpu() {
  return absl::UnimplementedError("switchyard was built without CUDA");
}

absl::StatusOr<std::unique_ptr<StepExecutor>> MakeCudaExecutor(const ModelWeights&,
                                                               const KvPoolOptions&,
                                                               const ForwardLimits&) {
  return absl::UnimplementedError("switchyard was built without CUDA");
}

absl::StatusOr<std::unique_ptr<CudaStepExecutor>> MakeCudaExecutor(const ModelWeights&,
                                                                   const KvPoolOptions&,
                                                                   const ForwardLimits&,
                                                                   const CudaExecutorOptions&) {
  return absl::UnimplementedError("switchyard was built without CUDA");
}

absl::Status CheckDeviceComm(const std::string& device_comm) {
  if (device_comm != "nccl" && device_comm != "staged") {
    return absl::InvalidArgumentError("--device-comm must be nccl or staged, got " + device_comm);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaWorker>> MakeCudaWorker(
    const ModelWeights&, const ParallelShape&, Communicator*, Communicator*, ExpertRanks,
    const KvPoolOptions&, const ForwardLimits&, const CudaWorkerOptions&) {
  return absl::UnimplementedError("switchyard was built without CUDA");
}

}  // namespace switchyard
