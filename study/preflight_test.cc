#include "study/preflight.h"

#include <set>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::SizeIs;

TEST(PreflightScheduleTest, EveryPairMeetsOnceAndPartnersAgree) {
  for (int n = 1; n <= 17; ++n) {
    std::set<std::pair<int, int>> met;
    for (int r = 0; r < RoundCount(n); ++r) {
      int idle = 0;
      for (int x = 0; x < n; ++x) {
        const int p = PartnerInRound(x, r, n);
        if (p < 0) {
          ++idle;
          continue;
        }
        ASSERT_NE(p, x) << "n " << n << " round " << r;
        ASSERT_LT(p, n);
        ASSERT_EQ(PartnerInRound(p, r, n), x) << "n " << n << " round " << r << " rank " << x;
        if (x < p) {
          EXPECT_TRUE(met.insert({x, p}).second) << "pair met twice, n " << n;
        }
      }
      EXPECT_EQ(idle, n % 2) << "n " << n << " round " << r;
    }
    EXPECT_EQ(met.size(), static_cast<size_t>(n * (n - 1) / 2)) << "n " << n;
    EXPECT_EQ(RoundCount(n), n <= 1 ? 0 : (n % 2 == 0 ? n - 1 : n));
  }
}

// A report of `hosts.size()` ranks with uniform figures: 20 GB/s and 2 us within a host,
// 5 GB/s and 10 us between hosts, 10 GB/s copy, 8 GB/s decode weights, 100 GFLOP/s.
PreflightReport Uniform(const std::vector<std::string>& hosts) {
  PreflightReport r;
  r.transport = "mpi";
  r.device = "cpu";
  r.world = static_cast<int>(hosts.size());
  for (const std::string& h : hosts) r.ranks.push_back({h, 10e9, 8e9, 100e9});
  r.latency_s.assign(r.world, std::vector<double>(r.world, 0));
  r.bandwidth_bytes_per_s = r.latency_s;
  for (int s = 0; s < r.world; ++s) {
    for (int d = 0; d < r.world; ++d) {
      if (s == d) continue;
      const bool same = hosts[s] == hosts[d];
      r.bandwidth_bytes_per_s[s][d] = same ? 20e9 : 5e9;
      r.latency_s[s][d] = same ? 2e-6 : 10e-6;
    }
  }
  return r;
}

// Three nodes of four ranks: 0-3 on node01, 4-7 on node02, 8-11 on node07.
std::vector<std::string> ThreeNodes() {
  return {"node01", "node01", "node01", "node01", "node02", "node02",
          "node02", "node02", "node07", "node07", "node07", "node07"};
}

TEST(PreflightOutliersTest, UniformFiguresHaveNoFindings) {
  EXPECT_THAT(FindOutliers(Uniform(ThreeNodes())), IsEmpty());
}

TEST(PreflightOutliersTest, ASlowNicIsNamedByItsHost) {
  PreflightReport r = Uniform(ThreeNodes());
  // Rank 9 (node07) sends and receives at 0.6 GB/s to and from every other node.
  for (int p = 0; p < 8; ++p) r.bandwidth_bytes_per_s[9][p] = r.bandwidth_bytes_per_s[p][9] = 0.6e9;
  const std::vector<PreflightFinding> f = FindOutliers(r);
  ASSERT_THAT(f, SizeIs(16));
  for (const PreflightFinding& x : f) {
    EXPECT_EQ(x.kind, "bandwidth");
    EXPECT_TRUE(x.src == 9 || x.dst == 9);
    EXPECT_THAT(x.message, HasSubstr("check the NIC of node07 (rank 9 is on 8 of the 8 slow links)"));
  }
  EXPECT_THAT(f[0].message,
              HasSubstr("rank 0 -> rank 9: 0.60 GB/s, 8.3x below the median of its link class "
                        "(between nodes, 5.00 GB/s)"));
}

TEST(PreflightOutliersTest, OneSlowLinkNamesBothHosts) {
  PreflightReport r = Uniform(ThreeNodes());
  r.bandwidth_bytes_per_s[5][10] = 1e9;
  const std::vector<PreflightFinding> f = FindOutliers(r);
  ASSERT_THAT(f, SizeIs(1));
  EXPECT_EQ(f[0].src, 5);
  EXPECT_EQ(f[0].dst, 10);
  EXPECT_THAT(f[0].message, HasSubstr("check the link between node02 and node07"));
}

TEST(PreflightOutliersTest, OneLinkSlowBothWaysBlamesNoNic) {
  PreflightReport r = Uniform(ThreeNodes());
  r.bandwidth_bytes_per_s[5][10] = r.bandwidth_bytes_per_s[10][5] = 1e9;
  r.latency_s[5][10] = r.latency_s[10][5] = 100e-6;
  const std::vector<PreflightFinding> f = FindOutliers(r);
  ASSERT_THAT(f, SizeIs(3));
  EXPECT_THAT(f[0].message, HasSubstr("rank 5 -> rank 10: 1.00 GB/s"));
  EXPECT_THAT(f[1].message, HasSubstr("rank 10 -> rank 5: 1.00 GB/s"));
  EXPECT_THAT(f[2].message, HasSubstr("rank 5 <-> rank 10: latency 100.0 us"));
  EXPECT_THAT(f[0].message, HasSubstr("check the link between node02 and node07"));
  EXPECT_THAT(f[1].message, HasSubstr("check the link between node07 and node02"));
  for (const PreflightFinding& x : f) EXPECT_THAT(x.message, Not(HasSubstr("NIC")));
}

