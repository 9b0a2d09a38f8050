// The cost model against closed-form cases worked out by hand: a rank bound by weight reads,
// one bound by arithmetic, the dispatch of a two-rank EP group, a two-stage pipeline, and
// the figures of presets and calibrations.
#include "study/cost_model.h"

#include <gtest/gtest.h>

#include <cmath>

#include "coordinator/placement.h"
#include "study/testing.h"
#include "worker/step.h"

namespace switchyard {
namespace {

constexpr double kHuge = 1e30;

ModelConfig Tiny(int layers = 1) { return TinyMoeConfig(layers, 64); }

// Everything free except what the test sets.
ClusterModel Free() {
  ClusterModel c;
  c.source = "test";
  c.ranks_per_node = 64;
  DeviceModel& d = c.device;
  d.weight_read_bytes_per_s = kHuge;
  d.matmul_flops = kHuge;
  d.memory_bytes_per_s = kHuge;
  d.peak_bytes_per_s = 1e9;
  d.peak_flops = 1e9;
  d.launch_s = 0;
  d.step_overhead_s = 0;
  d.weight_bytes = 2;
  d.kv_dtype = KvDType::kF32;
  d.wire_bytes = 4;
  c.within_node = c.between_nodes = {.latency_s = 0, .bandwidth_bytes_per_s = kHuge};
  return c;
}

PlacementPlan Plan(const ModelConfig& cfg, int ep, int pp) {
  auto p = PlanPlacement(cfg, ep, pp);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

// TinyMoeConfig's weights at two bytes a parameter: a layer's attention and router, an
// expert, lm_head.
constexpr double kAttnBytes = 144, kExpertBytes = 192, kHeadBytes = 128;

TEST(CostModelTest, BatchOneDecodeIsTheWeightsItReadsOverTheReadRate) {
  const ModelConfig cfg = Tiny();
  ClusterModel cl = Free();
  cl.device.weight_read_bytes_per_s = 1e9;
  const CostModel m(cfg, Plan(cfg, 1, 1), cl, RoutingModel::Uniform(cfg));
  const StepCost c = m.Step(DecodeStep(1, 1, 1));
  // Top-1 of 2 equally shared experts: each is used with probability 1/2, so half of both
  // experts' bytes are read on average: one expert's worth.
  const double bytes = kAttnBytes + 2 * 0.5 * kExpertBytes + kHeadBytes;
  EXPECT_NEAR(c.seconds, bytes / 1e9, 1e-18);
  EXPECT_NEAR(c.weight_bytes_read, bytes, 1e-9);
  EXPECT_NEAR(c.breakdown.weights_s, (kAttnBytes + kExpertBytes) / 1e9, 1e-18);
  EXPECT_NEAR(c.breakdown.head_s, kHeadBytes / 1e9, 1e-18);
  EXPECT_NEAR(c.breakdown.Sum(), c.seconds, 1e-18);
  EXPECT_EQ(c.breakdown.dispatch_s, 0);
  EXPECT_EQ(c.breakdown.bubble_s, 0);
  // S-MBU: weights and KV read (4 positions... one position of K and V written, 2 x 4 x 4
  // bytes read back with the new one) over the step, over 1e9.
  EXPECT_NEAR(m.SparseMbu(c), (bytes + c.kv_bytes_read) / c.seconds / 1e9, 1e-12);

  // Batch 2: both tokens choose independently; an expert is used unless both avoid it (3/4).
  const StepCost c2 = m.Step(DecodeStep(2, 1, 1));
  EXPECT_NEAR(c2.seconds, (kAttnBytes + 2 * 0.75 * kExpertBytes + kHeadBytes) / 1e9, 1e-18);
}

TEST(CostModelTest, PrefillIsItsArithmeticOverTheMultiplyRate) {
  const ModelConfig cfg = Tiny();
  ClusterModel cl = Free();
  cl.device.matmul_flops = 1e9;
  const CostModel m(cfg, Plan(cfg, 1, 1), cl, RoutingModel::Uniform(cfg));
  StepShape s;
  s.seqs.push_back({.dp_rank = 0, .tokens = 10, .start_pos = 0, .head_rows = 1});
  const StepCost c = m.Step(s);
  // Dense: 2 x 10 x 72; scores: 4 x q_dim x (0 + 10 x 11 / 2) pairs; experts: 5 rows each,
  // 2 x 5 x 96 per expert; head: one row, 2 x 64.
  const double flops = 2 * 10 * 72 + 4 * 4 * 55 + 2 * (2 * 5 * 96) + 2 * 64;
  EXPECT_NEAR(c.flops, flops, 1e-9);
  EXPECT_NEAR(c.seconds, flops / 1e9, 1e-18);
  EXPECT_NEAR(c.breakdown.attention_s, 4 * 4 * 55 / 1e9, 1e-18);
  EXPECT_NEAR(m.SparseMfu(c), 1.0, 1e-12);  // the peak is the rate here
  EXPECT_EQ(c.tokens, 10);
}

TEST(CostModelTest, LaunchCostsArePaidPerOperationThatRuns) {
  const ModelConfig cfg = Tiny();
  ClusterModel cl = Free();
  cl.device.launch_s = 1e-6;
  cl.device.step_overhead_s = 5e-6;
  const CostModel m(cfg, Plan(cfg, 1, 1), cl, RoutingModel::Uniform(cfg));
  // Three dense multiplies and the attention kernel, each expert's three multiplies times
  // the chance it runs (1/2), the head: 4 + 3 + 1 launches; and the step's overhead.
  EXPECT_NEAR(m.Step(DecodeStep(1, 1, 1)).seconds, 8e-6 + 5e-6, 1e-15);
}

TEST(CostModelTest, TwoRankDispatchAsWorkedOutByHand) {
  const ModelConfig cfg = Tiny();
  ClusterModel cl = Free();
  cl.within_node = {.latency_s = 1e-6, .bandwidth_bytes_per_s = 1e9};
  const PlacementPlan plan = Plan(cfg, 2, 1);  // expert 0 on rank 0, expert 1 on rank 1
  const CostModel m(cfg, plan, cl, RoutingModel::Uniform(cfg));
  const StepCost c = m.Step(DecodeStep(2, 1, 2));  // one token on each rank
  // Each token goes to the other rank with probability 1/2: 0.5 rows each way. A row out is
  // 4 floats + one expert id + one weight (24 bytes); back, 4 floats (16 bytes).
  EXPECT_NEAR(c.pair_bytes[0][1], 0.5 * 24 + 0.5 * 16, 1e-12);
  EXPECT_NEAR(c.pair_bytes[1][0], 0.5 * 24 + 0.5 * 16, 1e-12);
  // Dispatch: the count exchange (one latency), then latency + 12 bytes; combine: latency +
  // 8 bytes.
  const double dispatch = 1e-6 + (1e-6 + 12e-9), combine = 1e-6 + 8e-9;
  EXPECT_NEAR(c.breakdown.dispatch_s, dispatch, 1e-15);
  EXPECT_NEAR(c.breakdown.combine_s, combine, 1e-15);
  // Control: the plan's broadcast (one hop for 2 ranks: latency + its bytes + 64) and rank 1's
  // result (latency + one token id).
  const double plan_bytes = 2 * (sizeof(SeqEntry) + 4 + 4);
  const double control = 1e-6 + (plan_bytes + 64) / 1e9 + (1e-6 + 4e-9);
  EXPECT_NEAR(c.breakdown.control_s, control, 1e-15);
  EXPECT_NEAR(c.seconds, dispatch + combine + control, 1e-15);
  EXPECT_NEAR(c.breakdown.Sum(), c.seconds, 1e-15);
}

// The same group exchanging through shared memory (CPU ranks of one node): one flag wait and
// one copy of each leaving token out, one flag wait and the final sum back; a group over two
// nodes still takes the all-to-alls.
TEST(CostModelTest, SharedMemoryExchangeAsWorkedOutByHand) {
  const ModelConfig cfg = Tiny();
  ClusterModel cl = Free();
  cl.within_node = {.latency_s = 1e-6, .bandwidth_bytes_per_s = 1e9};
  cl.device.memory_bytes_per_s = 2e9;
  cl.shared_memory_exchange = true;
  const PlacementPlan plan = Plan(cfg, 2, 1);
  const StepCost c = CostModel(cfg, plan, cl, RoutingModel::Uniform(cfg)).Step(DecodeStep(2, 1, 2));
  // Half a token leaves each rank: 0.5 x 16 bytes copied into the segment; back, the sum of
  // 0.5 partial sums of 16 bytes.
  EXPECT_NEAR(c.breakdown.dispatch_s, 1e-6 + 8 / 2e9, 1e-15);
  EXPECT_NEAR(c.breakdown.combine_s, 1e-6 + 8 / 2e9, 1e-15);
  // What peers read: the row and the partial sum, 16 bytes each, half a row each way.
  EXPECT_NEAR(c.pair_bytes[0][1], 0.5 * 16 + 0.5 * 16, 1e-12);

  cl.ranks_per_node = 1;
  cl.between_nodes = cl.within_node;
  const StepCost apart = CostModel(cfg, plan, cl, RoutingModel::Uniform(cfg)).Step(DecodeStep(2, 1, 2));
  EXPECT_NEAR(apart.breakdown.dispatch_s, 1e-6 + (1e-6 + 12e-9) + 8 / 2e9, 1e-15);
}

TEST(CostModelTest, ASkewedLayerMakesItsHotExpertsRankTheStraggler) {
  ModelConfig cfg = Tiny();
  cfg.num_local_experts = 4;
  ClusterModel cl = Free();
  cl.device.matmul_flops = 1e9;
  const PlacementPlan plan = Plan(cfg, 2, 1);  // experts 0, 2 on rank 0; 1, 3 on rank 1
  RoutingModel routing;
  routing.share = {{0.7, 0.1, 0.1, 0.1}};  // rank 0 gets 0.8 of the rows
  const CostModel m(cfg, plan, cl, routing);
  const StepCost c = m.Step(DecodeStep(64, 1, 2));
  // 64 rows: rank 0 runs 0.8 x 64 expert rows, rank 1 0.2 x 64; the layer waits for rank 0,
  // (0.8 - 0.5) x 64 rows of expert math beyond the mean.
  const double per_row = 2 * 96 / 1e9;
  EXPECT_NEAR(c.breakdown.imbalance_s, (0.8 - 0.5) * 64 * per_row, 1e-15);
  EXPECT_GT(c.ranks[0].busy_s, c.ranks[1].busy_s);
}

TEST(CostModelTest, TwoStagePipelineAtBatchOneRunsTheStagesInTurn) {
  const ModelConfig cfg = Tiny(/*layers=*/2);
  ClusterModel cl = Free();
  cl.device.weight_read_bytes_per_s = 1e9;
  cl.within_node = {.latency_s = 1e-6, .bandwidth_bytes_per_s = 1e9};
  const CostModel m(cfg, Plan(cfg, 1, 2), cl, RoutingModel::Uniform(cfg));
  const StepCost c = m.Step(DecodeStep(1, 1, 1));
  const double layer = (kAttnBytes + kExpertBytes) / 1e9, head = kHeadBytes / 1e9;
  const double link = 1e-6 + 16e-9;  // one row of 4 floats to stage 1
  const double plan_bytes = sizeof(SeqEntry) + 4 + 4;
  const double bcast = 1e-6 + (plan_bytes + 64) / 1e9, results = 1e-6 + 4e-9;
  const double total = bcast + layer + link + layer + head + results;
  EXPECT_NEAR(c.seconds, total, 1e-15);
  // Stage 0 idles while stage 1 works and the other way round: the bubble, on the mean
  // stage's clock, is half of (link + layer + head) for stage 0 and half a layer for stage 1.
  EXPECT_NEAR(c.breakdown.bubble_s, 0.5 * (link + layer + head) + 0.5 * layer, 1e-15);
  EXPECT_NEAR(c.breakdown.Sum(), c.seconds, 1e-15);
  // Two micro-batches at batch 2 (one row each): stage 1 runs the first while stage 0 runs
  // the second, so the step is three layer times, not four; the head reads lm_head once for
  // both rows; the plan and the results carry two sequences.
  const StepCost c2 = m.Step(DecodeStep(2, 1, 1));
  const double bcast2 = 1e-6 + (2 * plan_bytes + 64) / 1e9, results2 = 1e-6 + 8e-9;
  EXPECT_NEAR(c2.seconds, bcast2 + 3 * layer + link + head + results2, 1e-15);
  EXPECT_NEAR(c2.breakdown.Sum(), c2.seconds, 1e-15);
}

TEST(CostModelTest, RoutingModels) {
  ModelConfig cfg = Tiny(2);
  cfg.num_local_experts = 8;
  const RoutingModel u = RoutingModel::Uniform(cfg);
  for (double s : u.share[1]) EXPECT_DOUBLE_EQ(s, 0.125);
  const RoutingModel k = RoutingModel::Skewed(cfg, 1);
  double h8 = 0;
  for (int i = 1; i <= 8; ++i) h8 += 1.0 / i;
  EXPECT_NEAR(k.share[0][0], 1 / h8, 1e-12);
  EXPECT_NEAR(k.share[1][7], 1 / h8, 1e-12);  // layer 1's favourite is expert 7
  EXPECT_NEAR(k.share[0][7], 1 / (8 * h8), 1e-12);
  auto m = RoutingModel::FromCounts(cfg, {{1, 1, 2, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 4}});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_DOUBLE_EQ(m->share[0][2], 0.5);
  EXPECT_DOUBLE_EQ(m->share[1][7], 1.0);
  EXPECT_FALSE(RoutingModel::FromCounts(cfg, {{1, 1, 1, 1, 1, 1, 1, 1}}).ok());  // one layer
  auto empty = RoutingModel::FromCounts(cfg, {{1, 1, 1, 1, 1, 1, 1, 1}, std::vector<double>(8, 0)});
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("layer 1"), std::string::npos);
}

TEST(CostModelTest, MemoryAndWhatFits) {
  auto cfg = ModelPreset("mixtral-8x7b");
  ASSERT_TRUE(cfg.ok());
  auto h100 = HardwarePreset("h100", 8);
  ASSERT_TRUE(h100.ok());
  // One H100 cannot hold Mixtral 8x7B in bf16 (about 93 GB).
  const CostModel one(*cfg, Plan(*cfg, 1, 1), *h100, RoutingModel::Uniform(*cfg));
  EXPECT_GT(one.Memory(0)[0].weight_bytes, 90e9);
  EXPECT_FALSE(one.Memory(0)[0].fits());
  EXPECT_EQ(one.KvTokensThatFit(), 0);
  // Eight do, with room for KV: (capacity - weights - buffers) / (32 layers x 1024 x 2 x 2).
  const CostModel eight(*cfg, Plan(*cfg, 8, 1), *h100, RoutingModel::Uniform(*cfg));
  const std::vector<RankMemory> mem = eight.Memory(1);
  EXPECT_EQ(mem[0].kv_bytes, 32u * 1024 * 2 * 2);
  uint64_t tightest = ~0ull;
  for (const RankMemory& r : mem) {
    tightest = std::min(tightest, (r.capacity - r.weight_bytes - r.buffer_bytes) / r.kv_bytes);
  }
  EXPECT_EQ(eight.KvTokensThatFit(), static_cast<int64_t>(tightest));
  EXPECT_GT(tightest, 400000u);
  // The weights are the placement's footprints at two bytes a parameter.
  const auto fp = Footprints(eight.plan(), *cfg, 2);
  for (size_t r = 0; r < mem.size(); ++r) EXPECT_EQ(mem[r].weight_bytes, fp[r].weight_bytes);
}

TEST(CostModelTest, BatchOneDecodeWaitsForAttentionAndOneExpertPerLayer) {
  // At batch 1 a layer reads its attention on the rank holding the sequence, then the two
  // chosen experts on two ranks at once (pure EP 8): at least attention + one expert per
  // layer at the read rate, and most of the job's bandwidth idle (S-MBU far below 1).
  auto cfg = ModelPreset("mixtral-8x7b");
  ASSERT_TRUE(cfg.ok());
  auto h100 = HardwarePreset("h100", 8);
  ASSERT_TRUE(h100.ok());
  const double H = 4096, I = 14336;
  const double attn = 2 * (H * 6144 + 4096 * H + H * 8), expert = 2 * 3 * H * I;
  const double floor = (32 * (attn + expert) + 2 * H * 32000) / h100->device.weight_read_bytes_per_s;
  for (auto [ep, pp] : {std::pair{8, 1}, {4, 2}, {2, 4}}) {
    const CostModel m(*cfg, Plan(*cfg, ep, pp), *h100, RoutingModel::Uniform(*cfg));
    const StepCost c = m.Step(DecodeStep(1, 512, ep));
    EXPECT_GT(c.seconds, floor) << ep << "x" << pp;
    EXPECT_LT(m.SparseMbu(c), 0.3) << ep << "x" << pp;
    EXPECT_NEAR(c.breakdown.Sum(), c.seconds, 1e-12);
  }
  // With two experts on one rank of two, that rank often reads both: EP 2 is slower per layer
  // than a rank reading one expert, and faster than reading two every time.
  const ModelConfig one_layer = [&] { ModelConfig c = *cfg; c.num_hidden_layers = 1; return c; }();
  ClusterModel cl = *h100;
  cl.device.launch_s = 0;
  const CostModel ep2(one_layer, Plan(one_layer, 2, 1), cl, RoutingModel::Uniform(one_layer));
  const StepBreakdown b = ep2.Step(DecodeStep(1, 1, 2)).breakdown;
  const double read_expert = expert / cl.device.weight_read_bytes_per_s;
  EXPECT_GT(b.weights_s - attn / cl.device.weight_read_bytes_per_s, 1.2 * read_expert);
  EXPECT_LT(b.weights_s - attn / cl.device.weight_read_bytes_per_s, 2.0 * read_expert);
}

TEST(CostModelTest, CalibrationGivesPerRankFiguresAndLinkClasses) {
  PreflightReport r;
  r.device = "cpu";
  r.world = 4;
  for (int i = 0; i < 4; ++i) {
    r.ranks.push_back({.host = i < 2 ? "a" : "b", .copy_bytes_per_s = 10e9 + i,
                       .decode_weight_bytes_per_s = 5e9, .prefill_flops = 50e9});
  }
  r.latency_s.assign(4, std::vector<double>(4, 0));
  r.bandwidth_bytes_per_s.assign(4, std::vector<double>(4, 0));
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      if (i == j) continue;
      const bool same = (i < 2) == (j < 2);
      r.latency_s[i][j] = same ? 1e-6 : 10e-6;
      r.bandwidth_bytes_per_s[i][j] = same ? 8e9 : 1e9;
    }
  }
  r.bandwidth_bytes_per_s[2][3] = 4e9;
  auto c = ClusterFromCalibration(r, "cal.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ranks_per_node, 2);
  EXPECT_EQ(c->within_node.latency_s, 1e-6);
  EXPECT_EQ(c->within_node.bandwidth_bytes_per_s, 8e9);
  EXPECT_EQ(c->between_nodes.bandwidth_bytes_per_s, 1e9);
  EXPECT_EQ(c->Link(2, 3).bandwidth_bytes_per_s, 4e9);  // the pair's own figure
  EXPECT_EQ(c->Device(3).memory_bytes_per_s, 10e9 + 3);
  EXPECT_EQ(c->device.kv_dtype, KvDType::kF32);
  EXPECT_TRUE(c->shared_memory_exchange) << "CPU ranks of one node exchange through shared memory";
  // Projected to 8 ranks: the class medians, per node of 2.
  ClusterModel p = *c;
  p.FitTo(8);
  EXPECT_EQ(p.Link(2, 3).bandwidth_bytes_per_s, 8e9);
  EXPECT_EQ(p.Link(5, 6).bandwidth_bytes_per_s, 1e9);
  r.ranks[1].prefill_flops = 0;
  auto bad = ClusterFromCalibration(r, "cal.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("ranks[1]"), std::string::npos);
}

TEST(CostModelTest, MeasuredOperationsAsWorkedOutByHand) {
  const ModelConfig cfg = Tiny(/*layers=*/2);
  ClusterModel cl = Free();
  cl.device.operations = TinyOperations(cfg);
  const CostModel m(cfg, Plan(cfg, 1, 1), cl, RoutingModel::Uniform(cfg));
  EXPECT_TRUE(m.measured_operations());
  // Batch 1 at context 10: the token attends to 10 positions; top-1 of 2 equal experts: each
  // runs its one row with probability 1/2.
  const double attn = 1e-7 + 10 * 1e-9;
  const StepCost one = m.Step(DecodeStep(1, 10, 1));
  EXPECT_NEAR(one.seconds, 2 * (1e-6 + attn + 2 * 0.5 * 2e-6) + 3e-6, 1e-15);
  EXPECT_NEAR(one.breakdown.attention_s, 2 * attn, 1e-15);
  EXPECT_NEAR(one.breakdown.head_s, 3e-6, 1e-15);
  // Batch 4: an expert is used unless all four rows pick the other (1 - 1/16), and then runs
  // the 2 rows it expects over that chance, read between the samples at 1 and 4 rows.
  const double used = 1 - 1.0 / 16, rows = 2 / used;
  const double expert = 2e-6 + (rows - 1) / 3 * 3e-6;
  const StepCost four = m.Step(DecodeStep(4, 10, 1));
  EXPECT_NEAR(four.seconds, 2 * (4e-6 + 4 * attn + 2 * used * expert) + 9e-6, 1e-15);

  // Measured at another shape: dropped, the rates (all free here) apply.
  cl.device.operations->intermediate = 16;
  const CostModel other(cfg, Plan(cfg, 1, 1), cl, RoutingModel::Uniform(cfg));
  EXPECT_FALSE(other.measured_operations());
  EXPECT_NEAR(other.Step(DecodeStep(1, 10, 1)).seconds, 0, 1e-15);
}

TEST(CostModelTest, AnExpertCostsWhatItCostsAtItsRanksWorkingSet) {
  const ModelConfig cfg = Tiny(/*layers=*/2);
  ClusterModel cl = Free();
  OperationCosts o = TinyOperations(cfg);
  // Measured cycling over all 4 experts (768 bytes) and over 2 (384 bytes, cheaper: cached).
  o.expert_set_bytes = {4 * kExpertBytes, 2 * kExpertBytes};
  o.expert_set_s = {o.expert_s, {1e-6, 2e-6}};
  cl.device.operations = o;
  const double attn = 1e-7 + 10 * 1e-9;
  // One rank holds everything (beyond the largest set): each expert costs what cycling over
  // all of them did.
  const CostModel whole(cfg, Plan(cfg, 1, 1), cl, RoutingModel::Uniform(cfg));
  EXPECT_NEAR(whole.Step(DecodeStep(1, 10, 1)).ranks[0].busy_s,
              2 * (1e-6 + attn + 2 * 0.5 * 2e-6) + 3e-6, 1e-15);
  // Two stages: stage 0 holds one layer (its attention, norms and router, and 2 experts),
  // between the 384-byte set and the 768-byte one.
  const CostModel staged(cfg, Plan(cfg, 1, 2), cl, RoutingModel::Uniform(cfg));
  const double layer =
      2.0 * (cfg.AttentionParamsPerLayer() + cfg.num_local_experts * cfg.hidden_size);
  const double t = (layer + 2 * kExpertBytes - 384) / 384;
  ASSERT_GT(t, 0);
  ASSERT_LT(t, 1);
  const double expert = 1e-6 + t * (2e-6 - 1e-6);
  EXPECT_NEAR(staged.Step(DecodeStep(1, 10, 1)).ranks[0].busy_s,
              1e-6 + attn + 2 * 0.5 * expert, 1e-15);

  // A node whose ranks' weights and KV exceed its last-level cache reads experts from memory.
  o.expert_cold_s = {7e-6, 9e-6};
  o.cache_bytes = 1e6;  // everything fits
  cl.device.operations = o;
  EXPECT_NEAR(CostModel(cfg, Plan(cfg, 1, 1), cl, RoutingModel::Uniform(cfg))
                  .Step(DecodeStep(1, 10, 1)).ranks[0].busy_s,
              2 * (1e-6 + attn + 2 * 0.5 * 2e-6) + 3e-6, 1e-15);
  o.cache_bytes = 1000;  // 1184 bytes of weights and the KV do not
  cl.device.operations = o;
  EXPECT_NEAR(CostModel(cfg, Plan(cfg, 1, 1), cl, RoutingModel::Uniform(cfg))
                  .Step(DecodeStep(1, 10, 1)).ranks[0].busy_s,
              2 * (1e-6 + attn + 2 * 0.5 * 7e-6) + 3e-6, 1e-15);
}

TEST(CostModelTest, ExpectedBusiestCoreAsCountedByHand) {
  EXPECT_EQ(ExpectedBusiestCore(2, 2, 2), 1);  // a core each
  EXPECT_EQ(ExpectedBusiestCore(4, 2, 0), 0);
  EXPECT_DOUBLE_EQ(ExpectedBusiestCore(4, 2, 1), 1);
  // 4 threads, 2 per core, 2 computing: together on one core in 2 of the 6 choices.
  EXPECT_DOUBLE_EQ(ExpectedBusiestCore(4, 2, 2), 1 + 2.0 / 6);
  EXPECT_DOUBLE_EQ(ExpectedBusiestCore(4, 2, 4), 2);
  EXPECT_DOUBLE_EQ(ExpectedBusiestCore(3, 1, 2), 2);  // one core
  // 5 threads as 3 + 2, 2 computing: apart in 3 x 2 of the 10 choices.
  EXPECT_DOUBLE_EQ(ExpectedBusiestCore(5, 2, 2), 1 + 4.0 / 10);
  // 6 threads as 2 + 2 + 2, 3 computing: one on each core in 8 of the 20 choices, else 2.
  EXPECT_DOUBLE_EQ(ExpectedBusiestCore(6, 3, 3), 1 + 12.0 / 20);
}

TEST(CostModelTest, RanksWithMoreThreadsThanTheirNodesCpusTakeTurns) {
  ModelConfig cfg = Tiny(/*layers=*/2);
  ClusterModel cl = Free();
  OperationCosts o = TinyOperations(cfg);
  auto step = [&](int ep, int pp, int threads, int cpus, int batch) {
    o.threads = threads;
    o.cpus = cpus;
    cl.device.operations = o;
    return CostModel(cfg, Plan(cfg, ep, pp), cl, RoutingModel::Uniform(cfg))
        .Step(DecodeStep(batch, 10, ep));
  };
  // One rank of four threads on two CPUs: all four compute, two to a core, so its compute
  // (here its whole step: nothing else costs) takes twice as long.
  const StepCost own = step(1, 1, 2, 2, 1);
  EXPECT_EQ(own.breakdown.cores_s, 0);
  const StepCost four = step(1, 1, 4, 2, 1);
  EXPECT_NEAR(four.seconds, 2 * own.seconds, 1e-15);
  EXPECT_NEAR(four.breakdown.cores_s, own.seconds, 1e-15);
  EXPECT_NEAR(four.breakdown.Sum(), four.seconds, 1e-15);
  // Two pipeline stages of one thread each: on two CPUs each has its own; on one, each stage
  // still computes alone (the busiest core holds one computing thread), but two micro-batches
  // overlap, and the node's one CPU must do both stages' work: the step lasts that long.
  const StepCost apart = step(1, 2, 1, 2, 2);
  EXPECT_EQ(apart.breakdown.cores_s, 0);
  const double work = apart.ranks[0].busy_s + apart.ranks[1].busy_s;
  ASSERT_GT(work, apart.seconds) << "the test needs the stages' work to exceed the step";
  const StepCost shared = step(1, 2, 1, 1, 2);
  EXPECT_NEAR(shared.seconds, work, 1e-15);
  EXPECT_NEAR(shared.breakdown.cores_s, work - apart.seconds, 1e-15);
  // Unknown threads (a calibration before them): no turns.
  EXPECT_EQ(step(1, 2, 0, 0, 2).seconds, apart.seconds);
}

TEST(CostModelTest, BoundBusiestCpuAsCountedByHand) {
  EXPECT_EQ(BoundBusiestCpu({}), 1);
  EXPECT_EQ(BoundBusiestCpu({{1, {0}}, {1, {1}}}), 1);  // a CPU each
  EXPECT_EQ(BoundBusiestCpu({{1, {0}}, {1, {0}}}), 2);  // both on CPU 0
  EXPECT_EQ(BoundBusiestCpu({{4, {0, 1}}}), 2);         // four threads over two CPUs
  EXPECT_EQ(BoundBusiestCpu({{2, {0, 1}}, {1, {1}}}), 2);  // CPU 1: one of each
  EXPECT_DOUBLE_EQ(BoundBusiestCpu({{1, {0, 1}}, {1, {1, 2}}}), 1);  // half and half
}

TEST(CostModelTest, BoundRanksTakeTheTurnsTheirCpusGive) {
  // 2x2, one thread per rank, on one node of two CPUs: 4 threads on 2 CPUs.
  ModelConfig cfg = Tiny(/*layers=*/2);
  OperationCosts o = TinyOperations(cfg);
  o.threads = 1;
  o.cpus = 2;
  auto step = [&](const std::vector<std::vector<int>>& lists) {
    ClusterModel cl = Free();
    cl.ranks_per_node = 4;
    for (const std::vector<int>& list : lists) {
      OperationCosts r = o;
      r.cpu_list = list;
      if (!list.empty()) r.cpus = static_cast<int>(list.size());
      cl.rank_devices.push_back(cl.device);
      cl.rank_devices.back().operations = r;
    }
    return CostModel(cfg, Plan(cfg, 2, 2), cl, RoutingModel::Uniform(cfg))
        .Step(DecodeStep(1, 10, 2));
  };
  // Free to run anywhere: a stage's two ranks share a core in 2 of the 6 placements.
  const StepCost free = step({{0, 1}, {0, 1}, {0, 1}, {0, 1}});
  const StepCost unknown = step({{}, {}, {}, {}});
  EXPECT_EQ(free.seconds, unknown.seconds);
  EXPECT_GT(free.breakdown.cores_s, 0);
  // Bound round-robin (Open MPI's --map-by hwthread): each stage has a CPU per rank.
  const StepCost apart = step({{0}, {1}, {0}, {1}});
  EXPECT_EQ(apart.breakdown.cores_s, 0);
  // Bound a stage to a CPU: its ranks always take turns, twice as long as apart.
  const StepCost together = step({{0}, {0}, {1}, {1}});
  // (turns 2 against the free placement's expected 4/3: three times its time lost)
  EXPECT_NEAR(together.breakdown.cores_s, 3 * free.breakdown.cores_s, 1e-12);
  EXPECT_GT(together.seconds, free.seconds);
  EXPECT_GT(free.seconds, apart.seconds);
}

TEST(CostModelTest, PipelineStagesThatOverlapShareTheirCpus) {
  // 1x2 with two micro-batches (batch 2), one thread per rank, every cost but compute free.
  ModelConfig cfg = Tiny(/*layers=*/2);
  OperationCosts o = TinyOperations(cfg);
  o.threads = 1;
  auto step = [&](const std::vector<std::vector<int>>& lists, double link_s) {
    ClusterModel cl = Free();
    cl.ranks_per_node = 2;
    cl.within_node.latency_s = link_s;
    for (const std::vector<int>& list : lists) {
      OperationCosts r = o;
      r.cpu_list = list;
      r.cpus = static_cast<int>(list.size());
      cl.rank_devices.push_back(cl.device);
      cl.rank_devices.back().operations = r;
    }
    return CostModel(cfg, Plan(cfg, 1, 2), cl, RoutingModel::Uniform(cfg))
        .Step(DecodeStep(2, 10, 1));
  };
  // A CPU each: micro-batch 1 on stage 0 runs beside micro-batch 0 on stage 1. The stages'
  // work per micro-batch, w0 and w1 (the head on top, after the pipeline), from the busy times.
  const StepCost apart = step({{0}, {1}}, 0);
  EXPECT_EQ(apart.breakdown.cores_s, 0);
  // Both on CPU 0: alone each stage has its CPU, but while both run they take turns, so the
  // middle of the pipeline lasts w0 + w1 where it lasted max(w0, w1). Nothing else costs, so
  // the step is all the work one after the other.
  const StepCost shared = step({{0}, {0}}, 0);
  const double work = shared.ranks[0].busy_s + shared.ranks[1].busy_s;
  EXPECT_NEAR(shared.seconds, work, 1e-15);
  EXPECT_GT(shared.seconds, apart.seconds);
  EXPECT_NEAR(shared.breakdown.cores_s, shared.seconds - apart.seconds, 1e-15);
  // A stage link slower than a stage's work: the stages never run at once, and sharing the
  // CPU costs nothing.
  const double slow_link = 10 * work;
  const StepCost far = step({{0}, {0}}, slow_link);
  EXPECT_NEAR(far.seconds, step({{0}, {1}}, slow_link).seconds, 1e-15);
  EXPECT_EQ(far.breakdown.cores_s, 0);
  // By hand, event by event. Stage 0 takes a per micro-batch, stage 1 b, then the head h:
  // apart, the step is max(2a, a + b) + b + h; rank 0 is busy 2a, rank 1 2b + h.
  const double a = apart.ranks[0].busy_s / 2;
  const double b_plus_h = apart.seconds - 2 * a;  // where a >= b
  const double b = apart.ranks[1].busy_s - b_plus_h, h = b_plus_h - b;
  ASSERT_TRUE(a >= b * (1 - 1e-9) && a <= 2 * b && h >= 0) << a << " " << b << " " << h;
  // A link of a / 2, one CPU: stage 0 runs micro-batch 1 alone for a / 2, then beside stage 1
  // (half rate each) for a more; stage 1 finishes micro-batch 0 alone (b - a / 2 left), and
  // starts micro-batch 1 when it has that and micro-batch 1 has arrived (3a).
  const double L = a / 2;
  const double mb0_done = 2 * a + L + (b - a / 2);  // = 2a + b
  const double mb1_in = 2 * a + L + L;              // = 3a
  const StepCost linked = step({{0}, {0}}, L);
  // The link also carries the step's plan to stage 1 first and the tokens to rank 0 last.
  EXPECT_NEAR(linked.seconds, L + std::max(mb0_done, mb1_in) + b + h + L,
              1e-12 * linked.seconds);
}

TEST(CostModelTest, CalibrationCarriesEachRanksOperations) {
  const ModelConfig cfg = Tiny();
  PreflightReport r;
  r.device = "cpu";
  r.world = 1;
  r.ranks.push_back({.host = "a", .copy_bytes_per_s = 1e9, .decode_weight_bytes_per_s = 1e9,
                     .prefill_flops = 1e9, .operations = TinyOperations(cfg)});
  r.latency_s = {{0}};
  r.bandwidth_bytes_per_s = {{0}};
  auto c = ClusterFromCalibration(r, "cal.json");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->Device(0).operations.has_value());
  EXPECT_EQ(c->Device(0).operations->head_s, (std::vector<double>{3e-6, 9e-6}));
  EXPECT_TRUE(CostModel(cfg, Plan(cfg, 1, 1), *c, RoutingModel::Uniform(cfg)).measured_operations());
  // Four ranks pinned round-robin to two CPUs: each keeps its CPU; a projection's ranks get
  // rank 0's figures on a node of the two CPUs, placement unknown.
  r.world = 4;
  r.latency_s = r.bandwidth_bytes_per_s =
      std::vector<std::vector<double>>(4, std::vector<double>(4, 1e-6));
  r.ranks.resize(4, r.ranks[0]);
  for (int i = 0; i < 4; ++i) {
    r.ranks[i].operations->threads = 1;
    r.ranks[i].operations->cpus = 1;
    r.ranks[i].operations->cpu_list = {i % 2};
  }
  c = ClusterFromCalibration(r, "cal.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->Device(3).operations->cpu_list, (std::vector<int>{1}));
  c->FitTo(8);
  EXPECT_EQ(c->Device(3).operations->cpus, 2);
  EXPECT_TRUE(c->Device(3).operations->cpu_list.empty());
}

TEST(CostModelTest, Presets) {
  EXPECT_FALSE(HardwarePreset("a100", 8).ok());
  EXPECT_FALSE(ModelPreset("llama").ok());
  auto big = ModelPreset("mixtral-8x22b");
  ASSERT_TRUE(big.ok());
  // Mixtral 8x22B: about 141B parameters, 39B active.
  EXPECT_NEAR(big->TotalParams() / 1e9, 141, 1.5);
  EXPECT_NEAR(big->ActiveParamsPerToken() / 1e9, 39, 1.0);
  auto small = ModelPreset("mixtral-8x7b");
  EXPECT_NEAR(small->TotalParams() / 1e9, 46.7, 0.3);
}

}  // namespace
}  // namespace switchyard
