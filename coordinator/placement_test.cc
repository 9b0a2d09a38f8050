#include "coordinator/placement.h"

#include <cstdio>
#include <fstream>
#include <numeric>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace switchyard {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Stages = std::vector<std::pair<int, int>>;

// models/brown-moe/config.json, built in code.
ModelConfig BrownMoe() {
  ModelConfig c;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.num_local_experts = 8;
  c.num_experts_per_tok = 2;
  c.vocab_size = 4096;
  c.max_position_embeddings = 1024;
  return c;
}

// Parameter counts of brown-moe, worked by hand.
constexpr uint64_t kAttention = 256 * 256 * 2 + 256 * 64 * 2 + 2 * 256;  // 164352
constexpr uint64_t kRouter = 8 * 256;
constexpr uint64_t kExpert = 3 * 256 * 512;  // 393216
constexpr uint64_t kEmbedding = 4096 * 256;  // 1048576
constexpr uint64_t kTotalParams = 2 * kEmbedding + 4 * (kAttention + kRouter + 8 * kExpert) + 256;

TEST(PlanPlacement, BrownMoeParamsMatchConfig) {
  EXPECT_EQ(kTotalParams, 15345920u);
  EXPECT_EQ(static_cast<uint64_t>(BrownMoe().TotalParams()), kTotalParams);
}

struct Shape {
  int ep, pp;
  Stages stages;
};

class PlanShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(PlanShapes, CutsCoverLayersAndEveryExpertHasOneRank) {
  const ModelConfig cfg = BrownMoe();
  const Shape& s = GetParam();
  auto plan = PlanPlacement(cfg, s.ep, s.pp);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->ep, s.ep);
  EXPECT_EQ(plan->pp, s.pp);
  EXPECT_EQ(plan->world_size(), s.ep * s.pp);
  EXPECT_EQ(plan->stage_layers, s.stages);

  // Contiguous, non-empty, covering.
  int next = 0;
  for (const auto& [b, e] : plan->stage_layers) {
    EXPECT_EQ(b, next);
    EXPECT_LT(b, e);
    next = e;
  }
  EXPECT_EQ(next, 4);
  for (int l = 0; l < 4; ++l) {
    const int stage = plan->StageOfLayer(l);
    ASSERT_GE(stage, 0);
    EXPECT_GE(l, plan->stage_layers[stage].first);
    EXPECT_LT(l, plan->stage_layers[stage].second);
  }
  EXPECT_EQ(plan->StageOfLayer(4), -1);
  EXPECT_EQ(plan->StageOfLayer(-1), -1);

  // Every expert of every layer is held by exactly one rank of the layer's stage.
  std::vector<std::vector<int>> holders(4, std::vector<int>(8, 0));
  for (int r = 0; r < plan->world_size(); ++r) {
    ShardSpec spec = plan->ShardFor(r, cfg);
    const int stage = r / s.ep;
    EXPECT_EQ(spec.layer_begin, plan->stage_layers[stage].first);
    EXPECT_EQ(spec.layer_end, plan->stage_layers[stage].second);
    EXPECT_EQ(spec.has_embedding, stage == 0) << "rank " << r;
    EXPECT_EQ(spec.has_head, stage == s.pp - 1) << "rank " << r;
    ASSERT_EQ(static_cast<int>(spec.local_experts.size()), spec.layer_end - spec.layer_begin);
    for (int l = spec.layer_begin; l < spec.layer_end; ++l) {
      for (int e : spec.local_experts[l - spec.layer_begin]) {
        EXPECT_EQ(e % s.ep, r % s.ep);  // default: expert e on ep rank e % ep
        ++holders[l][e];
      }
    }
  }
  for (int l = 0; l < 4; ++l) {
    for (int e = 0; e < 8; ++e) EXPECT_EQ(holders[l][e], 1) << "layer " << l << " expert " << e;
  }
}

INSTANTIATE_TEST_SUITE_P(
    BrownMoe, PlanShapes,
    ::testing::Values(Shape{1, 1, {{0, 4}}}, Shape{2, 1, {{0, 4}}}, Shape{3, 1, {{0, 4}}},
                      Shape{8, 1, {{0, 4}}}, Shape{1, 2, {{0, 2}, {2, 4}}},
                      Shape{2, 2, {{0, 2}, {2, 4}}}, Shape{1, 4, {{0, 1}, {1, 2}, {2, 3}, {3, 4}}}),
    [](const ::testing::TestParamInfo<Shape>& info) {
      return "ep" + std::to_string(info.param.ep) + "_pp" + std::to_string(info.param.pp);
    });

