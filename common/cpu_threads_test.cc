#include "common/cpu_threads.h"

#include <omp.h>

#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using testing::ElementsAre;
using testing::HasSubstr;

std::vector<int> Cpus(int first, int count) {
  std::vector<int> v;
  for (int i = 0; i < count; ++i) v.push_back(first + i);
  return v;
}

TEST(ChooseThreads, UnboundRanksDivideTheNode) {
  NodeThreads t = ChooseThreads(nullptr, {{0, Cpus(0, 16)}, {1, Cpus(0, 16)}});
  EXPECT_THAT(t.threads, ElementsAre(8, 8));
  EXPECT_EQ(t.node_cpus, 16);
  EXPECT_EQ(t.oversubscribed, "");
  EXPECT_THAT(t.summary, HasSubstr("2 ranks (0-1) on 16 CPUs (0-15): 8 threads each"));
}

TEST(ChooseThreads, MoreRanksThanCoresGetOneThreadAndAWarning) {
  // The quick start: 4 ranks on a 2-core machine, not bound.
  std::vector<RankCpus> node;
  for (int r = 0; r < 4; ++r) node.push_back({r, Cpus(0, 2)});
  NodeThreads t = ChooseThreads(nullptr, node);
  EXPECT_THAT(t.threads, ElementsAre(1, 1, 1, 1));
  EXPECT_THAT(t.oversubscribed, HasSubstr("4 ranks (0-3) run 4 threads on 2 CPUs"));
}

TEST(ChooseThreads, BoundRanksUseTheirOwnCores) {
  NodeThreads t = ChooseThreads(nullptr, {{4, Cpus(0, 4)}, {5, Cpus(4, 4)}, {6, Cpus(8, 2)}});
  EXPECT_THAT(t.threads, ElementsAre(4, 4, 2));
  EXPECT_THAT(t.summary, HasSubstr("launcher bound"));
  EXPECT_EQ(t.oversubscribed, "");
}

TEST(ChooseThreads, RanksBoundToASocketShareIt) {
  // Two sockets of 8 CPUs, two ranks on each (Open MPI's --bind-to socket).
  NodeThreads t = ChooseThreads(
      nullptr, {{0, Cpus(0, 8)}, {1, Cpus(0, 8)}, {2, Cpus(8, 8)}, {3, Cpus(8, 8)}});
  EXPECT_THAT(t.threads, ElementsAre(4, 4, 4, 4));
}

TEST(ChooseThreads, ExplicitOmpNumThreadsWins) {
  NodeThreads t = ChooseThreads("3", {{0, Cpus(0, 16)}, {1, Cpus(0, 16)}});
  EXPECT_TRUE(t.explicit_env);
  EXPECT_THAT(t.threads, ElementsAre(3, 3));
  EXPECT_THAT(t.summary, HasSubstr("OMP_NUM_THREADS=3"));
  NodeThreads over = ChooseThreads("4", {{0, Cpus(0, 2)}, {1, Cpus(0, 2)}});
  EXPECT_THAT(over.oversubscribed, HasSubstr("8 threads on 2 CPUs"));
  EXPECT_THAT(over.oversubscribed, HasSubstr("lower OMP_NUM_THREADS"));
  // A value that is not a positive count is ignored, as OpenMP would.
  EXPECT_FALSE(ChooseThreads("zero", {{0, Cpus(0, 2)}}).explicit_env);
}

TEST(ChooseThreads, SingleProcessUsesItsAffinity) {
  NodeThreads t = ChooseThreads(nullptr, {{0, Cpus(2, 3)}});
  EXPECT_THAT(t.threads, ElementsAre(3));
  EXPECT_THAT(t.summary, HasSubstr("rank 0 on 3 CPUs (2-4): 3 threads"));
}

TEST(ChooseThreads, UnevenSharingRoundsDown) {
  // Rank 0 alone on CPU 0, rank 0 and 1 share CPUs 1-2: 1 + 1/2 + 1/2 = 2 and 1.
  NodeThreads t = ChooseThreads(nullptr, {{0, {0, 1, 2}}, {1, {1, 2}}});
  EXPECT_THAT(t.threads, ElementsAre(2, 1));
  EXPECT_THAT(t.summary, HasSubstr("rank 0: 2, rank 1: 1"));
}

TEST(OwnCpus, ListsAtLeastOneCpu) { EXPECT_FALSE(OwnCpus().empty()); }

// OpenMP keeps the thread count per thread: a thread started after the main thread chose its
// count begins at the default; AdoptStepThreads gives it the recorded one, parallel regions
// included.
TEST(StepThreads, ALaterThreadAdoptsTheRecordedCount) {
  int fresh = 0;
  std::thread([&] { fresh = omp_get_max_threads(); }).join();
  const int before = omp_get_max_threads(), recorded = StepThreads();
  const int want = fresh + 1;
  SetStepThreads(want);
  EXPECT_EQ(StepThreads(), want);
  EXPECT_EQ(omp_get_max_threads(), want);
  int without = 0, with = 0, team = 0;
  std::thread([&] {
    without = omp_get_max_threads();
    AdoptStepThreads();
    with = omp_get_max_threads();
#pragma omp parallel
    {
#pragma omp single
      team = omp_get_num_threads();
    }
  }).join();
  omp_set_num_threads(before);
  SetStepThreads(recorded);  // 0: no record, as before the test
  EXPECT_EQ(StepThreads(), recorded);
  EXPECT_EQ(without, fresh);
  EXPECT_EQ(with, want);
  // The team has the count asked for unless OpenMP may give fewer (OMP_DYNAMIC, a limit).
  if (!omp_get_dynamic() && omp_get_thread_limit() >= want) {
    EXPECT_EQ(team, want);
  }
}

}  // namespace
}  // namespace switchyard
