#include "coordinator/expert_balance.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using testing::ElementsAre;
using testing::HasSubstr;

// The smallest possible max rank load over every placement: each expert on a non-empty set
// of ranks, at most `slots` replicas in all, each rank within `cap` (exhaustive; tiny cases).
double OptimalMaxLoad(const std::vector<double>& load, int ep, int slots, int cap) {
  const int E = static_cast<int>(load.size());
  std::vector<std::vector<int>> ranks(E);
  double best = 1e300;
  std::function<void(int, int)> go = [&](int e, int used) {
    if (e == E) {
      LayerBalance b = EvaluateLayer(load, ranks, ep);
      std::vector<int> held(ep, 0);
      for (const auto& rs : ranks)
        for (int r : rs) ++held[r];
      if (*std::max_element(held.begin(), held.end()) <= cap) best = std::min(best, b.max_load());
      return;
    }
    for (int mask = 1; mask < (1 << ep); ++mask) {
      const int n = __builtin_popcount(mask);
      if (used + n > slots) continue;
      ranks[e].clear();
      for (int r = 0; r < ep; ++r) {
        if (mask & (1 << r)) ranks[e].push_back(r);
      }
      go(e + 1, used + n);
    }
  };
  go(0, 0);
  return best;
}

void ExpectValid(const LayerBalance& b, const std::vector<double>& load, int ep, int cap,
                 int max_replicas) {
  ASSERT_EQ(b.expert_ranks.size(), load.size());
  std::vector<int> held(ep, 0);
  int replicas = 0;
  for (const std::vector<int>& rs : b.expert_ranks) {
    ASSERT_FALSE(rs.empty());
    EXPECT_TRUE(std::is_sorted(rs.begin(), rs.end()));
    EXPECT_EQ(std::adjacent_find(rs.begin(), rs.end()), rs.end());
    for (int r : rs) {
      ASSERT_GE(r, 0);
      ASSERT_LT(r, ep);
      ++held[r];
    }
    replicas += static_cast<int>(rs.size());
  }
  for (int h : held) EXPECT_LE(h, cap);
  EXPECT_LE(replicas, max_replicas);
  // Every token is somewhere.
  EXPECT_NEAR(std::accumulate(b.rank_load.begin(), b.rank_load.end(), 0.0),
              std::accumulate(load.begin(), load.end(), 0.0), 1e-6);
}

TEST(ExpertBalance, LocalSearchFixesWhatHeaviestFirstPackingMisses) {
  // Heaviest first gives {3, 2, 2} and {3, 2}: 7. The optimum is {3, 3} and {2, 2, 2}: 6.
  const std::vector<double> load = {3, 3, 2, 2, 2};
  auto ref = BalanceLayerEplb(load, {.ep = 2});
  auto ours = BalanceLayer(load, {.ep = 2});
  ASSERT_TRUE(ref.ok() && ours.ok());
  EXPECT_EQ(ref->max_load(), 7);
  EXPECT_EQ(ours->max_load(), 6);
  EXPECT_EQ(OptimalMaxLoad(load, 2, 5, 3), 6);
  EXPECT_EQ(ours->mean_load(), 6);
}

TEST(ExpertBalance, AHotExpertIsReplicatedOntoEveryRank) {
  const std::vector<double> load = {800, 40, 40, 40, 40, 20, 10, 10};
  auto b = BalanceLayer(load, {.ep = 4, .redundant = 3});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_THAT(b->expert_ranks[0], ElementsAre(0, 1, 2, 3));
  ExpectValid(*b, load, 4, 3, 11);
  // Without replicas the hot expert alone sets the max.
  auto plain = BalanceLayer(load, {.ep = 4});
  ASSERT_TRUE(plain.ok());
  // Two experts per rank: the hot one shares a rank with the lightest, 800 + 10.
  EXPECT_EQ(plain->max_load(), 810);
  // 200 of the hot expert on each rank, the seven others paired to at most 60 per rank: the
  // optimum (three replicas of the hot expert would leave 266 on a rank).
  EXPECT_EQ(b->max_load(), 260);
}

TEST(ExpertBalance, MatchesTheOptimumOnSmallCases) {
  const std::vector<std::vector<double>> loads = {
      {10, 10, 10, 10}, {10, 1, 1, 1}, {5, 4, 3, 2, 1}, {9, 7, 6, 5, 4, 3}, {1, 1, 1, 1, 1, 1}};
  for (const auto& load : loads) {
    for (int redundant : {0, 1, 2}) {
      const int E = static_cast<int>(load.size());
      const int cap = (E + redundant + 1) / 2;
      auto b = BalanceLayer(load, {.ep = 2, .redundant = redundant});
      ASSERT_TRUE(b.ok());
      ExpectValid(*b, load, 2, cap, E + redundant);
      EXPECT_NEAR(b->max_load(), OptimalMaxLoad(load, 2, E + redundant, cap), 1e-9)
          << "load[0] " << load[0] << " redundant " << redundant;
    }
  }
}

