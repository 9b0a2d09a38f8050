// Fuzzes SafetensorsCheckpoint::Open (model/safetensors.h): the header of a .safetensors file
// (through SafetensorsFile::Open) and model.safetensors.index.json. There is no in-memory entry
// point, so each input is written to a per-process scratch directory first.
//
// The input picks the mode by its first byte:
//   '{'   model.safetensors.index.json. Up to the first NUL byte it is the index; after that
//         byte (if there is one) come the bytes of shard model-00001-of-00002.safetensors, else
//         a fixed valid shard is used. model-00002-of-00002.safetensors is always a fixed valid
//         shard. Indexes naming a shard outside the scratch directory ("..") are skipped.
//   other a whole model.safetensors file (8-byte little-endian header length, JSON header,
//         data).
// An opened checkpoint is used as the runtime uses it (Names, Get with and without a shape,
// Prefetch, then every byte of every tensor is read), and its promises are checked: every name
// is found, nbytes = numel x dtype size, data aligned to the dtype, and per file the tensors fit
// the data region without overlapping. Errors must be kInvalidArgument or kNotFound.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace sy = switchyard;
using switchyard::fuzz::Fail;

namespace {

constexpr char kShard1[] = "model-00001-of-00002.safetensors";
constexpr char kShard2[] = "model-00002-of-00002.safetensors";

std::string Serialize(std::string header, const std::string& data) {
  header.resize((header.size() + 7) / 8 * 8, ' ');
  std::string out;
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

// Fixed valid shards (fuzz/make_seeds.py writes shard 1 as seed fixed_shard1.safetensors).
const std::string& DefaultShard1() {
  static const std::string s = Serialize(
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}})",
      std::string(20, '\x01'));
  return s;
}
const std::string& DefaultShard2() {
  static const std::string s = Serialize(
      R"({"c":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},)"
      R"("empty":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]}})",
      std::string(8, '\x02'));
  return s;
}

void WriteFile(const std::string& path, const char* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data, static_cast<std::streamsize>(size));
  out.close();
  if (!out) Fail("cannot write " + path);
}
void WriteFile(const std::string& path, const std::string& s) {
  WriteFile(path, s.data(), s.size());
}

// The size of the data region of a file with these bytes, or -1 when the header length does
// not fit (then the file must have been refused).
int64_t DataRegionSize(const std::string& bytes) {
  if (bytes.size() < 8) return -1;
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  if (header_len > bytes.size() - 8) return -1;
  return static_cast<int64_t>(bytes.size() - 8 - header_len);
}

// True when the index names a shard outside `dir` (a ".." in a weight_map file name).
bool EscapesDir(const char* text, size_t size) {
  nlohmann::json index = nlohmann::json::parse(text, text + size, nullptr, false);
  if (index.is_discarded() || !index.is_object()) return false;
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) return false;
  for (const auto& v : *wm) {
    if (v.is_string() && v.get<std::string>().find("..") != std::string::npos) return true;
  }
  return false;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot read back " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void CheckStatus(const absl::Status& s, const std::string& where) {
  if (s.code() != absl::StatusCode::kInvalidArgument && s.code() != absl::StatusCode::kNotFound) {
    Fail(where + ": expected kInvalidArgument or kNotFound, got " + s.ToString());
  }
}

