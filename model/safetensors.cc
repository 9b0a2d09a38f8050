#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using nlohmann::json;

constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleName[] = "model.safetensors";

absl::Status Malformed(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::Status TensorError(const std::string& path, const std::string& name,
                         const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", name, " ", what));
}

// The same error with `context` in front, so a shard's error also names the index that led
// to it.
absl::Status Prefixed(const absl::Status& s, const std::string& context) {
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

bool ParseDType(const std::string& s, DType* out) {
  if (s == "BF16") {
    *out = DType::kBF16;
  } else if (s == "F16") {
    *out = DType::kF16;
  } else if (s == "F32") {
    *out = DType::kF32;
  } else {
    return false;
  }
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Reads one header entry into `view` (all but `data`) and its [begin, end) offsets relative to
// the data region, checking everything that can be checked without the other entries.
absl::Status ParseEntry(const std::string& path, const std::string& name, const json& entry,
                        uint64_t data_size, TensorView* view, uint64_t* begin, uint64_t* end) {
  if (!entry.is_object())
    return TensorError(path, name, "has a header entry that is not an object");
  view->name = name;
  view->file = path;

  auto dt = entry.find("dtype");
  if (dt == entry.end()) return TensorError(path, name, "has no dtype");
  if (!dt->is_string()) return TensorError(path, name, "has a dtype that is not a string");
  const std::string dtype = dt->get<std::string>();
  if (!ParseDType(dtype, &view->dtype)) {
    return TensorError(
        path, name,
        absl::StrCat("has unsupported dtype '", dtype, "' (supported: BF16, F16, F32)"));
  }

  auto sh = entry.find("shape");
  if (sh == entry.end()) return TensorError(path, name, "has no shape");
  if (!sh->is_array()) return TensorError(path, name, "has a shape that is not an array");
  // numel and the byte size are computed with overflow checks: a hostile header must not wrap
  // them around to a size that happens to match its offsets.
  uint64_t numel = 1;
  for (const json& d : *sh) {
    if (!d.is_number_integer()) {
      return TensorError(path, name,
                         absl::StrCat("has a non-integer dimension in shape ", sh->dump()));
    }
    if (!d.is_number_unsigned()) {
      return TensorError(path, name,
                         absl::StrCat("has a negative dimension in shape ", sh->dump()));
    }
    const uint64_t v = d.get<uint64_t>();
    if (v > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, v, &numel)) {
      return TensorError(path, name,
                         absl::StrCat("has a shape too large to address: ", sh->dump()));
    }
    view->shape.push_back(static_cast<int64_t>(v));
  }
  uint64_t expected_bytes = 0;
  if (__builtin_mul_overflow(numel, DTypeSize(view->dtype), &expected_bytes)) {
    return TensorError(path, name, absl::StrCat("has a shape too large to address: ", sh->dump()));
  }

  auto off = entry.find("data_offsets");
  if (off == entry.end()) return TensorError(path, name, "has no data_offsets");
  if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned()) {
    return TensorError(path, name,
                       absl::StrCat("has data_offsets ", off->dump(),
                                    "; expected [begin, end] of non-negative integers"));
  }
  *begin = (*off)[0].get<uint64_t>();
  *end = (*off)[1].get<uint64_t>();
  if (*end < *begin) {
    return TensorError(
        path, name, absl::StrCat("has data_offsets [", *begin, ", ", *end, "] with end < begin"));
  }
  if (*end > data_size) {
    return TensorError(path, name,
                       absl::StrCat("has data_offsets [", *begin, ", ", *end,
                                    "] past the end of the data region (", data_size, " bytes)"));
  }
  if (*end - *begin != expected_bytes) {
    return TensorError(path, name,
                       absl::StrCat("has data_offsets [", *begin, ", ", *end, "] spanning ",
                                    *end - *begin, " bytes, but ", dtype, " ",
                                    ShapeString(view->shape), " needs ", expected_bytes));
  }
  view->nbytes = static_cast<size_t>(expected_bytes);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ss.str();
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::ErrnoToStatus(err, msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Malformed(path, "not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  // Checked before mmap, which refuses a zero-length mapping.
  if (size < 8) {
    ::close(fd);
    return Malformed(path, absl::StrCat("file is truncated: ", size,
                                        " bytes, shorter than the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) return absl::ErrnoToStatus(map_err, absl::StrCat("cannot mmap ", path));

  // Owned from here on, so every early return below unmaps.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->map_size_ = size;
  const auto* bytes = static_cast<const unsigned char*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
  if (header_len > size - 8) {
    return Malformed(path, absl::StrCat("header length ", header_len,
                                        " runs past the end of the file (", size, " bytes)"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  json header = json::parse(header_begin, header_begin + header_len, /*cb=*/nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded()) return Malformed(path, "header is not valid JSON");
  if (!header.is_object()) return Malformed(path, "header is not a JSON object");

  const unsigned char* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  struct Extent {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Extent> extents;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;  // free-form string map; nothing we use
    TensorView view;
    uint64_t begin = 0, end = 0;
    RETURN_IF_ERROR(ParseEntry(path, it.key(), it.value(), data_size, &view, &begin, &end));
    // Kernels read the data as uint16_t/float arrays, so a misaligned tensor (possible only
    // when a writer did not pad the header to 8 bytes, as the reference writer does) would be
    // undefined behaviour later; refuse it here where the file can be named. The map is
    // page-aligned, so the file offset decides.
    const uint64_t file_offset = 8 + header_len + begin;
    if (file_offset % DTypeSize(view.dtype) != 0) {
      return TensorError(
          path, it.key(),
          absl::StrCat("starts at file offset ", file_offset, ", not aligned to its ",
                       DTypeSize(view.dtype), "-byte elements (header not padded to 8 bytes?)"));
    }
    view.data = data + begin;
    auto [pos, inserted] = file->tensors_.emplace(it.key(), std::move(view));
    extents.push_back({begin, end, &pos->first});
  }

  // Overlap check: sorted by start, each extent must begin at or after the previous one's end.
  // Empty tensors occupy no bytes, so they cannot overlap anything.
  extents.erase(std::remove_if(extents.begin(), extents.end(),
                               [](const Extent& e) { return e.begin == e.end; }),
                extents.end());
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  for (size_t i = 1; i < extents.size(); ++i) {
    const Extent& prev = extents[i - 1];
    const Extent& cur = extents[i];
    if (cur.begin < prev.end) {
      return TensorError(path, *cur.name,
                         absl::StrCat("at bytes [", cur.begin, ", ", cur.end, ") overlaps tensor ",
                                      *prev.name, " at bytes [", prev.begin, ", ", prev.end, ")"));
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(
    const std::string& dir) {
  std::unique_ptr<SafetensorsCheckpoint> ckpt(new SafetensorsCheckpoint());
  ckpt->dir_ = dir;
  const std::string index_path = absl::StrCat(dir, "/", kIndexName);
  const std::string single_path = absl::StrCat(dir, "/", kSingleName);

  if (IsRegularFile(index_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadWholeFile(index_path));
    json index = json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded()) return Malformed(index_path, "not valid JSON");
    if (!index.is_object()) return Malformed(index_path, "not a JSON object");
    auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) {
      return Malformed(index_path, "has no weight_map object");
    }
    if (wm->empty()) return Malformed(index_path, "weight_map is empty");
    // Shard file -> the tensors the index places in it; each shard is opened once.
    std::map<std::string, std::vector<std::string>> by_file;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string() || it.value().get<std::string>().empty()) {
        return Malformed(index_path, absl::StrCat("weight_map entry for tensor ", it.key(),
                                                  " is not a file name: ", it.value().dump()));
      }
      // Shards live beside the index: a path would let an index open any file on the machine.
      const std::string& file = it.value().get_ref<const std::string&>();
      if (file.find('/') != std::string::npos || file == "." || file == "..") {
        return Malformed(index_path,
                         absl::StrCat("weight_map entry for tensor ", it.key(), " is ", file,
                                      ": a shard must be a file name in the checkpoint "
                                      "directory, not a path"));
      }
      by_file[it.value().get<std::string>()].push_back(it.key());
    }
    for (const auto& [shard, names] : by_file) {
      const std::string shard_path = absl::StrCat(dir, "/", shard);
      auto file = SafetensorsFile::Open(shard_path);
      if (!file.ok()) {
        return Prefixed(file.status(), absl::StrCat(index_path, ": shard ", shard,
                                                    " (holding tensor ", names.front(), ")"));
      }
      for (const std::string& name : names) {
        if ((*file)->tensors().count(name) == 0) {
          return Malformed(index_path,
                           absl::StrCat("weight_map places tensor ", name, " in ", shard, ", but ",
                                        shard_path, " has no such tensor"));
        }
      }
      ckpt->files_.push_back(*std::move(file));
    }
  } else if (IsRegularFile(single_path)) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path));
    ckpt->files_.push_back(std::move(file));
  } else {
    return absl::NotFoundError(absl::StrCat("no ", kSingleName, " or ", kIndexName, " in ", dir));
  }

  // Every tensor of every opened file is indexed, listed in the weight_map or not; a name in
  // two files would make Get() depend on which one won, so it is refused.
  for (const auto& file : ckpt->files_) {
    for (const auto& [name, view] : file->tensors()) {
      auto [it, inserted] = ckpt->index_.emplace(name, &view);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(dir, ": tensor ", name, " appears in both ",
                                                       it->second->file, " and ", file->path()));
      }
    }
  }
  return ckpt;
}

bool SafetensorsCheckpoint::Has(const std::string& name) const { return index_.count(name) > 0; }

absl::StatusOr<TensorView> SafetensorsCheckpoint::Get(
    const std::string& name, const std::vector<int64_t>& expected_shape) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    accessed_.insert(name);
  }
  auto it = index_.find(name);
  if (it == index_.end()) return absl::NotFoundError(absl::StrCat(dir_, ": missing tensor ", name));
  const TensorView& view = *it->second;
  if (!expected_shape.empty() && view.shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(view.file, ": tensor ", name, " has shape ",
                                                   ShapeString(view.shape), ", expected ",
                                                   ShapeString(expected_shape)));
  }
  return view;
}

