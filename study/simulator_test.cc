// The serving simulator: the real Scheduler over the cost model in virtual time, its timings
// checked against the cost model's step times for the schedule worked out by hand, and its
// determinism and accounting.
#include "study/simulator.h"

#include <gtest/gtest.h>

#include "coordinator/placement.h"
#include "study/testing.h"

namespace switchyard {
namespace {

ModelConfig Tiny() { return TinyMoeConfig(/*layers=*/2, /*context=*/256); }

// A cluster whose steps take microseconds: weights at 1 GB/s, math at 1 GFLOP/s.
ClusterModel Slow() {
  ClusterModel c;
  c.ranks_per_node = 8;
  DeviceModel& d = c.device;
  d.name = "test";
  d.weight_read_bytes_per_s = 1e9;
  d.matmul_flops = 1e9;
  d.memory_bytes_per_s = 1e10;
  d.peak_bytes_per_s = 1e9;
  d.peak_flops = 1e9;
  d.launch_s = 1e-6;
  d.step_overhead_s = 10e-6;
  c.within_node = c.between_nodes = {.latency_s = 2e-6, .bandwidth_bytes_per_s = 1e9};
  return c;
}

CostModel Model(int ep, int pp) {
  const ModelConfig cfg = Tiny();
  auto plan = PlanPlacement(cfg, ep, pp);
  EXPECT_TRUE(plan.ok());
  return CostModel(cfg, *plan, Slow(), RoutingModel::Uniform(cfg), 8);
}

SchedulerOptions Options() {
  SchedulerOptions o;
  o.max_running = 4;
  o.step_token_budget = 8;
  o.prefill_chunk = 8;
  return o;
}

// The virtual clock counts whole nanoseconds: each step's time is rounded down to one.
constexpr double kTick = 1e-9;

double Cost(const CostModel& m, std::vector<SeqWork> seqs) {
  return m.Step(StepShape{.seqs = std::move(seqs)}).seconds;
}

TEST(SimulatorTest, OneRequestTakesTheStepsWorkedOutByHand) {
  const CostModel m = Model(2, 2);
  // Prompt 12, 3 tokens: a prefill chunk of 8, the last 4 (sampling the first token), then
  // two decode steps at positions 12 and 13; all on data-parallel index 0 (the most free).
  const Workload w{.requests = 1, .concurrency = 1, .prompt = {12, 12}, .output = {3, 3}};
  auto r = SimulateServing(m, Options(), {.blocks_per_dp = 16, .block_size = 4}, w);
  ASSERT_TRUE(r.ok()) << r.status();
  const double s1 = Cost(m, {{.dp_rank = 0, .tokens = 8, .start_pos = 0, .head_rows = 0}});
  const double s2 = Cost(m, {{.dp_rank = 0, .tokens = 4, .start_pos = 8, .head_rows = 1}});
  const double s3 = Cost(m, {{.dp_rank = 0, .tokens = 1, .start_pos = 12, .head_rows = 1}});
  const double s4 = Cost(m, {{.dp_rank = 0, .tokens = 1, .start_pos = 13, .head_rows = 1}});
  EXPECT_EQ(r->requests, 1);
  EXPECT_EQ(r->steps, 4);
  EXPECT_NEAR(r->ttft.p50, s1 + s2, 4 * kTick);
  EXPECT_NEAR(r->itl.p50, std::min(s3, s4), 4 * kTick);
  EXPECT_NEAR(r->itl.p99, std::max(s3, s4), 4 * kTick);
  EXPECT_NEAR(r->e2e.p50, s1 + s2 + s3 + s4, 4 * kTick);
  EXPECT_NEAR(r->seconds, s1 + s2 + s3 + s4, 4 * kTick);
  EXPECT_EQ(r->output_tokens, 3);
  EXPECT_NEAR(r->output_tokens_per_s, 3 / r->seconds, 1e-9);
  EXPECT_NEAR(r->queue.p50, 0, 4 * kTick);
  EXPECT_NEAR(r->mean_step_s, (s1 + s2 + s3 + s4) / 4, 1e-15);  // summed unrounded
  EXPECT_NEAR(r->mean_breakdown.Sum(), r->mean_step_s, 1e-15);
}

TEST(SimulatorTest, FrontEndCostsAndTurnaroundAsWorkedOutByHand) {
  const CostModel m = Model(2, 2);
  const double step = 1e-4, token = 2e-5, turnaround = 1e-3;
  // The same four steps as above, each followed by the front end's cost: per step, and per
  // token sampled (steps 2, 3 and 4).
  const Workload one{.requests = 1, .concurrency = 1, .prompt = {12, 12}, .output = {3, 3}};
  auto r = SimulateServing(m, Options(), {.blocks_per_dp = 16, .block_size = 4}, one,
                           {.step_s = step, .token_s = token});
  ASSERT_TRUE(r.ok()) << r.status();
  const double s1 = Cost(m, {{.dp_rank = 0, .tokens = 8, .start_pos = 0, .head_rows = 0}});
  const double s2 = Cost(m, {{.dp_rank = 0, .tokens = 4, .start_pos = 8, .head_rows = 1}});
  const double s3 = Cost(m, {{.dp_rank = 0, .tokens = 1, .start_pos = 12, .head_rows = 1}});
  const double s4 = Cost(m, {{.dp_rank = 0, .tokens = 1, .start_pos = 13, .head_rows = 1}});
  const double life = s1 + s2 + s3 + s4 + 4 * step + 3 * token;
  EXPECT_NEAR(r->ttft.p50, s1 + s2 + 2 * step + token, 4 * kTick);
  EXPECT_NEAR(r->e2e.p50, life, 4 * kTick);
  EXPECT_NEAR(r->mean_host_s, step + 0.75 * token, 1e-15);
  EXPECT_NEAR(r->mean_step_s, (s1 + s2 + s3 + s4) / 4, 1e-15);  // the steps alone
  // One client, two requests: the second reaches the scheduler a turnaround after the first
  // ends.
  Workload two = one;
  two.requests = 2;
  two.turnaround_s = turnaround;
  r = SimulateServing(m, Options(), {.blocks_per_dp = 16, .block_size = 4}, two,
                      {.step_s = step, .token_s = token});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->seconds, 2 * life + turnaround, 8 * kTick);
  two.turnaround_s = -1;
  EXPECT_FALSE(SimulateServing(m, Options(), {.blocks_per_dp = 16, .block_size = 4}, two).ok());
}

// The front end's CPU work beside the steps (network threads, clients) takes turns with the
// ranks on rank 0's node: a step and the front end's wait after it last at least the node's
// work (the ranks' core time, the wait, the CPU work) over its CPUs; where the ranks' threads
// fill the CPUs, the step lasts the CPU work longer.
TEST(SimulatorTest, TheFrontEndsCpuWorkTakesTurnsWithTheRanks) {
  const ModelConfig cfg = Tiny();
  auto plan = PlanPlacement(cfg, 2, 1);
  ASSERT_TRUE(plan.ok());
  const HostCosts host{.step_s = 1e-6, .token_s = 2e-6, .cpu_step_s = 5e-5, .cpu_token_s = 1e-4};
  // Prompt 4, 3 tokens: the prefill (sampling the first), decodes at positions 4 and 5, each
  // step sampling one token, all on data-parallel index 0.
  const std::vector<SeqWork> steps = {{.dp_rank = 0, .tokens = 4, .start_pos = 0, .head_rows = 1},
                                      {.dp_rank = 0, .tokens = 1, .start_pos = 4, .head_rows = 1},
                                      {.dp_rank = 0, .tokens = 1, .start_pos = 5, .head_rows = 1}};
  const Workload one{.requests = 1, .concurrency = 1, .prompt = {4, 4}, .output = {3, 3}};
  const KvPool kv{.blocks_per_dp = 16, .block_size = 4};
  // Two ranks of one thread each on a node of `cpus` CPUs.
  for (const int cpus : {4, 2}) {
    SCOPED_TRACE(cpus);
    ClusterModel cl = Slow();
    OperationCosts o = TinyOperations(cfg);
    o.threads = 1;
    o.cpus = cpus;
    cl.device.operations = o;
    const CostModel m(cfg, *plan, cl, RoutingModel::Uniform(cfg), 8);
    ASSERT_TRUE(m.measured_operations());
    double want = 0, lost = 0;
    for (const SeqWork& seq : steps) {
      const StepCost c = m.Step(StepShape{.seqs = {seq}});
      const CostModel::NodeWork node = m.NodeWorkOf(c, 0);
      EXPECT_EQ(node.cpus, cpus);
      EXPECT_EQ(node.threads, 2);
      EXPECT_NEAR(node.core_s, c.ranks[0].busy_s + c.ranks[1].busy_s, 1e-18);
      const double wait = host.step_s + host.token_s;
      const double cpu = host.cpu_step_s + host.cpu_token_s;  // each step samples a token
      // Four CPUs: two to spare, the node's work over them. Two: every slice stops a rank.
      const double cycle = cpus == 4 ? std::max(c.seconds + wait, (node.core_s + wait + cpu) / 4)
                                     : c.seconds + wait + cpu;
      lost += cycle - c.seconds - wait;
      want += cycle;
    }
    ASSERT_GT(lost, 0) << "the test needs the front end's CPU work to outgrow the cores left";
    auto r = SimulateServing(m, Options(), kv, one, host);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->steps, 3);
    EXPECT_NEAR(r->seconds, want, 8 * kTick);
    EXPECT_NEAR(r->mean_front_end_cores_s, lost / 3, 1e-15);
    EXPECT_NEAR(r->mean_breakdown.Sum(), r->mean_step_s, 1e-15);  // the turns are cores_s
  }
  // A node whose CPUs are not known (rates, no measured operations): the CPU work costs nothing.
  const HostCosts wait_only{.step_s = host.step_s, .token_s = host.token_s};
  auto with = SimulateServing(Model(2, 1), Options(), kv, one, host);
  auto without = SimulateServing(Model(2, 1), Options(), kv, one, wait_only);
  ASSERT_TRUE(with.ok() && without.ok());
  EXPECT_EQ(with->seconds, without->seconds);
  EXPECT_EQ(with->mean_front_end_cores_s, 0);
  HostCosts negative = host;
  negative.cpu_token_s = -1;
  EXPECT_FALSE(SimulateServing(Model(2, 1), Options(), kv, one, negative).ok());
}