TEST(PreflightOutliersTest, LatencyWithinANodeAndSlowRanks) {
  PreflightReport r = Uniform(ThreeNodes());
  r.latency_s[1][2] = r.latency_s[2][1] = 50e-6;  // 25x the 2 us of its class
  r.ranks[6].copy_bytes_per_s = 2e9;               // 5x below
  r.ranks[3].prefill_flops = 10e9;                 // 10x below
  r.ranks[4].decode_weight_bytes_per_s = 4e9;      // 2x: within the factor of 3
  const std::vector<PreflightFinding> f = FindOutliers(r);
  ASSERT_THAT(f, SizeIs(3));
  EXPECT_EQ(f[0].kind, "latency");
  EXPECT_THAT(f[0].message, HasSubstr("rank 1 <-> rank 2: latency 50.0 us, 25.0x above the "
                                      "median of its link class (within a node, 2.0 us)"));
  EXPECT_EQ(f[1].kind, "copy");
  EXPECT_THAT(f[1].message, HasSubstr("rank 6 on node02: memory copy 2.00 GB/s, 5.0x below the "
                                      "median of the job's ranks (10.00 GB/s)"));
  EXPECT_EQ(f[2].kind, "matmul");
  EXPECT_THAT(f[2].message, HasSubstr("rank 3 on node01: prefill multiply 10.0 GFLOP/s"));
}

TEST(PreflightOutliersTest, TooFewSamplesSayNothing) {
  PreflightReport r = Uniform({"a", "b"});  // one pair between nodes, two directions
  r.bandwidth_bytes_per_s[0][1] = 1e6;
  r.ranks[1].copy_bytes_per_s = 1;
  EXPECT_THAT(FindOutliers(r), IsEmpty());
}

TEST(PreflightCalibrationTest, JsonRoundTripsAndFormats) {
  PreflightReport r = Uniform(ThreeNodes());
  r.bandwidth_bytes_per_s[5][10] = 1e9;
  r.seconds = 1.5;
  r.findings = FindOutliers(r);
  const nlohmann::json j = CalibrationJson(r);
  EXPECT_EQ(j["kind"], "switchyard-calibration");
  EXPECT_EQ(j["links"]["within_node"]["ordered_pairs"], 36);
  EXPECT_DOUBLE_EQ(j["links"]["within_node"]["bandwidth_bytes_per_s"].get<double>(), 20e9);
  EXPECT_DOUBLE_EQ(j["links"]["between_nodes"]["latency_s"].get<double>(), 10e-6);
  ASSERT_THAT(j["findings"], SizeIs(1));
  auto back = ParseCalibration(nlohmann::json::parse(j.dump()));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->world, 12);
  EXPECT_EQ(back->ranks[8].host, "node07");
  EXPECT_EQ(back->bandwidth_bytes_per_s, r.bandwidth_bytes_per_s);
  EXPECT_EQ(back->latency_s, r.latency_s);
  ASSERT_THAT(back->findings, SizeIs(1));
  EXPECT_EQ(back->findings[0].message, r.findings[0].message);

  const std::string text = FormatReport(r);
  EXPECT_THAT(text, HasSubstr("preflight: 12 rank(s) on 3 host(s), mpi transport, cpu, 1.5 s"));
  EXPECT_THAT(text, HasSubstr("link class between_nodes: 96 ordered pairs, median 5.00 GB/s, 10.0 us"));
  EXPECT_THAT(text, HasSubstr("\n     5    5.00    5.00    5.00    5.00   20.00       -   20.00"
                              "   20.00    5.00    5.00    1.00    5.00\n"));
  EXPECT_THAT(text, HasSubstr("findings:\n  rank 5 -> rank 10: 1.00 GB/s"));
}

TEST(PreflightCalibrationTest, ParseNamesTheBadField) {
  const nlohmann::json good = CalibrationJson(Uniform({"a", "a", "b"}));
  auto expect = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& msg) {
    nlohmann::json j = good;
    edit(j);
    auto r = ParseCalibration(j);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(msg));
  };
  expect([](nlohmann::json& j) { j["kind"] = "placement"; }, "calibration: kind");
  expect([](nlohmann::json& j) { j["kind"] = 5; }, "calibration: kind");
  expect([](nlohmann::json& j) { j["device"] = 5; }, "calibration: device: must be a string");
  expect([](nlohmann::json& j) { j["seconds"] = "x"; }, "calibration: seconds: must be a number");
  expect([](nlohmann::json& j) { j["options"]["outlier_factor"] = 0.5; },
         "calibration: options.outlier_factor: must be a number above 1");
  expect([](nlohmann::json& j) { j["options"] = 3; }, "calibration: options: must be an object");
  expect([](nlohmann::json& j) { j["version"] = 2; }, "calibration: version");
  expect([](nlohmann::json& j) { j["world"] = 0; }, "calibration: world");
  expect([](nlohmann::json& j) { j["ranks"].erase(0); }, "calibration: ranks: must list 3");
  expect([](nlohmann::json& j) { j["ranks"][1]["copy_bytes_per_s"] = "fast"; },
         "calibration: ranks[1].copy_bytes_per_s: must be a non-negative number");
  expect([](nlohmann::json& j) { j["ranks"][2]["operations"] = {{"shape", 1}}; },
         "calibration: ranks[2].operations.shape: missing or not an object");
  expect([](nlohmann::json& j) { j["matrix"]["latency_s"][2] = {1, 2}; },
         "calibration: matrix.latency_s: must be 3 x 3");
  expect([](nlohmann::json& j) { j["matrix"]["bandwidth_bytes_per_s"][0][1] = -1; },
         "calibration: matrix.bandwidth_bytes_per_s: entries must be non-negative");
}

}  // namespace
}  // namespace switchyard
