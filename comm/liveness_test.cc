// The liveness channel between "ranks" that are Liveness objects in one process (loopback
// TCP, as between processes): what each kind of failure is reported as, and what is not a
// failure (a long operation, an orderly goodbye).
#include "comm/liveness.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "comm/job_failure.h"

namespace switchyard {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr int kWorld = 4;

class LivenessTest : public ::testing::Test {
 protected:
  void SetUp() override { ResetJobFailureForTest(); }
  void TearDown() override {
    live_.clear();
    ResetJobFailureForTest();
  }

  // Ranks 0..kWorld-1 on loopback; timeout 2 s (a loaded CI machine may pause a thread for
  // a good fraction of a second), beats every 50 ms, nothing exits. Each rank's "waiting on"
  // is waiting_[rank].
  void StartJob(LivenessOptions o = {}) {
    o.timeout = kTimeout;
    o.interval = absl::Milliseconds(50);
    o.connect_timeout = absl::Seconds(5);
    o.abort_delay = absl::Milliseconds(200);
    o.exit_process = false;
    options_ = o;
    live_.resize(kWorld);
    auto with_waits = [&](int r) {
      LivenessOptions mine = o;
      mine.waiting_on = [this, r] { return waiting_[r].load(); };
      return mine;
    };
    auto zero = Liveness::Listen(kWorld, "127.0.0.1", &meters_[0], with_waits(0));
    ASSERT_TRUE(zero.ok()) << zero.status();
    live_[0] = std::move(zero).value();
    for (int r = 1; r < kWorld; ++r) {
      auto w = Liveness::Connect(r, kWorld, live_[0]->endpoint(), &meters_[r], with_waits(r));
      ASSERT_TRUE(w.ok()) << w.status();
      live_[r] = std::move(w).value();
    }
    ASSERT_TRUE(live_[0]->AcceptPeers().ok());
  }

  // Ranks `ranks` (default: every rank) each run one short operation.
  void Operation(std::initializer_list<int> ranks = {0, 1, 2, 3}) {
    for (int r : ranks) {
      meters_[r].Begin();
      meters_[r].End();
    }
  }

  // Waits up to `limit` for rank `r` to see a failure; returns how long it took.
  absl::Duration AwaitFailure(int r, absl::Duration limit = absl::Seconds(5)) {
    const absl::Time start = absl::Now();
    while (live_[r]->failure().ok() && absl::Now() - start < limit) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    return absl::Now() - start;
  }

