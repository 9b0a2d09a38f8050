#include "common/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>

namespace switchyard {

namespace {
std::chrono::steady_clock::time_point StartTime() {
  static const std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  return start;
}
}  // namespace

double SecondsSinceStart() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - StartTime()).count();
}

void InitLogging(int rank) {
  StartTime();
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>("switchyard",
                                              std::make_shared<spdlog::sinks::stderr_sink_mt>());
    spdlog::set_default_logger(l);
    return l;
  }();
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e rank " + std::to_string(rank) + " %l: %v");
  spdlog::level::level_enum level = spdlog::level::info;
  if (const char* env = std::getenv("SWITCHYARD_LOG_LEVEL")) {
    level = spdlog::level::from_str(env);  // unknown names mean off in spdlog: keep info
    if (level == spdlog::level::off && std::string(env) != "off") level = spdlog::level::info;
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);  // stderr is unbuffered; lines appear as they happen
}

}  // namespace switchyard