TEST(SimulatorTest, TwoClientsShareDecodeStepsAcrossDataParallelIndices) {
  const CostModel m = Model(2, 1);
  // Two clients, prompts of 4 and 2 tokens out each: the two requests go to different
  // data-parallel indices (the most free blocks), prefill together, and decode together.
  const Workload w{.requests = 2, .concurrency = 2, .prompt = {4, 4}, .output = {2, 2}};
  auto r = SimulateServing(m, Options(), {.blocks_per_dp = 16, .block_size = 4}, w);
  ASSERT_TRUE(r.ok()) << r.status();
  const double s1 = Cost(m, {{.dp_rank = 0, .tokens = 4, .start_pos = 0, .head_rows = 1},
                             {.dp_rank = 1, .tokens = 4, .start_pos = 0, .head_rows = 1}});
  const double s2 = Cost(m, {{.dp_rank = 0, .tokens = 1, .start_pos = 4, .head_rows = 1},
                             {.dp_rank = 1, .tokens = 1, .start_pos = 4, .head_rows = 1}});
  EXPECT_EQ(r->steps, 2);
  EXPECT_NEAR(r->seconds, s1 + s2, 4 * kTick);
  EXPECT_NEAR(r->ttft.p50, s1, 4 * kTick);
  EXPECT_NEAR(r->itl.p50, s2, 4 * kTick);
  EXPECT_EQ(r->output_tokens, 4);
  ASSERT_EQ(r->rank_utilisation.size(), 2u);
  EXPECT_GT(r->rank_utilisation[0], 0);
  EXPECT_LE(r->rank_utilisation[0], 1);
}

