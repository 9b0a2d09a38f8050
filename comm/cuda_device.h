// Which GPU a rank uses: the launcher's local rank, modulo the GPUs this process sees.
//
//   ASSIGN_OR_RETURN(int device, SelectCudaDevice());   // before any CUDA work
//   std::string uuid = CurrentCudaDeviceUuid();          // to find ranks sharing a GPU
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace switchyard {

// This process's rank among the ranks on its node, from the launcher's environment:
// OMPI_COMM_WORLD_LOCAL_RANK, then SLURM_LOCALID, then MPI_LOCALRANKID (the first that is set
// to a non-negative integer); 0 when none is.
int LocalRankFromEnv();

// Makes device LocalRankFromEnv() % cudaGetDeviceCount() current and returns it (a launcher
// that gives each rank its own GPU through CUDA_VISIBLE_DEVICES leaves one visible: device 0).
// kUnavailable when there is no CUDA device.
absl::StatusOr<int> SelectCudaDevice();

// The current device's UUID as text ("GPU-xxxxxxxx-..."), the same in every process that
// uses that GPU whatever its CUDA_VISIBLE_DEVICES; empty when it cannot be read.
std::string CurrentCudaDeviceUuid();

}  // namespace switchyard