void SafetensorsCheckpoint::Release(const std::vector<TensorView>& tensors) const {
  const long sys_page = ::sysconf(_SC_PAGESIZE);
  const uintptr_t page = sys_page > 0 ? static_cast<uintptr_t>(sys_page) : 4096;
  for (const TensorView& t : tensors) {
    if (t.data == nullptr || t.nbytes == 0) continue;
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data) + page - 1) & ~(page - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data) + t.nbytes) & ~(page - 1);
    // Pages shared with a neighbouring tensor are kept. Advisory: a failure keeps them mapped.
    if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }
}

void SafetensorsCheckpoint::Prefetch(const std::vector<TensorView>& tensors,
                                     ByteProgress* progress) const {
  constexpr uintptr_t kPage = 4096;  // a multiple of it on every target, so no page is skipped
  constexpr size_t kChunk = size_t{4} << 20;  // progress granularity
  const long sys_page = ::sysconf(_SC_PAGESIZE);
  const uintptr_t advise_page = sys_page > 0 ? static_cast<uintptr_t>(sys_page) : kPage;
  for (const TensorView& t : tensors) {
    if (t.data == nullptr || t.nbytes == 0) continue;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data);
    const uintptr_t end = begin + t.nbytes;
    // madvise needs a page-aligned start; the extra bytes before the tensor are in the same map.
    const uintptr_t advise_begin = begin & ~(advise_page - 1);
    // Advisory only: a failure just means the touches below fault pages in one at a time.
    (void)::madvise(reinterpret_cast<void*>(advise_begin), end - advise_begin, MADV_WILLNEED);

    for (uintptr_t chunk = begin; chunk < end; chunk += kChunk) {
      const uintptr_t chunk_end = std::min<uintptr_t>(end, chunk + kChunk);
      // One read per page: from the page holding `chunk`, stepping by whole pages, clamped to
      // the tensor so no byte outside it is read.
      for (uintptr_t page = chunk & ~(kPage - 1); page < chunk_end; page += kPage) {
        // A volatile read cannot be optimised away, so the page really is faulted in.
        (void)*reinterpret_cast<const volatile unsigned char*>(std::max(page, chunk));
      }
      if (progress != nullptr) progress->Add(chunk_end - chunk);
    }
  }
}

std::vector<std::string> SafetensorsCheckpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, view] : index_) names.push_back(name);
  return names;
}

std::set<std::string> SafetensorsCheckpoint::Accessed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return accessed_;
}

}  // namespace switchyard