  static constexpr absl::Duration kTimeout = absl::Seconds(2);
  ProgressMeter meters_[kWorld];
  std::atomic<int> waiting_[kWorld] = {-1, -1, -1, -1};
  std::vector<std::unique_ptr<Liveness>> live_;
  LivenessOptions options_;
};

TEST_F(LivenessTest, AHealthyJobStaysHealthyAndEndsInOrder) {
  StartJob();
  for (int r = 0; r < kWorld; ++r) live_[r]->SetLoadProgress(r * 10, 100);
  const absl::Time until = absl::Now() + 2 * kTimeout;
  while (absl::Now() < until) {
    Operation();
    absl::SleepFor(absl::Milliseconds(20));
  }
  for (int r = 0; r < kWorld; ++r) EXPECT_TRUE(live_[r]->failure().ok()) << r;
  EXPECT_EQ(live_[0]->JobLoadProgress(), std::make_pair(uint64_t{60}, uint64_t{400}));
  EXPECT_TRUE(live_[0]->ConfirmAlive(absl::Seconds(1)).ok());
  // Orderly end: rank 0 says goodbye and goes; the workers, still watching, take its closed
  // connection (and its silence, past the timeout) as the end, not as a failure.
  live_[0]->Stop();
  EXPECT_TRUE(live_[0]->failure().ok()) << live_[0]->failure();
  live_[0].reset();
  absl::SleepFor(kTimeout + absl::Milliseconds(500));
  for (int r = 1; r < kWorld; ++r) EXPECT_TRUE(live_[r]->failure().ok()) << live_[r]->failure();
  EXPECT_FALSE(JobFailed());
}

TEST_F(LivenessTest, AKilledWorkerIsNamedAtOnceAndTheOthersAreToldWhy) {
  StartJob();
  live_[2].reset();  // its socket closes without a goodbye, as when the process is killed
  EXPECT_LT(AwaitFailure(0), kTimeout);
  EXPECT_THAT(live_[0]->failure().message(),
              AllOf(HasSubstr("rank 2 (pid "), HasSubstr("without a goodbye")));
  EXPECT_EQ(live_[0]->failure().code(), absl::StatusCode::kUnavailable);
  // Every communication wait of the process is released: the job's failure is declared just
  // after the failure is recorded (and the front end told), on the watching thread, so this
  // thread may see the record a moment before the declaration.
  const absl::Time until = absl::Now() + absl::Seconds(2);
  while (!JobFailed() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_TRUE(JobFailed());
  // After abort_delay rank 0 tells the live workers, with its reason.
  AwaitFailure(1);
  EXPECT_THAT(live_[1]->failure().message(),
              AllOf(HasSubstr("the job failed (rank 0:"), HasSubstr("rank 2 (pid ")));
  AwaitFailure(3);
  EXPECT_FALSE(live_[3]->failure().ok());
}

TEST_F(LivenessTest, AStoppedWorkerIsNamedAfterTheTimeout) {
  StartJob();
  live_[3]->FreezeForTest();  // no beats, as under SIGSTOP
  const absl::Duration took = AwaitFailure(0);
  EXPECT_GE(took, kTimeout - absl::Milliseconds(200));
  EXPECT_LT(took, 2 * kTimeout);
  EXPECT_THAT(live_[0]->failure().message(),
              AllOf(HasSubstr("rank 3 (pid "), HasSubstr("has not answered for")));
}

TEST_F(LivenessTest, AWorkerWhoseMainThreadHangsIsNamedByTheProgressCheck) {
  StartJob();
  Operation();
  meters_[2].Begin();  // rank 2 starts the next operation and never ends it
  Operation({1, 3});
  meters_[0].Begin();  // rank 0 waits for rank 2's results (the last stage, say)
  waiting_[0] = 2;
  // Rank 2's liveness thread keeps beating: only the progress check can tell. Rank 0 is
  // behind too, but it is waiting for rank 2: the victim is not named.
  const absl::Duration took = AwaitFailure(0);
  EXPECT_GE(took, kTimeout - absl::Milliseconds(200));
  EXPECT_LT(took, 2 * kTimeout);
  EXPECT_THAT(live_[0]->failure().message(),
              AllOf(HasSubstr("rank 2 (pid "), HasSubstr("is stuck"),
                    HasSubstr("has not finished operation 2")));
}

TEST_F(LivenessTest, TheRankOthersWaitForIsNamedWhenItFinishedAndHungAfter) {
  StartJob();
  Operation();
  Operation({1, 2, 3});  // rank 2 finished its part, then hung before sending it on
  meters_[0].Begin();
  waiting_[0] = 2;
  AwaitFailure(0);
  EXPECT_THAT(live_[0]->failure().message(),
              AllOf(HasSubstr("rank 2 (pid "), HasSubstr("is stuck: rank 0 (pid "),
                    HasSubstr("has waited for it in operation 2")));
}

TEST_F(LivenessTest, RanksThatAreAllWaitingAreLeftToTheCommunicationDeadline) {
  StartJob();
  Operation();
  Operation({2, 3});
  meters_[0].Begin();  // 0 and 1 wait for each other: no liveness signal can say who hangs
  meters_[1].Begin();
  waiting_[0] = 1;
  waiting_[1] = 0;
  absl::SleepFor(2 * kTimeout);
  for (int r = 0; r < kWorld; ++r) EXPECT_TRUE(live_[r]->failure().ok()) << r;
}

TEST_F(LivenessTest, ALongOperationFinishedAtDifferentTimesIsNotAFailure) {
  // Four pipeline stages: an early stage finishes a one-sequence step after a quarter of it,
  // the others (PP-1)/PP of it later. Here rank 1 finishes after 1 s, the rest 2.5 s later:
  // longer than the timeout and than twice rank 1's duration, within 2 x PP x it.
  LivenessOptions o;
  o.pipeline_stages = 4;
  StartJob(o);
  for (int r = 0; r < kWorld; ++r) meters_[r].Begin();
  absl::SleepFor(absl::Seconds(1));
  meters_[1].End();
  absl::SleepFor(absl::Milliseconds(2500));
  for (int r : {0, 2, 3}) meters_[r].End();
  absl::SleepFor(absl::Milliseconds(300));
  for (int r = 0; r < kWorld; ++r) EXPECT_TRUE(live_[r]->failure().ok()) << r;
}

TEST_F(LivenessTest, AWorkerReportsWhyItExits) {
  StartJob();
  live_[1]->ReportExit(absl::InternalError("cudaMemcpy: an illegal memory access"));
  AwaitFailure(0);
  EXPECT_THAT(live_[0]->failure().message(),
              AllOf(HasSubstr("rank 1 (pid "), HasSubstr("failed: cudaMemcpy: an illegal")));
}

TEST_F(LivenessTest, WorkersNoticeAKilledRankZero) {
  StartJob();
  live_[0].reset();
  for (int r = 1; r < kWorld; ++r) {
    EXPECT_LT(AwaitFailure(r), kTimeout) << r;
    EXPECT_THAT(live_[r]->failure().message(),
                AllOf(HasSubstr("rank 0 (pid "), HasSubstr("without a goodbye")));
  }
}

TEST_F(LivenessTest, WorkersNoticeAStoppedRankZero) {
  StartJob();
  // Until rank 0's first beat a worker allows the connect timeout (rank 0 beats only once
  // every rank is connected): let the first beats arrive.
  absl::SleepFor(absl::Milliseconds(300));
  live_[0]->FreezeForTest();
  const absl::Duration took = AwaitFailure(1);
  EXPECT_GE(took, kTimeout - absl::Milliseconds(200));
  EXPECT_LT(took, 2 * kTimeout);
  EXPECT_THAT(live_[1]->failure().message(),
              AllOf(HasSubstr("rank 0 (pid "), HasSubstr("has not answered")));
}

TEST_F(LivenessTest, RankZeroWhoseSchedulerStopsIssuingOperationsIsStuck) {
  StartJob();
  live_[0]->ExpectOperationsEvery(absl::Milliseconds(200));
  Operation();
  const absl::Duration took = AwaitFailure(0);
  EXPECT_GE(took, kTimeout);
  EXPECT_LT(took, 2 * kTimeout);
  EXPECT_THAT(live_[0]->failure().message(),
              AllOf(HasSubstr("rank 0 (pid "), HasSubstr("started no operation")));
}

TEST_F(LivenessTest, AConnectionWithoutTheJobTokenIsRefused) {
  LivenessOptions o;
  o.connect_timeout = absl::Milliseconds(700);
  o.exit_process = false;
  auto zero = Liveness::Listen(2, "127.0.0.1", nullptr, o);
  ASSERT_TRUE(zero.ok());
  Liveness::Endpoint wrong = (*zero)->endpoint();
  wrong.token = "not-the-token";
  auto intruder = Liveness::Connect(1, 2, wrong, nullptr, o);
  ASSERT_TRUE(intruder.ok());  // connecting works; being counted as rank 1 does not
  absl::Status st = (*zero)->AcceptPeers();
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(st.message(), AllOf(HasSubstr("rank(s) 1 did not connect"), HasSubstr("127.0.0.1:")));
}

TEST_F(LivenessTest, ConnectNamesAnAddressNobodyListensOn) {
  LivenessOptions o;
  o.connect_timeout = absl::Milliseconds(300);
  o.exit_process = false;
  auto w = Liveness::Connect(3, 4, {.host = "127.0.0.1", .port = 1, .token = "x"}, nullptr, o);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(),
              AllOf(HasSubstr("rank 3 cannot reach rank 0 at 127.0.0.1:1"), HasSubstr("refused")));
}

}  // namespace
}  // namespace switchyard
