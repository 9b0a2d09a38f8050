// Tensor element types and read-only views onto checkpoint memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace switchyard {

enum class DType { kBF16, kF16, kF32 };

inline size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }
inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kF32: return "F32";
  }
  return "?";
}

// A view of one tensor's bytes (usually inside a memory-mapped checkpoint; never owned).
struct TensorView {
  std::string name;
  std::string file;  // the file that holds it, for error messages
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// A row-major weight matrix [rows, cols] in its stored type: the Hugging Face Linear layout
// [out_features, in_features].
struct WeightMatrix {
  DType dtype = DType::kBF16;
  const void* data = nullptr;
  int rows = 0;
  int cols = 0;

  size_t bytes() const { return static_cast<size_t>(rows) * cols * DTypeSize(dtype); }
  const void* row(int r) const {
    return static_cast<const char*>(data) + static_cast<size_t>(r) * cols * DTypeSize(dtype);
  }
};

}  // namespace switchyard