TEST(PlanPlacement, EightExpertsOnThreeRanks) {
  const ModelConfig cfg = BrownMoe();
  auto plan = PlanPlacement(cfg, 3, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::vector<int> counts;
  for (int r = 0; r < 3; ++r) {
    ShardSpec spec = plan->ShardFor(r, cfg);
    ASSERT_EQ(spec.local_experts.size(), 4u);
    for (const auto& experts : spec.local_experts) {
      EXPECT_EQ(experts, spec.local_experts[0]);  // the same in every layer
    }
    counts.push_back(static_cast<int>(spec.local_experts[0].size()));
  }
  EXPECT_THAT(counts, ElementsAre(3, 3, 2));
  EXPECT_THAT(plan->ShardFor(0, cfg).local_experts[0], ElementsAre(0, 3, 6));
  EXPECT_THAT(plan->ShardFor(1, cfg).local_experts[0], ElementsAre(1, 4, 7));
  EXPECT_THAT(plan->ShardFor(2, cfg).local_experts[0], ElementsAre(2, 5));
}

TEST(PlanPlacement, ShardForFlagsLayersAndExperts) {
  const ModelConfig cfg = BrownMoe();
  auto plan = PlanPlacement(cfg, 2, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // World rank 3 = stage 1, ep rank 1.
  ShardSpec s3 = plan->ShardFor(3, cfg);
  EXPECT_EQ(s3.layer_begin, 2);
  EXPECT_EQ(s3.layer_end, 4);
  EXPECT_FALSE(s3.has_embedding);
  EXPECT_TRUE(s3.has_head);
  ASSERT_EQ(s3.local_experts.size(), 2u);
  EXPECT_THAT(s3.local_experts[0], ElementsAre(1, 3, 5, 7));
  EXPECT_THAT(s3.local_experts[1], ElementsAre(1, 3, 5, 7));
  // World rank 0 = stage 0, ep rank 0.
  ShardSpec s0 = plan->ShardFor(0, cfg);
  EXPECT_EQ(s0.layer_begin, 0);
  EXPECT_EQ(s0.layer_end, 2);
  EXPECT_TRUE(s0.has_embedding);
  EXPECT_FALSE(s0.has_head);
  EXPECT_THAT(s0.local_experts[0], ElementsAre(0, 2, 4, 6));
  // Out of range: an empty shard.
  ShardSpec none = plan->ShardFor(4, cfg);
  EXPECT_EQ(none.layer_begin, none.layer_end);
  EXPECT_FALSE(none.has_embedding);
  EXPECT_FALSE(none.has_head);
  EXPECT_TRUE(none.local_experts.empty());
}

TEST(PlanPlacement, WholeModelShardEqualsShardSpecWhole) {
  const ModelConfig cfg = BrownMoe();
  auto plan = PlanPlacement(cfg, 1, 1);
  ASSERT_TRUE(plan.ok());
  ShardSpec got = plan->ShardFor(0, cfg), want = ShardSpec::Whole(cfg);
  EXPECT_EQ(got.layer_begin, want.layer_begin);
  EXPECT_EQ(got.layer_end, want.layer_end);
  EXPECT_EQ(got.has_embedding, want.has_embedding);
  EXPECT_EQ(got.has_head, want.has_head);
  EXPECT_EQ(got.local_experts, want.local_experts);
}

TEST(PlanPlacement, RefusesBadShapes) {
  const ModelConfig cfg = BrownMoe();
  auto too_many = PlanPlacement(cfg, 1, 5);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(too_many.status().message(),
            "--pp 5 exceeds the model's 4 layers: every pipeline stage needs at least one layer");
  auto no_pp = PlanPlacement(cfg, 2, 0);
  EXPECT_EQ(no_pp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(no_pp.status().message(), "--pp must be at least 1, got 0");
  auto no_ep = PlanPlacement(cfg, 0, 1);
  EXPECT_EQ(no_ep.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(no_ep.status().message(), "--ep must be at least 1, got 0");
  EXPECT_TRUE(PlanPlacement(cfg, 1, 4).ok());
}

TEST(CheckWorldSize, NamesTheFix) {
  EXPECT_TRUE(CheckWorldSize(8, 4, 2).ok());
  absl::Status st = CheckWorldSize(6, 4, 2);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(),
            "world size 6 does not equal --ep 4 x --pp 2 = 8: launch with mpirun -np 8, or "
            "change --ep/--pp");
}

TEST(PlanPlacement, CostModel) {
  const ModelConfig cfg = BrownMoe();
  // ep * (attention + router) + 8 experts.
  EXPECT_EQ(LayerCostTimesEp(cfg, 1), int64_t{3312128});
  EXPECT_EQ(LayerCostTimesEp(cfg, 2), int64_t{2 * 166400 + 8 * 393216});
  EXPECT_EQ(HeadCostTimesEp(cfg, 1), int64_t{4096 * 256 + 256});
  EXPECT_EQ(HeadCostTimesEp(cfg, 2), int64_t{2 * (4096 * 256 + 256)});
}

TEST(PlanPlacement, HeavyHeadGivesLastStageFewerLayers) {
  ModelConfig cfg = BrownMoe();
  // brown-moe: layer 3.31M params, lm_head 1.05M: [0,2) [2,4) costs 6.62M / 7.67M.
  auto plan = PlanPlacement(cfg, 1, 2);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->stage_layers, (Stages{{0, 2}, {2, 4}}));
  // vocab 16384: lm_head 4.19M, so [0,2) [2,4) would cost 10.82M on the last stage, while
  // [0,3) [3,4) costs 9.94M / 7.51M.
  cfg.vocab_size = 16384;
  plan = PlanPlacement(cfg, 1, 2);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->stage_layers, (Stages{{0, 3}, {3, 4}}));
  // A huge vocabulary (65536: lm_head 16.8M params, about five layers' worth) on 12 layers and
  // 3 stages: the last stage gets one layer (cost 6.07 layers), the others 6 and 5.
  cfg.vocab_size = 65536;
  cfg.num_hidden_layers = 12;
  plan = PlanPlacement(cfg, 1, 3);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->stage_layers, (Stages{{0, 6}, {6, 11}, {11, 12}}));
}

