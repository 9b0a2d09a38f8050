// The liveness channel set up over a real MPI job, and a declared failure releasing a
// communication wait at once (instead of at its deadline).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "absl/time/clock.h"
#include "comm/job_failure.h"
#include "comm/liveness.h"
#include "comm/mpi_communicator.h"

namespace switchyard {
namespace {

using ::testing::HasSubstr;

TEST(LivenessMpi, StartsOverTheWorldAndEndsInOrder) {
  auto world = MpiCommunicator::World({.timeout = absl::Seconds(30)});
  ProgressMeter meter;
  LivenessOptions o;
  o.timeout = absl::Seconds(3);
  o.interval = absl::Milliseconds(50);
  o.exit_process = false;
  auto live = Liveness::Start(*world, &meter, o);
  ASSERT_TRUE(live.ok()) << live.status();
  for (int i = 0; i < 45; ++i) {  // 3.4 s of operations, longer than the timeout
    meter.Begin();
    ASSERT_TRUE(world->Barrier().ok());
    meter.End();
    absl::SleepFor(absl::Milliseconds(75));
  }
  EXPECT_TRUE((*live)->failure().ok()) << (*live)->failure();
  if (world->rank() == 0) (*live)->Stop();  // goodbye first, as serve's shutdown does
  ASSERT_TRUE(world->Barrier().ok());
  (*live)->Stop();
  live->reset();
  EXPECT_FALSE(JobFailed());
}

TEST(LivenessMpi, ADeclaredFailureReleasesAWaitAtOnce) {
  auto world = MpiCommunicator::World({.timeout = absl::Seconds(60)});
  ASSERT_TRUE(world->Barrier().ok());
  if (world->size() >= 2 && world->rank() == 1) {
    ResetJobFailureForTest();
    std::thread declarer([] {
      absl::SleepFor(absl::Milliseconds(200));
      DeclareJobFailure(absl::UnavailableError("rank 9 (pid 1 on elsewhere) was killed"));
    });
    char byte = 0;
    const absl::Time start = absl::Now();
    absl::Status st = world->Recv(&byte, 1, 0, 7);  // rank 0 never sends it
    declarer.join();
    EXPECT_LT(absl::Now() - start, absl::Seconds(2));
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(st.message(), HasSubstr("rank 9 (pid 1 on elsewhere) was killed"));
    EXPECT_FALSE(world->Barrier().ok());  // the communicator is done for
    ResetJobFailureForTest();
  }
  auto fresh = MpiCommunicator::World({.timeout = absl::Seconds(60)});
  EXPECT_TRUE(fresh->Barrier().ok());
}

}  // namespace
}  // namespace switchyard
