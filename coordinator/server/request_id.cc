#include "coordinator/server/request_id.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <random>

#include "absl/strings/str_format.h"

namespace switchyard {

bool ValidRequestId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) { return c > ' ' && c < 127; });
}

std::string NewRequestId() {
  static const uint64_t process = std::random_device{}() ^ (uint64_t{std::random_device{}()} << 32);
  static std::atomic<uint64_t> counter{0};
  return absl::StrFormat("%016x-%x", process, counter.fetch_add(1) + 1);
}

}  // namespace switchyard
