#include "common/progress.h"

#include <unistd.h>

#include <cstdio>

namespace switchyard {

ByteProgress::ByteProgress(std::string label, uint64_t total_bytes)
    : label_(std::move(label)),
      total_(total_bytes),
      enabled_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

ByteProgress::~ByteProgress() { Finish(); }

std::string ByteProgress::FormatBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

void ByteProgress::Add(uint64_t bytes) {
  done_ += bytes;
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (now - start_ < std::chrono::seconds(1)) return;
  if (printed_ && now - last_print_ < std::chrono::milliseconds(100)) return;
  last_print_ = now;
  Print(false);
}

void ByteProgress::Print(bool final_line) {
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = secs > 0 ? done_ / secs : 0;
  std::fprintf(stderr, "\r%s %s / %s (%s/s)%s", label_.c_str(), FormatBytes(done_).c_str(),
               FormatBytes(total_).c_str(), FormatBytes(rate).c_str(), final_line ? "\n" : "");
  std::fflush(stderr);
  printed_ = true;
}

void ByteProgress::Finish() {
  if (finished_) return;
  finished_ = true;
  if (printed_) Print(true);
}

}  // namespace switchyard
