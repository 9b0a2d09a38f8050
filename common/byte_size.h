// Byte counts as people write them on a command line: "1048576", "512M", "80GiB", "1.5 TiB".
// One parser for every flag that takes a size (--kv-memory, --device-memory), so they all
// accept and refuse the same spellings.
//
//   ASSIGN_OR_RETURN(uint64_t bytes, ParseByteSize("80GiB"));  // 85899345920
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace switchyard {

// Parses a non-negative decimal number (digits, optionally a fraction: "1.5"), optional spaces,
// then optionally a unit: B, K/M/G/T (x1000^n, also KB/MB/GB/TB) or KiB/MiB/GiB/TiB (x1024^n),
// case-sensitive. The result is rounded down to whole bytes and must be positive and fit in
// 64 bits. Errors: kInvalidArgument quoting the text and saying what is wrong (no number,
// unknown unit, too large, not positive).
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);

}  // namespace switchyard