TEST(ExpertBalance, NeverWorseThanTheReferenceOnSkewedLoads) {
  std::mt19937 rng(7);
  int better = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const int E = 8 + static_cast<int>(rng() % 57);
    const int ep = 2 + static_cast<int>(rng() % 7);
    const int redundant = static_cast<int>(rng() % (E / 2 + 1));
    std::vector<double> load(E);
    const double skew = 0.5 + (rng() % 100) / 50.0;  // Zipf exponents 0.5 .. 2.5
    for (int e = 0; e < E; ++e) load[e] = std::floor(1e5 / std::pow(e + 1, skew));
    std::shuffle(load.begin(), load.end(), rng);
    const ExpertBalanceOptions o{.ep = ep, .redundant = redundant};
    auto ref = BalanceLayerEplb(load, o);
    auto ours = BalanceLayer(load, o);
    ASSERT_TRUE(ref.ok() && ours.ok());
    const int cap = (E + redundant + ep - 1) / ep;
    ExpectValid(*ref, load, ep, cap, E + redundant);
    ExpectValid(*ours, load, ep, cap, E + redundant);
    EXPECT_LE(ours->max_load(), ref->max_load() * (1 + 1e-12));
    if (ours->max_load() < ref->max_load() * (1 - 1e-9)) ++better;
  }
  EXPECT_GT(better, 0);  // the local search does find something
}

TEST(ExpertBalance, CapacityIsRespectedAndTooLittleIsRefused) {
  const std::vector<double> load = {50, 40, 30, 20, 10, 5};
  auto b = BalanceLayer(load, {.ep = 3, .redundant = 3, .capacity = {1, 3, 3}});
  ASSERT_TRUE(b.ok()) << b.status();
  int on_rank0 = 0;
  for (const auto& rs : b->expert_ranks) on_rank0 += std::count(rs.begin(), rs.end(), 0);
  EXPECT_EQ(on_rank0, 1);
  ExpectValid(*b, load, 3, 3, 9);

  auto none = BalanceLayer(load, {.ep = 3, .capacity = {1, 2, 2}});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("fewer than its 6 experts"));
}

TEST(ExpertBalance, BadOptionsNameTheField) {
  const std::vector<double> load = {1, 2};
  EXPECT_THAT(std::string(BalanceLayer(load, {.ep = 0}).status().message()), HasSubstr("ep:"));
  EXPECT_THAT(std::string(BalanceLayer(load, {.ep = 2, .redundant = -1}).status().message()),
              HasSubstr("redundant:"));
  EXPECT_THAT(std::string(BalanceLayer(load, {.ep = 2, .capacity = {1}}).status().message()),
              HasSubstr("capacity:"));
  const std::vector<double> negative = {1, -2};
  EXPECT_THAT(std::string(BalanceLayer(negative, {.ep = 2}).status().message()),
              HasSubstr("load[1]"));
}

ModelConfig Config(int layers, int experts) {
  ModelConfig c;
  c.num_hidden_layers = layers;
  c.num_local_experts = experts;
  return c;
}

