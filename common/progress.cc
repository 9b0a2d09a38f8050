#include "common/progress.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "common/log.h"

namespace switchyard {

ByteProgress::ByteProgress(std::string label, uint64_t total_bytes, bool terminal)
    : label_(std::move(label)),
      total_(total_bytes),
      on_terminal_(terminal && isatty(STDERR_FILENO) != 0),
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

void ByteProgress::set_observer(std::function<void(uint64_t, uint64_t)> observer) {
  observer_ = std::move(observer);
  if (observer_) observer_(done_, total_);
}

void ByteProgress::Add(uint64_t bytes) {
  done_ += bytes;
  if (observer_) observer_(done_, total_);
  auto now = std::chrono::steady_clock::now();
  if (on_terminal_) {
    if (now - start_ < std::chrono::seconds(1)) return;
    if (printed_ && now - last_print_ < std::chrono::milliseconds(100)) return;
  } else if (now - last_print_ < std::chrono::seconds(10)) {
    return;
  }
  last_print_ = now;
  Print(false);
}

std::string ByteProgress::Line() const {
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = secs > 0 ? done_ / secs : 0;
  std::string line = label_ + " " + FormatBytes(done_) + " / " + FormatBytes(total_) + " (" +
                     FormatBytes(rate) + "/s";
  if (done_ < total_ && rate > 0) {
    char eta[32];
    std::snprintf(eta, sizeof(eta), ", %.0f s left", (total_ - done_) / rate);
    line += eta;
  } else if (done_ >= total_) {
    char took[32];
    std::snprintf(took, sizeof(took), ", %.1f s", secs);
    line += took;
  }
  return line + ")";
}

void ByteProgress::Print(bool final_line) {
  if (on_terminal_) {
    // \033[K clears what a longer earlier line left behind.
    std::fprintf(stderr, "\r%s\033[K%s", Line().c_str(), final_line ? "\n" : "");
    std::fflush(stderr);
  } else {
    spdlog::info("{}", Line());
  }
  printed_ = true;
}

void ByteProgress::Finish() {
  if (finished_) return;
  finished_ = true;
  if (observer_) observer_(total_, total_);
  if (printed_) Print(true);
}

}  // namespace switchyard
