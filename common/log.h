// Logging through spdlog: one line per message on stderr, with time, rank and level:
//
//   2026-11-30 03:45:00.123 rank 0 info: serving brown-moe on port 50051
//
//   InitLogging(0);                 // main(), first thing
//   InitLogging(WorldRank());       // once MPI says which rank this is
//   spdlog::info("serving {} on port {}", name, port);
//   spdlog::warn(...); spdlog::error(...); spdlog::debug(...);
//
// The level comes from SWITCHYARD_LOG_LEVEL (trace, debug, info, warning, error, off;
// default info). Thread-safe.
#pragma once

#include <spdlog/spdlog.h>

#include "absl/strings/string_view.h"

#if !defined(ABSL_USES_STD_STRING_VIEW)
// Status messages (absl::string_view, not std::string_view in Debian's abseil) log as text.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename Context>
  auto format(absl::string_view s, Context& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};
#endif

namespace switchyard {

void InitLogging(int rank);

// Seconds since the first InitLogging call (the start of main): start-up time in logs.
double SecondsSinceStart();

}  // namespace switchyard