TEST(PlanPlacement, TiesGiveEarlierStagesMoreLayers) {
  // 4 layers on 3 stages: sizes (2,1,1) and (1,2,1) both cost 2 layers at most.
  auto plan = PlanPlacement(BrownMoe(), 1, 3);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->stage_layers, (Stages{{0, 2}, {2, 3}, {3, 4}}));
}

// Placement files.

class PlacementFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& text) {
    std::string path = ::testing::TempDir() + "/placement_test_" + name + ".json";
    std::ofstream(path) << text;
    paths_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const auto& p : paths_) std::remove(p.c_str());
  }
  // Loads `text` for brown-moe with --ep 2 --pp 2 and expects kInvalidArgument whose message
  // names the file and every string of `needles`.
  void ExpectRefused(const std::string& name, const std::string& text,
                     const std::vector<std::string>& needles) {
    const std::string path = Write(name, text);
    auto plan = LoadPlacementFile(path, cfg_, 2, 2);
    ASSERT_FALSE(plan.ok()) << name << " was accepted";
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << plan.status();
    const std::string msg(plan.status().message());
    EXPECT_THAT(msg, testing::StartsWith(path + ":")) << name;  // "path: ..." or "path:3:11: ..."
    for (const auto& n : needles) EXPECT_THAT(msg, HasSubstr(n)) << name;
  }
  ModelConfig cfg_ = BrownMoe();
  std::vector<std::string> paths_;
};

// Found by fuzz/placement_fuzzer: a number beyond a double made the JSON library throw
// out_of_range, which escaped the parser.
TEST_F(PlacementFileTest, ANumberTooLargeForADoubleIsInvalidJsonNotACrash) {
  ExpectRefused("huge", R"({"ep": 1e400})", {"invalid JSON", "number overflow"});
}

