// The Prometheus series ServingMetrics renders, against known events and a known cluster.
#include "coordinator/server/serving_metrics.h"

#include <map>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using testing::HasSubstr;
using testing::Not;

// "name{labels} value" lines of the text format -> value, comments skipped.
std::map<std::string, double> Parse(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

// Two ranks of one stage (EP 2), two layers of four experts; expert 0 of layer 0 on both.
ClusterStatusInfo Cluster() {
  ClusterStatusInfo c;
  c.ep = 2;
  c.pp = 1;
  for (int r = 0; r < 2; ++r) {
    RankStatus s;
    s.world_rank = r;
    s.ep_rank = r;
    s.layer_end = 2;
    s.experts = r == 0 ? std::vector<std::vector<int>>{{0, 1}, {0, 1}}
                       : std::vector<std::vector<int>>{{0, 2, 3}, {2, 3}};
    s.steps = 10 + r;
    s.compute_seconds = 1.5 + r;
    s.wait_seconds = 0.25 * (r + 1);
    s.dispatch_bytes_sent =
        r == 0 ? std::vector<uint64_t>{0, 4096} : std::vector<uint64_t>{8192, 0};
    c.ranks.push_back(s);
  }
  c.expert_token_counts = {{5, 1, 0, 2}, {3, 3, 1, 1}};
  return c;
}

SchedulerStats Stats() {
  SchedulerStats s;
  s.steps = 42;
  s.running = 3;
  s.waiting = 1;
  s.total_blocks = {100, 100};
  s.free_blocks = {70, 95};
  s.prompt_tokens = 600;
  s.generated_tokens = 77;
  return s;
}

TEST(ServingMetrics, StateSeriesComeFromTheClusterAndTheScheduler) {
  ServingMetrics m;
  auto v =
      Parse(m.Render(Cluster(), Stats(), {.model = "brown-moe", .version = "9", .serving = true}));
  EXPECT_EQ(v["switchyard_info{model=\"brown-moe\",version=\"9\",ep=\"2\",pp=\"1\"}"], 1);
  EXPECT_EQ(v["switchyard_serving"], 1);
  EXPECT_EQ(v["switchyard_requests_running"], 3);
  EXPECT_EQ(v["switchyard_requests_waiting"], 1);
  EXPECT_EQ(v["switchyard_kv_blocks_used{dp=\"0\"}"], 30);
  EXPECT_EQ(v["switchyard_kv_blocks_free{dp=\"1\"}"], 95);
  EXPECT_EQ(v["switchyard_kv_blocks{dp=\"1\"}"], 100);
  EXPECT_EQ(v["switchyard_steps_total"], 42);
  EXPECT_EQ(v["switchyard_prompt_tokens_total"], 600);
  EXPECT_EQ(v["switchyard_generation_tokens_total"], 77);
  EXPECT_EQ(v["switchyard_rank_compute_seconds_total{rank=\"1\"}"], 2.5);
  EXPECT_EQ(v["switchyard_rank_wait_seconds_total{rank=\"0\"}"], 0.25);
  EXPECT_EQ(v["switchyard_rank_steps_total{rank=\"1\"}"], 11);
  EXPECT_EQ(v["switchyard_rank_experts{rank=\"1\"}"], 5);
  EXPECT_EQ(v["switchyard_rank_dispatch_sent_bytes_total{rank=\"1\"}"], 8192);
  EXPECT_EQ(v["switchyard_dispatch_sent_bytes_total{src=\"0\",dst=\"1\"}"], 4096);
  EXPECT_EQ(v["switchyard_dispatch_sent_bytes_total{src=\"1\",dst=\"0\"}"], 8192);
  EXPECT_EQ(v.count("switchyard_dispatch_sent_bytes_total{src=\"0\",dst=\"0\"}"), 0u);
  EXPECT_EQ(v["switchyard_expert_routed_tokens_total{layer=\"0\",expert=\"0\"}"], 5);
  EXPECT_EQ(v["switchyard_expert_routed_tokens_total{layer=\"1\",expert=\"3\"}"], 1);
  EXPECT_EQ(v["switchyard_expert_replicas{layer=\"0\",expert=\"0\"}"], 2);
  EXPECT_EQ(v["switchyard_expert_replicas{layer=\"0\",expert=\"1\"}"], 1);
  EXPECT_EQ(v["switchyard_expert_replicas{layer=\"1\",expert=\"0\"}"], 1);
}

TEST(ServingMetrics, ThePairMatrixStopsAtMaxPairRanksButTotalsRemain) {
  ServingMetrics m({.max_pair_ranks = 1});
  const std::string text = m.Render(Cluster(), Stats(), {});
  EXPECT_THAT(text, Not(HasSubstr("switchyard_dispatch_sent_bytes_total{")));
  auto v = Parse(text);
  EXPECT_EQ(v["switchyard_rank_dispatch_sent_bytes_total{rank=\"0\"}"], 4096);
  EXPECT_EQ(v["switchyard_serving"], 0);
}

TEST(ServingMetrics, RequestsAndTimingsAreCounted) {
  ServingMetrics m;
  m.CountRequest("grpc", "switchyard.v1.Switchyard/Generate", "OK");
  m.CountRequest("grpc", "switchyard.v1.Switchyard/Generate", "OK");
  m.CountRequest("http", "GET /health", "503");
  m.OnRequestEnd({.queue_seconds = 0.004,
                  .first_token_seconds = 0.02,
                  .total_seconds = 0.5,
                  .finish_reason = FinishReason::kStop});
  m.OnRequestEnd({.total_seconds = 0.1, .finish_reason = FinishReason::kCancelled});
  m.OnRequestEnd({.queue_seconds = 0.001, .total_seconds = 0.2, .failed = true});
  m.OnTokenGap(0.004);
  m.OnTokenGap(0.006);
  m.OnStep({.seconds = 0.012, .prefill_tokens = 300, .decode_tokens = 5});
  m.OnStep({.seconds = 0.003, .prefill_tokens = 0, .decode_tokens = 6});
  auto v = Parse(m.Render({}, {}, {}));
  EXPECT_EQ(v["switchyard_requests_total{code=\"OK\",method=\"switchyard.v1.Switchyard/"
              "Generate\",protocol=\"grpc\"}"],
            2);
  EXPECT_EQ(v["switchyard_requests_total{code=\"503\",method=\"GET /health\",protocol=\"http\"}"],
            1);
  EXPECT_EQ(v["switchyard_request_finished_total{reason=\"stop\"}"], 1);
  EXPECT_EQ(v["switchyard_request_finished_total{reason=\"cancelled\"}"], 1);
  EXPECT_EQ(v["switchyard_request_finished_total{reason=\"error\"}"], 1);
  // Only requests that got there are observed: one first token, two admissions, three ends.
  EXPECT_EQ(v["switchyard_request_time_to_first_token_seconds_count"], 1);
  EXPECT_DOUBLE_EQ(v["switchyard_request_time_to_first_token_seconds_sum"], 0.02);
  EXPECT_EQ(v["switchyard_request_time_to_first_token_seconds_bucket{le=\"0.01\"}"], 0);
  EXPECT_EQ(v["switchyard_request_time_to_first_token_seconds_bucket{le=\"0.025\"}"], 1);
  EXPECT_EQ(v["switchyard_request_queue_seconds_count"], 2);
  EXPECT_EQ(v["switchyard_request_e2e_latency_seconds_count"], 3);
  EXPECT_DOUBLE_EQ(v["switchyard_request_e2e_latency_seconds_sum"], 0.8);
  EXPECT_EQ(v["switchyard_request_inter_token_latency_seconds_count"], 2);
  EXPECT_EQ(v["switchyard_request_inter_token_latency_seconds_bucket{le=\"0.005\"}"], 1);
  EXPECT_EQ(v["switchyard_step_duration_seconds_count"], 2);
  EXPECT_EQ(v["switchyard_step_tokens_sum{kind=\"prefill\"}"], 300);
  EXPECT_EQ(v["switchyard_step_tokens_sum{kind=\"decode\"}"], 11);
  EXPECT_EQ(v["switchyard_step_tokens_bucket{kind=\"decode\",le=\"4\"}"], 0);
  EXPECT_EQ(v["switchyard_step_tokens_bucket{kind=\"decode\",le=\"8\"}"], 2);
}

}  // namespace
}  // namespace switchyard
