// Memory-mapped safetensors checkpoints: one file, or shards listed by
// model.safetensors.index.json.
//
//   ASSIGN_OR_RETURN(auto ckpt, SafetensorsCheckpoint::Open("models/brown-moe"));
//   ASSIGN_OR_RETURN(TensorView w, ckpt->Get("model.norm.weight", {256}));
//
// Opening parses and validates every header (never the tensor data), so a malformed file is
// reported before any weight is used. Only the tensors a caller asks for are ever read: each
// rank of a distributed job touches the pages of its own shard alone. Accessed() lists the
// names asked for, so tests can prove it.
//
// Errors are kInvalidArgument (malformed input) or kNotFound (missing file/tensor), and every
// message names the file and, where there is one, the tensor.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tensor.h"

namespace switchyard {

class ByteProgress;

// One mapped .safetensors file.
class SafetensorsFile {
 public:
  // Maps `path` read-only and validates its header: length within the file, valid JSON,
  // known dtypes (BF16, F16, F32), shapes of non-negative integers, data_offsets in range,
  // consistent with dtype*shape, and not overlapping one another.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

// A checkpoint directory: model.safetensors, or the shards named by
// model.safetensors.index.json (whose weight_map must name only existing files, and whose
// tensors must be found in the file it names). Thread-safe after Open.
class SafetensorsCheckpoint {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& dir);

  bool Has(const std::string& name) const;

  // Returns the tensor, checking it exists and, when `expected_shape` is non-empty, that its
  // shape matches. Errors: kNotFound "… missing tensor NAME"; kInvalidArgument
  // "FILE: tensor NAME has shape [a, b], expected [c, d]".
  absl::StatusOr<TensorView> Get(const std::string& name,
                                 const std::vector<int64_t>& expected_shape = {}) const;

  // Touches every page of the named tensors so later use does not fault, reporting bytes to
  // `progress` when non-null.
  void Prefetch(const std::vector<TensorView>& tensors, ByteProgress* progress) const;
  // Drops this process's mapped pages that lie wholly inside the tensors (madvise
  // MADV_DONTNEED), so memory no longer used (experts moved away) leaves the resident size;
  // the data stays readable and would fault back in from the file.
  void Release(const std::vector<TensorView>& tensors) const;

  // All tensor names in the checkpoint.
  std::vector<std::string> Names() const;
  // The names passed to Get() so far.
  std::set<std::string> Accessed() const;
  const std::string& dir() const { return dir_; }

 private:
  SafetensorsCheckpoint() = default;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
  mutable std::mutex mu_;
  mutable std::set<std::string> accessed_;  // GUARDED_BY(mu_)
};

}  // namespace switchyard
