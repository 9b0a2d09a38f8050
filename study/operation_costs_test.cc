// Operation costs: reading the tables (interpolation, the attention fit), their JSON, and a
// measurement over the demo model's weights (figures positive and shaped as promised; no
// timing is asserted).
#include "study/operation_costs.h"

#include <gtest/gtest.h>

#include <string>

#include "common/cpu_threads.h"

namespace switchyard {
namespace {

TEST(OperationCostsTest, InterpolateBetweenBelowAndBeyondTheSamples) {
  const std::vector<double> xs = {1, 2, 4}, ys = {10, 14, 30};
  EXPECT_DOUBLE_EQ(Interpolate(xs, ys, 0.5), 10);  // below the first: its value
  EXPECT_DOUBLE_EQ(Interpolate(xs, ys, 1), 10);
  EXPECT_DOUBLE_EQ(Interpolate(xs, ys, 1.5), 12);
  EXPECT_DOUBLE_EQ(Interpolate(xs, ys, 3), 22);
  EXPECT_DOUBLE_EQ(Interpolate(xs, ys, 4), 30);
  EXPECT_DOUBLE_EQ(Interpolate(xs, ys, 8), 62);  // the last segment (8 per row) extended
  EXPECT_DOUBLE_EQ(Interpolate({4}, {8}, 2), 8);
  EXPECT_DOUBLE_EQ(Interpolate({4}, {8}, 12), 24);  // one point: proportional beyond it
}

TEST(OperationCostsTest, FitRecoversNonNegativeCoefficients) {
  // y = 2 + 3 t + 0.5 p, exactly.
  std::vector<std::array<double, 3>> x;
  std::vector<double> y;
  for (auto [t, p] : {std::pair{1.0, 1.0}, {1, 100}, {1, 500}, {16, 136}, {64, 2080}}) {
    x.push_back({1, t, p});
    y.push_back(2 + 3 * t + 0.5 * p);
  }
  std::array<double, 3> c = FitNonNegativeLeastSquares(x, y);
  EXPECT_NEAR(c[0], 2, 1e-9);
  EXPECT_NEAR(c[1], 3, 1e-9);
  EXPECT_NEAR(c[2], 0.5, 1e-9);
  // A term whose best unconstrained coefficient is negative is dropped, not made negative.
  y = {10, 9, 8, 7};
  x = {{1, 1, 0}, {1, 2, 0}, {1, 3, 0}, {1, 4, 0}};
  c = FitNonNegativeLeastSquares(x, y);
  EXPECT_EQ(c[1], 0);
  EXPECT_GT(c[0], 7);
  EXPECT_LT(c[0], 10);
}

OperationCosts Table() {
  OperationCosts c;
  c.hidden = 256;
  c.intermediate = 512;
  c.heads = 8;
  c.kv_heads = 2;
  c.head_dim = 32;
  c.experts = 8;
  c.top_k = 2;
  c.vocab = 4096;
  c.layers = 4;
  c.rows = {1, 2, 4};
  c.dense_s = {1e-5, 2e-5, 3e-5};
  c.expert_s = {2e-5, 3e-5, 5e-5};
  c.head_s = {4e-5, 8e-5, 1.6e-4};
  c.attention_call_s = 1e-6;
  c.attention_token_s = 2e-7;
  c.attention_pair_s = 1e-8;
  return c;
}

TEST(OperationCostsTest, ReadsTheTablesAndTheAttentionFit) {
  const OperationCosts c = Table();
  EXPECT_EQ(c.Dense(0), 0);
  EXPECT_DOUBLE_EQ(c.Dense(3), 2.5e-5);
  EXPECT_DOUBLE_EQ(c.Expert(8), 9e-5);
  EXPECT_DOUBLE_EQ(c.Head(1), 4e-5);
  EXPECT_EQ(c.Attention(0, 100), 0);
  // One decode token at position 99 attends to 100 positions.
  EXPECT_DOUBLE_EQ(c.Attention(1, 99), 1e-6 + 2e-7 + 100 * 1e-8);
  // A 4-token chunk from 0: 1 + 2 + 3 + 4 pairs.
  EXPECT_DOUBLE_EQ(c.Attention(4, 0), 1e-6 + 4 * 2e-7 + 10 * 1e-8);
}

TEST(OperationCostsTest, ReadsTheExpertAtTheRanksWorkingSet) {
  OperationCosts c = Table();
  // Without sets, every working set costs what every loaded expert cost.
  EXPECT_DOUBLE_EQ(c.Expert(8, 1e3), c.Expert(8));
  // Sets of 4 MB (the whole), 2 MB and 1 MB: a smaller set is cheaper (it stays cached).
  c.expert_set_bytes = {4e6, 2e6, 1e6};
  c.expert_set_s = {c.expert_s, {1e-5, 1.5e-5, 2.5e-5}, {0.5e-5, 1e-5, 2e-5}};
  EXPECT_DOUBLE_EQ(c.Expert(1, 0.5e6), 0.5e-5);  // below the smallest: the smallest's
  EXPECT_DOUBLE_EQ(c.Expert(1, 1e6), 0.5e-5);
  EXPECT_DOUBLE_EQ(c.Expert(1, 1.5e6), 0.75e-5);  // halfway between 1 and 2 MB
  EXPECT_DOUBLE_EQ(c.Expert(1, 3e6), 1.5e-5);     // halfway between 2 and 4 MB
  EXPECT_DOUBLE_EQ(c.Expert(1, 8e6), 2e-5);       // beyond the whole: the whole's
  EXPECT_DOUBLE_EQ(c.Expert(3, 1.5e6), 1.75e-5);  // rows interpolated within each set
  EXPECT_EQ(c.Expert(0, 1e6), 0);
}

TEST(OperationCostsTest, MatchesOnlyTheShapeMeasured) {
  ModelConfig cfg;
  cfg.hidden_size = 256;
  cfg.intermediate_size = 512;
  cfg.num_attention_heads = 8;
  cfg.num_key_value_heads = 2;
  cfg.head_dim = 32;
  cfg.num_local_experts = 8;
  cfg.num_experts_per_tok = 2;
  cfg.vocab_size = 4096;
  cfg.num_hidden_layers = 32;  // layers do not matter: the figures are per layer
  EXPECT_TRUE(Table().Matches(cfg));
  cfg.intermediate_size = 1024;
  EXPECT_FALSE(Table().Matches(cfg));
}

TEST(OperationCostsTest, JsonRoundTripAndErrorsNameTheField) {
  const OperationCosts c = Table();
  auto back = ParseOperationCosts(OperationCostsJson(c), "ops");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(OperationCostsJson(*back), OperationCostsJson(c));

  nlohmann::json j = OperationCostsJson(c);
  j["rows"] = {1, 4, 2};
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.rows: row counts must be >= 1 and increasing");
  j = OperationCostsJson(c);
  j["head_s"] = {1e-5};
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.rows: dense_s, expert_s and head_s must have one entry per row count");
  j = OperationCostsJson(c);
  j["shape"].erase("vocab");
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.shape.vocab: missing or not a positive integer");
  j = OperationCostsJson(c);
  j["attention"]["pair_s"] = -1;
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.attention.pair_s: missing or not a number >= 0");
  EXPECT_EQ(ParseOperationCosts(nlohmann::json::array(), "ops").status().message(),
            "ops: not an object");

  // The expert sets: optional, round trip, named errors.
  OperationCosts sets = Table();
  sets.expert_set_bytes = {4e6, 2e6};
  sets.expert_set_s = {sets.expert_s, {1e-5, 1.5e-5, 2.5e-5}};
  back = ParseOperationCosts(OperationCostsJson(sets), "ops");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->expert_set_bytes, sets.expert_set_bytes);
  EXPECT_EQ(back->expert_set_s, sets.expert_set_s);
  sets.threads = 3;
  sets.cpus = 8;
  sets.cpu_list = {0, 1, 2, 3, 8, 9, 10, 11};
  sets.expert_cold_s = {4e-5, 6e-5, 9e-5};
  sets.cache_bytes = 32 << 20;
  back = ParseOperationCosts(OperationCostsJson(sets), "ops");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->threads, 3);
  EXPECT_EQ(back->cpus, 8);
  EXPECT_EQ(back->cpu_list, sets.cpu_list);
  EXPECT_EQ(back->expert_cold_s, sets.expert_cold_s);
  EXPECT_EQ(back->cache_bytes, 32 << 20);
  EXPECT_DOUBLE_EQ(back->ExpertCold(2), 6e-5);
  EXPECT_DOUBLE_EQ(Table().ExpertCold(2), Table().Expert(2));  // not measured: the warm one
  j = OperationCostsJson(sets);
  j["expert_cold_s"] = {1e-5};
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.expert_cold_s: must have one entry per row count");
  j = OperationCostsJson(sets);
  j["threads"] = -1;
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.threads: not an integer >= 0");
  j = OperationCostsJson(sets);
  j["cpu_list"] = {0, 2, 1};
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.cpu_list: must be increasing CPU ids (integers >= 0)");
  j["cpu_list"] = {0, 1};
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.cpu_list: has 2 CPUs where cpus says 8");
  j.erase("cpu_list");  // a calibration from before the list
  back = ParseOperationCosts(j, "ops");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->cpu_list.empty());
  j = OperationCostsJson(sets);
  j.erase("expert_sets");  // a calibration from before the sets
  back = ParseOperationCosts(j, "ops");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->expert_set_bytes.empty());
  j = OperationCostsJson(sets);
  j["expert_sets"][1]["expert_s"] = {1e-5};
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.expert_sets[1].expert_s: must have one entry per row count");
  j = OperationCostsJson(sets);
  j["expert_sets"][1]["bytes"] = 8e6;
  EXPECT_EQ(ParseOperationCosts(j, "ops").status().message(),
            "ops.expert_sets[1].bytes: sets must be ordered largest first");
}

