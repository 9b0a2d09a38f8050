// Why a generation ended, and its one printed name: the command line's JSON, the KServe
// finish_reason parameter and `switchyard client` all show FinishReasonName, so the three
// cannot drift apart.
#pragma once

namespace switchyard {

enum class FinishReason { kLength, kEos, kStop, kCancelled };

// Lower-case name: "length", "eos", "stop" or "cancelled". Defined here (not in a .cc) because
// sy_server uses it without linking sy_coordinator.
constexpr const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return "length";
    case FinishReason::kEos: return "eos";
    case FinishReason::kStop: return "stop";
    case FinishReason::kCancelled: return "cancelled";
  }
  return "unknown";  // only for a value cast from outside the enum
}

}  // namespace switchyard
