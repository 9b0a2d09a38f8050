// Which GPU a rank uses: the launcher's local rank, modulo the GPUs this process sees.
//
//   ASSIGN_OR_RETURN(int device, SelectCudaDevice());   // before any CUDA work
//   std::string uuid = CurrentCudaDeviceUuid();          // to find ranks sharing a GPU
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace switchyard {

// This process's rank among the ranks on its node, from the launcher's environment:
// OMPI_COMM_WORLD_LOCAL_RANK, then SLURM_LOCALID, then MPI_LOCALRANKID (the first that is set
// to a non-negative integer); 0 when none is.
int LocalRankFromEnv();

// Makes device LocalRankFromEnv() % cudaGetDeviceCount() current and returns it (a launcher
// that gives each rank its own GPU through CUDA_VISIBLE_DEVICES leaves one visible: device 0).
// kUnavailable when there is no CUDA device.
absl::StatusOr<int> SelectCudaDevice();

// Waits until `event` (or, when null, all work on `stream`) is done, polling with a short
// back-off so the host never blocks inside CUDA: kInternal naming `what` and the CUDA error,
// or kDeadlineExceeded naming `what` when `deadline` passes first. The one bounded wait of
// the device code (backends and device communicators).
absl::Status PollCuda(cudaStream_t stream, cudaEvent_t event, absl::Duration deadline,
                      absl::string_view what);

// The current device's UUID as text ("GPU-xxxxxxxx-..."), the same in every process that
// uses that GPU whatever its CUDA_VISIBLE_DEVICES; empty when it cannot be read.
std::string CurrentCudaDeviceUuid();

}  // namespace switchyard
