// The CUDA executor's entry points in a build without CUDA (SWITCHYARD_HAVE_CUDA off).
#include "worker/cuda_executor.h"

namespace switchyard {

bool CudaDeviceAvailable() { return false; }

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

}  // namespace switchyard
