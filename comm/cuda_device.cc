#include "comm/cuda_device.h"

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace switchyard {

int LocalRankFromEnv() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    const char* v = std::getenv(var);
    int rank = -1;
    if (v != nullptr && absl::SimpleAtoi(v, &rank) && rank >= 0) return rank;
  }
  return 0;
}

absl::StatusOr<int> SelectCudaDevice() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("no CUDA device (",
                     err != cudaSuccess ? cudaGetErrorString(err) : "device count is 0", ")"));
  }
  const int device = LocalRankFromEnv() % count;
  const cudaError_t set = cudaSetDevice(device);
  if (set != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("cudaSetDevice(", device, "): ", cudaGetErrorString(set)));
  }
  return device;
}

absl::Status PollCuda(cudaStream_t stream, cudaEvent_t event, absl::Duration deadline,
                      absl::string_view what) {
  const absl::Time end = absl::Now() + deadline;
  absl::Duration sleep = absl::Microseconds(2);
  while (true) {
    const cudaError_t q = event != nullptr ? cudaEventQuery(event) : cudaStreamQuery(stream);
    if (q == cudaSuccess) return absl::OkStatus();
    if (q != cudaErrorNotReady) {
      cudaGetLastError();
      return absl::InternalError(
          absl::StrCat(what, ": ", cudaGetErrorName(q), " (", cudaGetErrorString(q), ")"));
    }
    if (absl::Now() > end) {
      return absl::DeadlineExceededError(absl::StrCat(
          what, ": the GPU did not finish within ", absl::FormatDuration(deadline)));
    }
    absl::SleepFor(sleep);
    sleep = std::min(sleep * 2, absl::Microseconds(100));
  }
}

std::string CurrentCudaDeviceUuid() {
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  const auto* b = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
  char text[64];
  std::snprintf(text, sizeof(text),
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                b[14], b[15]);
  return text;
}

}  // namespace switchyard