// Uses an opened checkpoint the way the runtime does and checks what Open promised.
void Exercise(const sy::SafetensorsCheckpoint& ckpt) {
  struct PerFile {
    uint64_t sum = 0;
    const char* lo = nullptr;
    const char* hi = nullptr;
  };
  std::map<std::string, PerFile> per_file;
  std::vector<sy::TensorView> views;
  for (const std::string& name : ckpt.Names()) {
    auto view = ckpt.Get(name);
    if (!view.ok()) Fail("Names() lists " + name + " but Get fails: " + view.status().ToString());
    auto again = ckpt.Get(name, view->shape.empty() ? std::vector<int64_t>{} : view->shape);
    if (!again.ok()) Fail("Get(" + name + ", its own shape) fails: " + again.status().ToString());
    auto wrong = ckpt.Get(name, {-1});
    if (wrong.ok()) Fail("Get(" + name + ", {-1}) succeeds");
    CheckStatus(wrong.status(), "Get with a wrong shape");

    const size_t elem = sy::DTypeSize(view->dtype);
    uint64_t numel = 1;
    for (int64_t d : view->shape) {
      SY_FUZZ_CHECK(d >= 0, name);
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) Fail(name + ": numel overflows");
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, elem, &bytes)) Fail(name + ": byte size overflows");
    SY_FUZZ_CHECK(view->nbytes == bytes, name);
    SY_FUZZ_CHECK(view->data != nullptr, name);
    SY_FUZZ_CHECK(reinterpret_cast<uintptr_t>(view->data) % elem == 0, name + " is misaligned");
    if (view->nbytes > 0) {
      PerFile& f = per_file[view->file];
      const char* b = static_cast<const char*>(view->data);
      const char* e = b + view->nbytes;
      f.sum += view->nbytes;
      if (f.lo == nullptr || b < f.lo) f.lo = b;
      if (f.hi == nullptr || e > f.hi) f.hi = e;
    }
    views.push_back(*std::move(view));
  }
  // Tensors of one file lie in its data region without overlapping: their bytes add up to at
  // most the region, and so does the span from the first to the last.
  for (const auto& [path, f] : per_file) {
    // The file as it is on disk (an index may name a shard in several ways, "./x" or the
    // index itself); the harness is the only writer of the scratch directory.
    const int64_t region = DataRegionSize(ReadFile(path));
    SY_FUZZ_CHECK(region >= 0, path + " was opened with a header length past its end");
    SY_FUZZ_CHECK(f.sum <= static_cast<uint64_t>(region), path + ": tensors exceed the data region");
    SY_FUZZ_CHECK(static_cast<uint64_t>(f.hi - f.lo) <= static_cast<uint64_t>(region),
                  path + ": tensors span more than the data region");
  }
  auto missing = ckpt.Get("\x01no such tensor");
  if (missing.ok()) Fail("Get of a missing tensor succeeds");
  SY_FUZZ_CHECK(missing.status().code() == absl::StatusCode::kNotFound, missing.status().ToString());

  ckpt.Prefetch(views, nullptr);
  unsigned sum = 0;
  for (const sy::TensorView& v : views) {
    const auto* p = static_cast<const volatile unsigned char*>(v.data);
    for (size_t i = 0; i < v.nbytes; ++i) sum += p[i];
  }
  (void)sum;
  SY_FUZZ_CHECK(ckpt.Accessed().size() <= views.size() + 1, "Accessed() lists unasked names");
}

std::string g_single_dir, g_index_dir;
bool g_shard1_default = false;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string& root = switchyard::fuzz::ScratchDir();
  g_single_dir = root + "/single";
  g_index_dir = root + "/index";
  std::filesystem::create_directories(g_single_dir);
  std::filesystem::create_directories(g_index_dir);
  WriteFile(g_index_dir + "/" + kShard2, DefaultShard2());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* text = reinterpret_cast<const char*>(data);
  std::string dir;
  if (size > 0 && text[0] == '{') {
    const char* nul = static_cast<const char*>(std::memchr(text, '\0', size));
    const size_t index_size = nul != nullptr ? static_cast<size_t>(nul - text) : size;
    if (EscapesDir(text, index_size)) return -1;  // keep the fuzzer inside its directory
    dir = g_index_dir;
    WriteFile(dir + "/model.safetensors.index.json", text, index_size);
    if (nul != nullptr) {
      WriteFile(dir + "/" + kShard1, nul + 1, size - index_size - 1);
      g_shard1_default = false;
    } else if (!g_shard1_default) {
      WriteFile(dir + "/" + kShard1, DefaultShard1());
      g_shard1_default = true;
    }
  } else {
    dir = g_single_dir;
    WriteFile(dir + "/model.safetensors", text, size);
  }

  auto ckpt = sy::SafetensorsCheckpoint::Open(dir);
  sy::fuzz::Verbose(dir == g_index_dir ? "SafetensorsCheckpoint::Open (index)"
                                       : "SafetensorsCheckpoint::Open (model.safetensors)",
                    ckpt.status());
  if (!ckpt.ok()) {
    CheckStatus(ckpt.status(), "SafetensorsCheckpoint::Open");
    return 0;
  }
  Exercise(**ckpt);
  return 0;
}
