// MeteredCommunicator: bytes per peer and time inside operations, over a scripted inner
// communicator (no MPI).
#include "comm/metered_communicator.h"

#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace switchyard {
namespace {

using std::chrono::milliseconds;

// Rank 1 of 3; every operation takes `op_time`; AllToAllVFilled fills every other peer.
class ScriptedComm final : public Communicator {
 public:
  explicit ScriptedComm(milliseconds op_time) : op_time_(op_time) {}
  int rank() const override { return 1; }
  int size() const override { return 3; }
  const std::string& name() const override { return name_; }
  absl::Status AllToAllV(const void*, std::span<const size_t>, std::span<const size_t>, void*,
                         std::span<const size_t>, std::span<const size_t>) override {
    return Wait();
  }
  absl::Status AllToAllVFilled(const std::function<void(int)>& fill, const void*,
                               std::span<const size_t>, std::span<const size_t>, void*,
                               std::span<const size_t>, std::span<const size_t>) override {
    fill(0);
    fill(2);
    return Wait();
  }
  absl::Status AllToAll(const void*, void*, size_t) override { return Wait(); }
  absl::Status Send(const void*, size_t, int, int) override { return Wait(); }
  absl::Status Recv(void*, size_t, int, int) override { return Wait(); }
  absl::Status Broadcast(void*, size_t, int) override { return Wait(); }
  absl::Status Gather(const void*, size_t, void*, int) override { return Wait(); }
  absl::Status Barrier() override { return absl::DeadlineExceededError("peer 2 missing"); }

 private:
  absl::Status Wait() {
    std::this_thread::sleep_for(op_time_);
    return absl::OkStatus();
  }
  milliseconds op_time_;
  std::string name_ = "scripted";
};

TEST(MeteredCommunicator, CountsBytesSentToEachPeerButNotToItself) {
  ScriptedComm inner(milliseconds(0));
  MeteredCommunicator m(&inner);
  EXPECT_EQ(m.rank(), 1);
  EXPECT_EQ(m.size(), 3);
  EXPECT_EQ(m.name(), "scripted");
  const std::vector<size_t> counts = {10, 20, 30}, offsets = {0, 10, 30};
  ASSERT_TRUE(m.AllToAllV(nullptr, counts, offsets, nullptr, counts, offsets).ok());
  ASSERT_TRUE(m.AllToAll(nullptr, nullptr, 5).ok());
  ASSERT_TRUE(m.Send(nullptr, 7, 2, 0).ok());
  ASSERT_TRUE(m.Recv(nullptr, 100, 0, 0).ok());
  ASSERT_TRUE(m.Gather(nullptr, 3, nullptr, 0).ok());
  ASSERT_TRUE(m.Broadcast(nullptr, 50, 0).ok());  // not the root: sends nothing
  EXPECT_EQ(m.meter().sent_bytes, (std::vector<uint64_t>{10 + 5 + 3, 0, 30 + 5 + 7}));
}

TEST(MeteredCommunicator, ErrorsPassThrough) {
  ScriptedComm inner(milliseconds(0));
  MeteredCommunicator m(&inner);
  absl::Status s = m.Barrier();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(s.message(), "peer 2 missing");
}

// Time inside operations is waiting; time spent filling send blocks is the caller's compute
// and is taken out. Bounds are generous: only the attribution is tested, not speed.
TEST(MeteredCommunicator, WaitTimeExcludesFillingTheSendBlocks) {
  ScriptedComm inner(milliseconds(30));
  MeteredCommunicator m(&inner);
  const std::vector<size_t> counts = {1, 0, 1}, offsets = {0, 1, 1};
  int filled = 0;
  auto fill = [&filled](int) {
    ++filled;
    std::this_thread::sleep_for(milliseconds(150));
  };
  ASSERT_TRUE(m.AllToAllVFilled(fill, nullptr, counts, offsets, nullptr, counts, offsets).ok());
  EXPECT_EQ(filled, 2);
  EXPECT_EQ(m.meter().sent_bytes, (std::vector<uint64_t>{1, 0, 1}));
  const double wait_ms = m.meter().wait_ns / 1e6;
  EXPECT_GE(wait_ms, 30);
  EXPECT_LT(wait_ms, 30 + 150);  // the 300 ms of filling are not waiting
}

}  // namespace
}  // namespace switchyard