const std::string kModel = std::string(SWITCHYARD_SOURCE_ROOT) + "/models/brown-moe";

TEST(OperationCostsTest, MeasuresTheDemoModelsOperations) {
  OperationBenchOptions o;
  o.max_rows = 8;
  o.max_context = 64;
  o.repeats = 1;
  auto m = LoadForOperations(kModel, o);
  ASSERT_TRUE(m.ok()) << m.status();
  auto c = MeasureOperations(*m->weights, o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->Matches(m->weights->config()));
  EXPECT_EQ(c->layers, 4);
  EXPECT_GE(c->threads, 1);
  EXPECT_GE(c->cpus, 1);
  EXPECT_EQ(c->cpu_list, OwnCpus());
  ASSERT_EQ(c->expert_cold_s.size(), c->rows.size());
  for (double t : c->expert_cold_s) EXPECT_GT(t, 0);
  EXPECT_EQ(c->rows, (std::vector<double>{1, 2, 4, 8}));
  for (size_t i = 0; i < c->rows.size(); ++i) {
    EXPECT_GE(c->dense_s[i], 0);
    EXPECT_GT(c->expert_s[i], 0);
    EXPECT_GT(c->head_s[i], 0);
  }
  // Four working sets: every expert of the 4 layers (32), then 16, 8 and 4 of them.
  const double expert_bytes = 2.0 * m->weights->config().ExpertParams();
  EXPECT_EQ(c->expert_set_bytes, (std::vector<double>{32 * expert_bytes, 16 * expert_bytes,
                                                      8 * expert_bytes, 4 * expert_bytes}));
  ASSERT_EQ(c->expert_set_s.size(), 4u);
  EXPECT_EQ(c->expert_set_s[0], c->expert_s);
  for (const std::vector<double>& set : c->expert_set_s) {
    ASSERT_EQ(set.size(), c->rows.size());
    for (double t : set) EXPECT_GT(t, 0);
  }
  EXPECT_GT(c->Attention(1, 63), 0);
  EXPECT_GE(c->attention_call_s, 0);
  EXPECT_GE(c->attention_token_s, 0);
  EXPECT_GE(c->attention_pair_s, 0);
}

TEST(OperationCostsTest, LoadsOnlyTheLayersThatFitTheBudget) {
  OperationBenchOptions o;
  o.max_weight_bytes = 1;  // less than a layer: one layer still
  auto m = LoadForOperations(kModel, o);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->weights->spec().layer_end, 1);
  EXPECT_TRUE(m->weights->spec().has_head);
}

TEST(OperationCostsTest, NamesAMissingCheckpoint) {
  auto m = LoadForOperations("/nonexistent/model", OperationBenchOptions{});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(std::string(m.status().message()).find("/nonexistent/model"), std::string::npos)
      << m.status();
}

}  // namespace
}  // namespace switchyard
