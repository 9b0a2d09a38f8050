// Preflight over a real MPI job (1 to 4 ranks on this machine): the report rank 0 gets is
// whole and consistent, every other rank gets its own figures, and a rank that never takes
// part is named within the deadline.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>

#include "comm/mpi_communicator.h"
#include "study/preflight.h"

namespace switchyard {
namespace {

using ::testing::HasSubstr;

PreflightOptions Small() {
  return {.latency_iters = 10,
          .large_bytes = size_t{256} << 10,
          .bandwidth_iters = 2,
          .copy_bytes = size_t{8} << 20,
          .matmul_k = 256,
          .matmul_n = 512,
          .prefill_rows = 8};
}

TEST(PreflightMpi, RankZeroGetsTheWholeReport) {
  auto world = MpiCommunicator::World({.timeout = absl::Seconds(60)});
  const int n = world->size();
  std::vector<int> rounds_seen;
  auto report = RunPreflight(*world, Small(), [&](int round, int rounds) {
    EXPECT_EQ(rounds, RoundCount(n));
    rounds_seen.push_back(round);
  });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->world, n);
  EXPECT_EQ(report->transport, "mpi");
  if (world->rank() != 0) {
    ASSERT_EQ(report->ranks.size(), 1u);
    EXPECT_GT(report->ranks[0].copy_bytes_per_s, 0);
    EXPECT_TRUE(rounds_seen.empty());
    return;
  }
  EXPECT_EQ(static_cast<int>(rounds_seen.size()), RoundCount(n));
  ASSERT_EQ(static_cast<int>(report->ranks.size()), n);
  for (int s = 0; s < n; ++s) {
    const RankFigures& f = report->ranks[s];
    EXPECT_FALSE(f.host.empty());
    EXPECT_EQ(f.host, report->ranks[0].host) << "one machine";
    EXPECT_GT(f.copy_bytes_per_s, 0);
    EXPECT_GT(f.decode_weight_bytes_per_s, 0);
    EXPECT_GT(f.prefill_flops, 0);
    for (int d = 0; d < n; ++d) {
      if (s == d) {
        EXPECT_EQ(report->latency_s[s][d], 0);
        EXPECT_EQ(report->bandwidth_bytes_per_s[s][d], 0);
        continue;
      }
      EXPECT_EQ(report->ClassOf(s, d), LinkClass::kWithinNode);
      EXPECT_GT(report->latency_s[s][d], 0) << s << " -> " << d;
      EXPECT_EQ(report->latency_s[s][d], report->latency_s[d][s]);
      EXPECT_GT(report->bandwidth_bytes_per_s[s][d], 0) << s << " -> " << d;
    }
  }
  EXPECT_GT(report->seconds, 0);
  const nlohmann::json j = CalibrationJson(*report);
  EXPECT_EQ(j["world"], n);
  if (n > 1) {
    EXPECT_EQ(j["links"]["within_node"]["ordered_pairs"], n * (n - 1));
  }
  EXPECT_FALSE(j["links"].contains("between_nodes"));
  EXPECT_TRUE(ParseCalibration(j).ok());
}

// With a model, every rank times its operations and rank 0 gets them all, in the file too.
TEST(PreflightMpi, OperationsOfEveryRankReachRankZero) {
  auto world = MpiCommunicator::World({.timeout = absl::Seconds(60)});
  const int n = world->size();
  PreflightOptions o = Small();
  o.operations = {.max_rows = 4, .max_context = 32, .repeats = 1};
  auto model = LoadForOperations(std::string(SWITCHYARD_SOURCE_ROOT) + "/models/brown-moe",
                                 o.operations);
  ASSERT_TRUE(model.ok()) << model.status();
  o.operations_model = model->weights.get();
  auto report = RunPreflight(*world, o);
  ASSERT_TRUE(report.ok()) << report.status();
  if (world->rank() != 0) {
    ASSERT_TRUE(report->ranks[0].operations.has_value());
    return;
  }
  ASSERT_EQ(static_cast<int>(report->ranks.size()), n);
  for (const RankFigures& f : report->ranks) {
    ASSERT_TRUE(f.operations.has_value());
    EXPECT_EQ(f.operations->rows, (std::vector<double>{1, 2, 4}));
    EXPECT_TRUE(f.operations->Matches(model->weights->config()));
  }
  auto back = ParseCalibration(CalibrationJson(*report));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->ranks[n - 1].operations.has_value());
  EXPECT_EQ(back->ranks[n - 1].operations->expert_s, report->ranks[n - 1].operations->expert_s);
}

// The last rank never starts: rank 0 names it, within the deadline (the others wait on rank 0
// in the first barrier and time out too).
TEST(PreflightMpi, AnAbsentRankIsNamedWithinTheDeadline) {
  auto world = MpiCommunicator::World({.timeout = absl::Seconds(2)});
  auto sync = MpiCommunicator::World({.timeout = absl::Seconds(60)});
  const int n = world->size();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  if (world->rank() != n - 1) {
    const auto t0 = std::chrono::steady_clock::now();
    auto report = RunPreflight(*world, Small());
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_FALSE(report.ok());
    EXPECT_EQ(report.status().code(), absl::StatusCode::kDeadlineExceeded) << report.status();
    if (world->rank() == 0) {
      EXPECT_THAT(std::string(report.status().message()),
                  HasSubstr("(world rank(s) " + std::to_string(n - 1) + ")"));
    }
    EXPECT_GE(waited, 2.0);
    EXPECT_LT(waited, 5.0) << report.status();
  }
  // The absent rank waits here until the others have given up.
  ASSERT_TRUE(sync->Barrier().ok());
}

}  // namespace
}  // namespace switchyard