TEST_F(PlacementFileTest, ExampleFromTheDocs) {
  auto plan = LoadPlacementFile(Write("example", R"({"ep": 2, "pp": 2, "stages": [[0, 3], [3, 4]],
      "experts": {"0": [0], "1": [1, 0]}, "layer_experts": {"3": {"5": [1], "2": [0, 1]}}})"),
                                cfg_, 2, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->stage_layers, (Stages{{0, 3}, {3, 4}}));
  for (int l = 0; l < 4; ++l) {
    EXPECT_THAT(plan->expert_ranks[l][0], ElementsAre(0));
    EXPECT_THAT(plan->expert_ranks[l][1], ElementsAre(0, 1));  // replicas, sorted
    EXPECT_THAT(plan->expert_ranks[l][4], ElementsAre(0));     // not listed: 4 % 2
    EXPECT_THAT(plan->expert_ranks[l][7], ElementsAre(1));
  }
  EXPECT_THAT(plan->expert_ranks[0][5], ElementsAre(1));
  EXPECT_THAT(plan->expert_ranks[3][5], ElementsAre(1));
  EXPECT_THAT(plan->expert_ranks[2][2], ElementsAre(0));
  EXPECT_THAT(plan->expert_ranks[3][2], ElementsAre(0, 1));
  // Rank 3 = stage 1 (layer 3), ep rank 1.
  ShardSpec s3 = plan->ShardFor(3, cfg_);
  EXPECT_EQ(s3.layer_begin, 3);
  EXPECT_EQ(s3.layer_end, 4);
  EXPECT_THAT(s3.local_experts[0], ElementsAre(1, 2, 3, 5, 7));
}

TEST_F(PlacementFileTest, EmptyObjectIsTheDefaultPlan) {
  auto plan = LoadPlacementFile(Write("empty", "{}"), cfg_, 2, 2);
  auto def = PlanPlacement(cfg_, 2, 2);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(def.ok());
  EXPECT_EQ(plan->stage_layers, def->stage_layers);
  EXPECT_EQ(plan->expert_ranks, def->expert_ranks);
}

TEST_F(PlacementFileTest, ReplicasAccepted) {
  auto plan = LoadPlacementFile(Write("replicas", R"({"experts": {"0": [0, 1]}})"), cfg_, 2, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->ShardFor(0, cfg_).local_experts[0], ElementsAre(0, 2, 4, 6));
  EXPECT_THAT(plan->ShardFor(1, cfg_).local_experts[0], ElementsAre(0, 1, 3, 5, 7));
  // The replica costs one more expert per layer on rank 1.
  auto fp = Footprints(*plan, cfg_, 2);
  auto def = Footprints(*PlanPlacement(cfg_, 2, 1), cfg_, 2);
  EXPECT_EQ(fp[0].weight_bytes, def[0].weight_bytes);
  EXPECT_EQ(fp[1].weight_bytes, def[1].weight_bytes + 4 * kExpert * 2);
}

TEST_F(PlacementFileTest, RoundTrip) {
  PlacementPlan plan = *PlanPlacement(cfg_, 2, 2);
  plan.stage_layers = {{0, 3}, {3, 4}};
  plan.expert_ranks[0][1] = {0, 1};
  plan.expert_ranks[1][1] = {0, 1};
  plan.expert_ranks[2][1] = {0, 1};
  plan.expert_ranks[3][6] = {1};
  plan.expert_ranks[3][7] = {0, 1};
  nlohmann::json j = PlacementToJson(plan);
  EXPECT_EQ(j["ep"], 2);
  EXPECT_EQ(j["pp"], 2);
  EXPECT_EQ(j["stages"], nlohmann::json::parse("[[0, 3], [3, 4]]"));
  EXPECT_EQ(j["experts"]["1"], nlohmann::json::parse("[0, 1]"));  // 3 of 4 layers
  EXPECT_EQ(j["experts"]["6"], nlohmann::json::parse("[0]"));
  EXPECT_EQ(j["layer_experts"],
            nlohmann::json::parse(R"({"3": {"1": [1], "6": [1], "7": [0, 1]}})"));

  auto back = LoadPlacementFile(Write("roundtrip", j.dump()), cfg_, 2, 2);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ep, 2);
  EXPECT_EQ(back->pp, 2);
  EXPECT_EQ(back->stage_layers, plan.stage_layers);
  EXPECT_EQ(back->expert_ranks, plan.expert_ranks);

  // The default plan has no per-layer overrides, and round-trips too.
  PlacementPlan def = *PlanPlacement(cfg_, 3, 1);
  nlohmann::json jd = PlacementToJson(def);
  EXPECT_FALSE(jd.contains("layer_experts"));
  auto def_back = LoadPlacementFile(Write("roundtrip_default", jd.dump()), cfg_, 3, 1);
  ASSERT_TRUE(def_back.ok()) << def_back.status();
  EXPECT_EQ(def_back->stage_layers, def.stage_layers);
  EXPECT_EQ(def_back->expert_ranks, def.expert_ranks);
}

