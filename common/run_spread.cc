#include "common/run_spread.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace switchyard {

std::string RunSpreadWarning(std::vector<double> rates, const std::string& unit) {
  if (rates.size() < 2) return "";
  std::sort(rates.begin(), rates.end());
  const double worst = rates.front(), best = rates.back(), median = rates[rates.size() / 2];
  if (!(best > 1.5 * worst || best > 1.25 * median)) return "";
  return absl::StrFormat(
      "the %d runs spread widely: %.1f (worst), %.1f (median), %.1f (best) %s; something else "
      "competes for the cores (other processes, or more threads than cores: see the threads "
      "line), so repeat on a quiet machine before trusting the median",
      rates.size(), worst, median, best, unit);
}

}  // namespace switchyard
