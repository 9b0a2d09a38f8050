// HostSharedSegment in one process: two segments over one mapping stand for two ranks.
#include "comm/host_shared_segment.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "comm/job_failure.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

std::string UniqueName(const char* what) {
  static int n = 0;
  return absl::StrCat("/switchyard-test-", getpid(), "-", what, "-", n++);
}

SegmentPeers Peers(absl::Duration timeout) {
  return SegmentPeers{.group = "ep(test)", .world_ranks = {4, 7}, .timeout = timeout};
}

// Rank 0 creates, rank 1 opens the same name: each sees what the other writes.
struct Pair {
  std::unique_ptr<HostSharedSegment> a, b;
};
Pair MakePair(size_t bytes, absl::Duration timeout) {
  const std::string name = UniqueName("pair");
  const size_t total = HostSharedSegment::MappingBytes(2, bytes);
  absl::StatusOr<HostMapping> m0 = HostMapping::Create(name, total);
  EXPECT_TRUE(m0.ok()) << m0.status();
  absl::StatusOr<HostMapping> m1 = HostMapping::Open(name, total);
  EXPECT_TRUE(m1.ok()) << m1.status();
  m0->Unlink();
  Pair p;
  p.a = std::make_unique<HostSharedSegment>(*std::move(m0), 0, 2, bytes, Peers(timeout));
  p.b = std::make_unique<HostSharedSegment>(*std::move(m1), 1, 2, bytes, Peers(timeout));
  return p;
}

TEST(HostSharedSegmentTest, RanksSeeEachOthersBlocks) {
  Pair p = MakePair(1000, absl::Seconds(5));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p.a->base(1)) % 64, 0u);
  std::strcpy(p.a->base(0), "from rank 0");
  std::strcpy(p.b->base(1), "from rank 1");
  EXPECT_STREQ(p.b->base(0), "from rank 0");
  EXPECT_STREQ(p.a->base(1), "from rank 1");
  // A block is the payload asked for, after the flags: writing all of it leaves the next
  // rank's block alone.
  std::memset(p.a->base(0), 0x5a, 1000);
  EXPECT_STREQ(p.b->base(1), "from rank 1");
}

TEST(HostSharedSegmentTest, WaitAllReturnsOnceEveryPeerPosted) {
  Pair p = MakePair(64, absl::Seconds(5));
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    std::strcpy(p.b->base(1), "ready");
    p.b->Post(1, 3);
  });
  ASSERT_TRUE(p.a->WaitAll(1, 3, "Dispatch").ok());
  EXPECT_STREQ(p.a->base(1), "ready");  // what was written before the post is visible
  late.join();
  // Flags only grow: an older value is already reached; slots are independent.
  EXPECT_TRUE(p.a->WaitAll(1, 2, "Dispatch").ok());
  p.b->Post(0, 1);
  EXPECT_TRUE(p.a->WaitAll(0, 1, "Combine").ok());
}

TEST(HostSharedSegmentTest, AnAbsentPeerIsNamedAtTheDeadline) {
  Pair p = MakePair(64, absl::Milliseconds(200));
  const auto t0 = std::chrono::steady_clock::now();
  const absl::Status st = p.a->WaitAll(0, 1, "Combine");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(st.message()),
              testing::AllOf(testing::HasSubstr("Combine on group ep(test)"),
                             testing::HasSubstr("rank(s) 1 (world rank(s) 7) did not arrive"),
                             testing::HasSubstr("waiting: rank 0, world rank 4")));
  EXPECT_GE(s, 0.2);
  EXPECT_LT(s, 5.0);
  // Unusable afterwards, like its communicator.
  EXPECT_EQ(p.a->WaitAll(0, 0, "Combine").code(), absl::StatusCode::kFailedPrecondition);
}

TEST(HostSharedSegmentTest, TheJobsFailureEndsAWaitAtOnce) {
  Pair p = MakePair(64, absl::Seconds(30));
  std::thread fail([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    DeclareJobFailure(absl::UnavailableError("rank 1 (pid 4711) was killed"));
  });
  const absl::Status st = p.a->WaitAll(0, 1, "Dispatch");
  fail.join();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(st.message()), testing::HasSubstr("was killed"));
  ResetJobFailureForTest();
}

// Moving a mapping onto a live one releases the old one (its name included) and keeps the
// new one's memory.
TEST(HostSharedSegmentTest, MovingMappingsKeepsOneOwnerPerMapping) {
  const std::string first = UniqueName("move-first"), second = UniqueName("move-second");
  absl::StatusOr<HostMapping> a = HostMapping::Create(first, 4096);
  absl::StatusOr<HostMapping> b = HostMapping::Create(second, 4096);
  ASSERT_TRUE(a.ok() && b.ok());
  std::strcpy(b->data(), "second");
  *a = *std::move(b);  // a's old mapping is unmapped and its name removed
  EXPECT_STREQ(a->data(), "second");
  EXPECT_FALSE(HostMapping::Open(first, 4096).ok());
  EXPECT_TRUE(HostMapping::Open(second, 4096).ok()) << "still owned, not yet unlinked";
  HostMapping moved(*std::move(a));
  EXPECT_STREQ(moved.data(), "second");
  EXPECT_EQ(HostMapping::Create(second, 4096).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(HostSharedSegmentTest, NamesAreExclusiveAndMissingOnesAreErrors) {
  const std::string name = UniqueName("excl");
  absl::StatusOr<HostMapping> m = HostMapping::Create(name, 4096);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE(HostMapping::Create(name, 4096).ok());
  EXPECT_FALSE(HostMapping::Open(name, 8192).ok()) << "smaller than asked";
  m->Unlink();
  const absl::Status gone = HostMapping::Open(name, 4096).status();
  EXPECT_EQ(gone.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(gone.message()), testing::HasSubstr(name));
}

// More than /dev/shm holds is an error at creation, not a SIGBUS on first touch.
TEST(HostSharedSegmentTest, AMappingTheHostCannotHoldIsRefused) {
  const absl::Status st = HostMapping::Create(UniqueName("huge"), size_t{1} << 50).status();
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), testing::HasSubstr("/switchyard-test-"));
}

}  // namespace
}  // namespace switchyard