TEST(ExpertLoads, ParsesClusterStatusJsonAndPlainRows) {
  const ModelConfig cfg = Config(2, 3);
  // `switchyard client status --json` writes int64 as strings.
  auto a = ParseExpertLoads(
      R"({"ep": 2, "expert_token_counts": [{"tokens": ["5", "0", "7"]}, {"tokens": ["1", "2", "3"]}]})",
      "status.json", cfg);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_THAT((*a)[0], ElementsAre(5, 0, 7));
  auto b = ParseExpertLoads("[[1, 2, 3], [4.5, 0, 1]]", "rows.json", cfg);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_THAT((*b)[1], ElementsAre(4.5, 0, 1));
  EXPECT_TRUE(
      ParseExpertLoads(R"({"expert_token_counts": [[1, 2, 3], [4, 5, 6]]})", "x", cfg).ok());

  auto rows = ParseExpertLoads("[[1, 2, 3]]", "f.json", cfg);
  EXPECT_THAT(std::string(rows.status().message()),
              HasSubstr("f.json: want one row per layer (2)"));
  auto width = ParseExpertLoads("[[1, 2], [1, 2, 3]]", "f.json", cfg);
  EXPECT_THAT(std::string(width.status().message()), HasSubstr("f.json: layer 0: want 3 numbers"));
  auto neg = ParseExpertLoads("[[1, -2, 3], [1, 2, 3]]", "f.json", cfg);
  EXPECT_THAT(std::string(neg.status().message()), HasSubstr("layer 0 expert 1"));
  auto word = ParseExpertLoads(R"([[1, "x", 3], [1, 2, 3]])", "f.json", cfg);
  EXPECT_THAT(std::string(word.status().message()), HasSubstr("layer 0 expert 1: not a number"));
  EXPECT_FALSE(ParseExpertLoads("{", "f.json", cfg).ok());
  EXPECT_EQ(LoadExpertLoads("/nonexistent/loads.json", cfg).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ExpertLoads, CountsARoutingTrace) {
  const ModelConfig cfg = Config(2, 3);
  const std::string trace =
      "{\"model\": \"m\", \"layers\": 2, \"experts\": 3, \"top_k\": 2, \"tokens\": 2}\n"
      "{\"position\": 0, \"experts\": [[0, 2], [1, 2]], \"weights\": [[0.6, 0.4], [0.5, 0.5]]}\n"
      "{\"position\": 1, \"experts\": [[2, 1], [1, 0]], \"weights\": [[0.7, 0.3], [0.9, 0.1]]}\n";
  auto loads = ParseExpertLoads(trace, "t.jsonl", cfg);
  ASSERT_TRUE(loads.ok()) << loads.status();
  EXPECT_THAT((*loads)[0], ElementsAre(1, 1, 2));
  EXPECT_THAT((*loads)[1], ElementsAre(1, 2, 1));
  auto other = ParseExpertLoads(
      "{\"layers\": 4, \"experts\": 3}\n{\"experts\": [[0]]}\n", "t.jsonl", cfg);
  EXPECT_THAT(std::string(other.status().message()),
              HasSubstr("t.jsonl: line 1: a trace of 4 layers x 3 experts, the model has 2 x 3"));
  auto bad = ParseExpertLoads(
      "{\"layers\": 2, \"experts\": 3}\n{\"experts\": [[0], [3]]}\n", "t.jsonl", cfg);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("t.jsonl: line 2: layer 1: expert 3 outside [0, 3)"));
  auto cut = ParseExpertLoads("{\"layers\": 2, \"experts\": 3}\n{\"experts\": [[0], [1\n",
                              "t.jsonl", cfg);
  EXPECT_THAT(std::string(cut.status().message()), HasSubstr("t.jsonl: line 2: not a JSON object"));
}

TEST(ExpertLoads, PlanFromLoadsBalancesEachLayerOnItsStage) {
  ModelConfig cfg = Config(4, 4);
  cfg.hidden_size = 8;
  cfg.intermediate_size = 8;
  cfg.num_attention_heads = 1;
  cfg.num_key_value_heads = 1;
  cfg.vocab_size = 16;
  auto base = PlanPlacement(cfg, /*ep=*/2, /*pp=*/2);
  ASSERT_TRUE(base.ok()) << base.status();
  const std::vector<std::vector<double>> load = {
      {100, 1, 1, 1}, {1, 1, 1, 1}, {1, 100, 1, 1}, {1, 1, 1, 1}};
  auto plan = PlanFromLoads(*base, load, /*redundant=*/1, /*capacity=*/{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->expert_ranks[0][0], ElementsAre(0, 1));
  EXPECT_THAT(plan->expert_ranks[2][1], ElementsAre(0, 1));
  EXPECT_EQ(plan->stage_layers, base->stage_layers);
  // Capacity per world rank: the ranks of layer 2's stage hold at most 2 experts of a layer,
  // so its hot expert gets no second replica.
  const int s2 = base->StageOfLayer(2);
  std::vector<int> capacity(4, 3);
  capacity[s2 * 2] = capacity[s2 * 2 + 1] = 2;
  auto tight = PlanFromLoads(*base, load, 1, capacity);
  ASSERT_TRUE(tight.ok()) << tight.status();
  EXPECT_EQ(tight->expert_ranks[2][1].size(), 1u);
  capacity[s2 * 2] = capacity[s2 * 2 + 1] = 1;
  auto none = PlanFromLoads(*base, load, 0, capacity);
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr(absl::StrCat("layer ", base->stage_layers[s2].first, ": capacity")));
}

}  // namespace
}  // namespace switchyard