TEST_F(PlacementFileTest, RefusesInvalidFiles) {
  ExpectRefused("not_json", "{\"ep\": 2,", {"invalid JSON"});
  // Line and column of the fault, as editors and compilers print them.
  ExpectRefused("bad_line", "{\n  \"ep\": 2,\n  \"pp\": 2 x\n}", {".json:3:11: invalid JSON: "});
  ExpectRefused("not_object", "[1, 2]", {"JSON object"});
  ExpectRefused("unknown_key", R"({"expert": {}})", {"expert: unknown key"});
  ExpectRefused("ep_mismatch", R"({"ep": 4})", {"ep: 4 disagrees with --ep 2"});
  ExpectRefused("pp_mismatch", R"({"pp": 1})", {"pp: 1 disagrees with --pp 2"});
  ExpectRefused("ep_not_int", R"({"ep": "2"})", {"ep: expected an integer"});
  // Stages.
  ExpectRefused("stages_not_list", R"({"stages": {"0": [0, 2]}})", {"stages: expected a list"});
  ExpectRefused("stages_count", R"({"stages": [[0, 4]]})",
                {"stages: has 1 entries, expected one per stage (--pp 2)"});
  ExpectRefused("stages_overlap", R"({"stages": [[0, 2], [1, 4]]})",
                {"stages[1]: begins at layer 1 but stage 0 ends at 2: stages overlap"});
  ExpectRefused("stages_gap", R"({"stages": [[0, 1], [2, 4]]})",
                {"stages[1]: begins at layer 2 but stage 0 ends at 1: layers [1, 2) are in no "
                 "stage"});
  ExpectRefused("stages_late_start", R"({"stages": [[1, 2], [2, 4]]})",
                {"stages[0]: begins at layer 1: layers [0, 1) are in no stage"});
  ExpectRefused("stages_empty", R"({"stages": [[0, 0], [0, 4]]})", {"stages[0]: [0, 0) is empty"});
  ExpectRefused("stages_reversed", R"({"stages": [[0, 2], [3, 2]]})",
                {"stages[1]: [3, 2) is empty"});
  ExpectRefused("stages_short", R"({"stages": [[0, 1], [1, 3]]})",
                {"stages: cover layers [0, 3) but the model has 4 layers"});
  ExpectRefused("stages_past_end", R"({"stages": [[0, 2], [2, 5]]})",
                {"stages[1]: [2, 5) lies outside the model's layers [0, 4)"});
  ExpectRefused("stages_bad_pair", R"({"stages": [[0, 2], [2]]})",
                {"stages[1]: expected [begin, end) as two integers"});
  ExpectRefused("stages_float", R"({"stages": [[0, 2.0], [2, 4]]})", {"stages[0]: expected"});
  // Expert ids.
  ExpectRefused("experts_not_object", R"({"experts": [[0]]})", {"experts: expected an object"});
  ExpectRefused("expert_out_of_range", R"({"experts": {"8": [0]}})",
                {"experts: expert id 8 outside [0, 8)"});
  for (const char* key : {"x", "-1", "01", "1.0", "", " 1"}) {
    ExpectRefused("expert_not_int", std::string(R"({"experts": {")") + key + R"(": [0]}})",
                  {std::string("experts: key \"") + key + "\" is not a valid expert id"});
  }
  // Rank lists.
  ExpectRefused("ranks_not_list", R"({"experts": {"1": 0}})",
                {"experts.\"1\": expected a list of EP ranks"});
  ExpectRefused("ranks_empty", R"({"experts": {"1": []}})", {"experts.\"1\": rank list is empty"});
  ExpectRefused("rank_out_of_range", R"({"experts": {"1": [0, 2]}})",
                {"experts.\"1\"[1]: rank 2 outside [0, 2)"});
  ExpectRefused("rank_negative", R"({"experts": {"1": [-1]}})",
                {"experts.\"1\"[0]: rank -1 outside [0, 2)"});
  ExpectRefused("rank_duplicated", R"({"experts": {"1": [1, 1]}})",
                {"experts.\"1\"[1]: rank 1 listed twice"});
  ExpectRefused("rank_not_int", R"({"experts": {"1": ["0"]}})",
                {"experts.\"1\"[0]: rank \"0\" is not an integer"});
  // Layers.
  ExpectRefused("layer_experts_not_object", R"({"layer_experts": [1]})",
                {"layer_experts: expected an object"});
  ExpectRefused("layer_out_of_range", R"({"layer_experts": {"4": {"0": [0]}}})",
                {"layer_experts: layer id 4 outside [0, 4)"});
  ExpectRefused("layer_not_int", R"({"layer_experts": {"a": {"0": [0]}}})",
                {"layer_experts: key \"a\" is not a valid layer id"});
  ExpectRefused("layer_expert_out_of_range", R"({"layer_experts": {"3": {"9": [0]}}})",
                {"layer_experts.\"3\": expert id 9 outside [0, 8)"});
  ExpectRefused("layer_expert_ranks_empty", R"({"layer_experts": {"3": {"5": []}}})",
                {"layer_experts.\"3\".\"5\": rank list is empty"});
  ExpectRefused("layer_not_object", R"({"layer_experts": {"3": [0]}})",
                {"layer_experts.\"3\": expected an object"});
}

TEST_F(PlacementFileTest, MissingFileAndBadFlags) {
  auto missing = LoadPlacementFile(::testing::TempDir() + "/no_such_placement.json", cfg_, 2, 2);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no_such_placement.json"));
  auto bad_pp = LoadPlacementFile(Write("ok", "{}"), cfg_, 2, 5);
  EXPECT_EQ(bad_pp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_pp.status().message(), HasSubstr("--pp 5"));
}

// Footprints.

uint64_t Sum(const std::vector<RankStatus>& fps) {
  uint64_t s = 0;
  for (const auto& f : fps) s += f.weight_bytes;
  return s;
}

TEST(Footprints, SingleRankHoldsTheWholeModel) {
  const ModelConfig cfg = BrownMoe();
  auto fps = Footprints(*PlanPlacement(cfg, 1, 1), cfg, 2);
  ASSERT_EQ(fps.size(), 1u);
  EXPECT_EQ(fps[0].weight_bytes, 2 * kTotalParams);
  EXPECT_EQ(fps[0].weight_bytes, 30691840u);
  EXPECT_TRUE(fps[0].has_embedding);
  EXPECT_TRUE(fps[0].has_head);
  // bf16 vs fp32.
  EXPECT_EQ(Footprints(*PlanPlacement(cfg, 1, 1), cfg, 4)[0].weight_bytes, 4 * kTotalParams);
}

TEST(Footprints, ExpertParallelSumIsModelPlusReplicatedDenseParts) {
  const ModelConfig cfg = BrownMoe();
  // Per rank, replicated: attention, norms and router of every layer, embedding, final norm
  // and lm_head. Experts are split.
  const uint64_t dense = 4 * (kAttention + kRouter) + 2 * kEmbedding + 256;
  for (int ep : {1, 2, 3, 8}) {
    auto fps = Footprints(*PlanPlacement(cfg, ep, 1), cfg, 2);
    ASSERT_EQ(static_cast<int>(fps.size()), ep);
    EXPECT_EQ(Sum(fps), 2 * (kTotalParams + (ep - 1) * dense)) << "ep " << ep;
  }
  // 8 experts on 3 ranks: 3, 3, 2 experts in each of 4 layers.
  auto fps = Footprints(*PlanPlacement(cfg, 3, 1), cfg, 2);
  EXPECT_EQ(fps[0].weight_bytes, 2 * (dense + 4 * 3 * kExpert));
  EXPECT_EQ(fps[1].weight_bytes, 2 * (dense + 4 * 3 * kExpert));
  EXPECT_EQ(fps[2].weight_bytes, 2 * (dense + 4 * 2 * kExpert));
  EXPECT_THAT(fps[2].experts, ElementsAre(ElementsAre(2, 5), ElementsAre(2, 5), ElementsAre(2, 5),
                                          ElementsAre(2, 5)));
}

TEST(Footprints, PipelineStages) {
  const ModelConfig cfg = BrownMoe();
  auto fps = Footprints(*PlanPlacement(cfg, 2, 2), cfg, 2);
  ASSERT_EQ(fps.size(), 4u);
  const uint64_t layer_half = kAttention + kRouter + 4 * kExpert;  // 4 of 8 experts
  for (int r : {0, 1}) {
    EXPECT_EQ(fps[r].stage, 0);
    EXPECT_EQ(fps[r].ep_rank, r);
    EXPECT_EQ(fps[r].layer_begin, 0);
    EXPECT_EQ(fps[r].layer_end, 2);
    EXPECT_TRUE(fps[r].has_embedding);
    EXPECT_FALSE(fps[r].has_head);
    EXPECT_EQ(fps[r].weight_bytes, 2 * (2 * layer_half + kEmbedding));
  }
  for (int r : {2, 3}) {
    EXPECT_EQ(fps[r].stage, 1);
    EXPECT_EQ(fps[r].ep_rank, r - 2);
    EXPECT_EQ(fps[r].layer_begin, 2);
    EXPECT_EQ(fps[r].layer_end, 4);
    EXPECT_FALSE(fps[r].has_embedding);
    EXPECT_TRUE(fps[r].has_head);
    EXPECT_EQ(fps[r].weight_bytes, 2 * (2 * layer_half + kEmbedding + 256));
  }
  EXPECT_EQ(fps[0].weight_bytes, 9054208u);
  EXPECT_EQ(fps[3].weight_bytes, 9054720u);
}

TEST(Footprints, TiedEmbeddingCountedOnceWhereBothLive) {
  ModelConfig cfg = BrownMoe();
  cfg.tie_word_embeddings = true;
  auto one = Footprints(*PlanPlacement(cfg, 1, 1), cfg, 2);
  EXPECT_EQ(one[0].weight_bytes, 2 * static_cast<uint64_t>(cfg.TotalParams()));
  EXPECT_EQ(one[0].weight_bytes, 2 * (kTotalParams - kEmbedding));
  // With two stages both hold the matrix: as the embedding on stage 0, as lm_head on stage 1.
  auto two = Footprints(*PlanPlacement(cfg, 1, 2), cfg, 2);
  const uint64_t layer = kAttention + kRouter + 8 * kExpert;
  EXPECT_EQ(two[0].weight_bytes, 2 * (2 * layer + kEmbedding));
  EXPECT_EQ(two[1].weight_bytes, 2 * (2 * layer + kEmbedding + 256));
}

// The footprint is what ModelWeights::Load actually binds for the shard.
TEST(Footprints, MatchesLoadedShardsOfBrownMoe) {
  const std::string dir = std::string(SWITCHYARD_SOURCE_ROOT) + "/models/brown-moe";
  auto cfg = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  for (auto [ep, pp] : {std::pair{1, 1}, {2, 2}, {3, 1}, {1, 4}}) {
    PlacementPlan plan = *PlanPlacement(*cfg, ep, pp);
    auto fps = Footprints(plan, *cfg, 2);
    for (int r = 0; r < plan.world_size(); ++r) {
      auto w = ModelWeights::Load(**ckpt, *cfg, plan.ShardFor(r, *cfg), {.prefetch = false});
      ASSERT_TRUE(w.ok()) << w.status();
      EXPECT_EQ((*w)->resident_bytes(), fps[r].weight_bytes)
          << "ep " << ep << " pp " << pp << " rank " << r;
    }
  }
}

TEST(CheckDeviceMemory, NamesTheFirstRankThatDoesNotFit) {
  const ModelConfig cfg = BrownMoe();
  auto fps = Footprints(*PlanPlacement(cfg, 2, 2), cfg, 2);
  EXPECT_TRUE(CheckDeviceMemory(fps, 9054720).ok());
  // Stage 0 ranks need 9054208 bytes and fit; rank 2 is the first that needs 9054720.
  absl::Status st = CheckDeviceMemory(fps, 9054719);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(st.message(),
            "rank 2 (stage 1, ep rank 0) needs 8.6 MiB (9054720 bytes) of weights, more than the "
            "device memory limit of 8.6 MiB (9054719 bytes)");
  st = CheckDeviceMemory(fps, 1 << 20);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("rank 0 (stage 0, ep rank 0) needs 8.6 MiB (9054208 bytes)"));
  EXPECT_THAT(st.message(), HasSubstr("limit of 1.0 MiB (1048576 bytes)"));
}

}  // namespace
}  // namespace switchyard
