#include "comm/job_failure.h"

#include <atomic>
#include <mutex>

namespace switchyard {
namespace {

std::atomic<bool> g_failed{false};
std::atomic<int> g_waiting_on{-1};
std::mutex g_mu;
absl::Status& FailureSlot() {
  static absl::Status* status = new absl::Status();  // never destroyed: read at exit
  return *status;
}

}  // namespace

void DeclareJobFailure(const absl::Status& status) {
  if (status.ok()) return;
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_failed.load(std::memory_order_relaxed)) return;
  FailureSlot() = status;
  g_failed.store(true, std::memory_order_release);
}

bool JobFailed() { return g_failed.load(std::memory_order_relaxed); }

absl::Status JobFailure() {
  if (!g_failed.load(std::memory_order_acquire)) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(g_mu);
  return FailureSlot();
}

void EnterWait(int world_peer) { g_waiting_on.store(world_peer, std::memory_order_relaxed); }
void LeaveWait() { g_waiting_on.store(-1, std::memory_order_relaxed); }
int WaitingOn() { return g_waiting_on.load(std::memory_order_relaxed); }

void ResetJobFailureForTest() {
  std::lock_guard<std::mutex> lock(g_mu);
  FailureSlot() = absl::OkStatus();
  g_failed.store(false, std::memory_order_release);
}

}  // namespace switchyard
