#include "common/npy.h"

#include <cstdio>
#include <fstream>
#include <numeric>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace switchyard {

absl::Status WriteNpyF32(const std::string& path, const float* data,
                         const std::vector<int64_t>& shape) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  // Magic (6) + version (2) + header length (2) + header + '\n' padded to 64 bytes.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot open ", path, " for writing"));
  const char magic[] = "\x93NUMPY\x01\x00";
  out.write(magic, 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(header.data(), header.size());
  int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
  out.write(reinterpret_cast<const char*>(data), n * sizeof(float));
  if (!out) return absl::InternalError(absl::StrCat("write to ", path, " failed"));
  return absl::OkStatus();
}

absl::StatusOr<NpyArray> ReadNpyF32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  char magic[8];
  in.read(magic, 8);
  if (!in || std::string(magic, 6) != "\x93NUMPY") {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a .npy file"));
  }
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t l16;
    in.read(reinterpret_cast<char*>(&l16), 2);
    hlen = l16;
  } else {
    in.read(reinterpret_cast<char*>(&hlen), 4);
  }
  std::string header(hlen, '\0');
  in.read(header.data(), hlen);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header"));
  if (header.find("'<f4'") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": only '<f4' arrays are supported"));
  }
  if (header.find("'fortran_order': False") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": only C-order arrays are supported"));
  }
  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"('shape':\s*\(([^)]*)\))"))) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no shape in header"));
  }
  NpyArray arr;
  std::string dims = m[1];
  std::regex num(R"(\d+)");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), num); it != std::sregex_iterator();
       ++it) {
    arr.shape.push_back(std::stoll(it->str()));
  }
  int64_t n = std::accumulate(arr.shape.begin(), arr.shape.end(), int64_t{1}, std::multiplies<>());
  arr.data.resize(n);
  in.read(reinterpret_cast<char*>(arr.data.data()), n * sizeof(float));
  if (!in) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated data"));
  return arr;
}

}  // namespace switchyard
