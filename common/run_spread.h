// Whether repeated benchmark runs agree well enough to report their median.
//
//   std::string warning = RunSpreadWarning(rates, "tokens/s");
//   if (!warning.empty()) spdlog::warn("{}", warning);
#pragma once

#include <string>
#include <vector>

namespace switchyard {

// Empty when the runs agree; otherwise a sentence saying how widely they spread (worst,
// median, best) and what usually causes it. Runs spread widely when the best is more than
// 1.5x the worst or more than 1.25x the median. `rates`: one figure per run, any order.
std::string RunSpreadWarning(std::vector<double> rates, const std::string& unit);

}  // namespace switchyard