TEST(SimulatorTest, AFullKvPoolQueuesTheNextRequest) {
  const CostModel m = Model(1, 1);
  // Each request needs 2 blocks of 4 (4 prompt + 4 out - 1 positions); the pool has 3: the
  // second of two concurrent requests waits for the first to end.
  const Workload w{.requests = 2, .concurrency = 2, .prompt = {4, 4}, .output = {4, 4}};
  auto r = SimulateServing(m, Options(), {.blocks_per_dp = 3, .block_size = 4}, w);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->requests, 2);
  EXPECT_EQ(r->queue.p50, 0);
  EXPECT_NEAR(r->queue.p99, r->e2e.p50, 1e-12);  // waited exactly the first one's life
  EXPECT_EQ(r->steps, 8);
}

TEST(SimulatorTest, OpenLoopIsDeterministicAndCountsEveryRequest) {
  const CostModel m = Model(2, 2);
  const Workload w{.requests = 200, .concurrency = 0, .rate = 2000, .prompt = {4, 40},
                   .output = {1, 30}, .seed = 7};
  const KvPool kv{.blocks_per_dp = 64, .block_size = 16};
  auto a = SimulateServing(m, Options(), kv, w);
  auto b = SimulateServing(m, Options(), kv, w);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->requests, 200);
  EXPECT_EQ(a->seconds, b->seconds);
  EXPECT_EQ(a->ttft.p99, b->ttft.p99);
  EXPECT_EQ(a->output_tokens, b->output_tokens);
  EXPECT_GE(a->output_tokens, 200);
  EXPECT_LE(a->output_tokens, 200 * 30);
  Workload other = w;
  other.seed = 8;
  auto c = SimulateServing(m, Options(), kv, other);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(c->output_tokens, a->output_tokens);
}

TEST(SimulatorTest, RefusesWhatCanNeverRun) {
  const CostModel m = Model(1, 1);
  // 300 + 10 positions exceed the model's context of 256: the scheduler's own message.
  auto r = SimulateServing(m, Options(), {.blocks_per_dp = 100, .block_size = 4},
                           {.requests = 1, .prompt = {300, 300}, .output = {10, 10}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("context"), std::string::npos) << r.status();
  EXPECT_FALSE(SimulateServing(m, Options(), {.blocks_per_dp = 0}, {}).ok());
  EXPECT_FALSE(SimulateServing(m, Options(), {.blocks_per_dp = 4}, {.requests = 0}).ok());
}

TEST(SimulatorTest, Percentiles) {
  const Percentiles p = PercentilesOf({5, 1, 4, 2, 3, 6, 7, 8, 9, 10});
  EXPECT_DOUBLE_EQ(p.mean, 5.5);
  EXPECT_DOUBLE_EQ(p.p50, 5);
  EXPECT_DOUBLE_EQ(p.p90, 9);
  EXPECT_DOUBLE_EQ(p.p99, 10);
  EXPECT_DOUBLE_EQ(PercentilesOf({}).p99, 0);
}

}  // namespace
}  // namespace switchyard
