#include "common/byte_size.h"

#include <cctype>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace switchyard {

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a byte size (", why, "; e.g. 1073741824, 512M, 80GiB)"));
  };
  // 128-bit arithmetic: a 64-bit count times a unit cannot overflow before it is checked.
  size_t i = 0;
  const size_t n = text.size();
  unsigned __int128 whole = 0;
  size_t int_digits = 0;
  for (; i < n && std::isdigit(static_cast<unsigned char>(text[i])); ++i, ++int_digits) {
    whole = whole * 10 + (text[i] - '0');
    if (whole > std::numeric_limits<uint64_t>::max()) return bad("too large");
  }
  unsigned __int128 frac = 0, frac_den = 1;
  size_t frac_digits = 0;
  if (i < n && text[i] == '.') {
    for (++i; i < n && std::isdigit(static_cast<unsigned char>(text[i])); ++i, ++frac_digits) {
      if (frac_digits < 18) {  // finer digits cannot change a result rounded to bytes
        frac = frac * 10 + (text[i] - '0');
        frac_den *= 10;
      }
    }
  }
  if (int_digits == 0 && frac_digits == 0) return bad("no number");
  while (i < n && text[i] == ' ') ++i;
  const std::string suffix = text.substr(i);
  static const std::pair<const char*, uint64_t> kUnits[] = {
      {"", 1},
      {"B", 1},
      {"K", 1000ull},
      {"KB", 1000ull},
      {"M", 1000000ull},
      {"MB", 1000000ull},
      {"G", 1000000000ull},
      {"GB", 1000000000ull},
      {"T", 1000000000000ull},
      {"TB", 1000000000000ull},
      {"KiB", 1ull << 10},
      {"MiB", 1ull << 20},
      {"GiB", 1ull << 30},
      {"TiB", 1ull << 40},
  };
  uint64_t mult = 0;
  for (const auto& [name, m] : kUnits) {
    if (suffix == name) mult = m;
  }
  if (mult == 0) return bad("unknown unit '" + suffix + "'");
  const unsigned __int128 bytes = whole * mult + frac * mult / frac_den;
  if (bytes > std::numeric_limits<uint64_t>::max()) return bad("too large");
  if (bytes == 0) return bad("must be positive");
  return static_cast<uint64_t>(bytes);
}

}  // namespace switchyard
