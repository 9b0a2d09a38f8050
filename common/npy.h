// Reading and writing NumPy .npy files (version 1.0, little-endian float32, C order).
//
//   RETURN_IF_ERROR(WriteNpyF32("logits.npy", data, {T, vocab}));
//   ASSIGN_OR_RETURN(NpyArray a, ReadNpyF32("ref.npy"));
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace switchyard {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// Writes `data` (product(shape) floats). Errors: kInvalidArgument on a size mismatch,
// kPermissionDenied/kInternal when the file cannot be written (message names the path).
absl::Status WriteNpyF32(const std::string& path, const float* data,
                         const std::vector<int64_t>& shape);

// Reads a '<f4' C-order array. Errors name the path and what is wrong.
absl::StatusOr<NpyArray> ReadNpyF32(const std::string& path);

}  // namespace switchyard
