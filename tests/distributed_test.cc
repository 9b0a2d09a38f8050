// Expert and pipeline parallelism give the single-rank answers: run under mpirun with N ranks,
// every EP x PP = N layout is opened in turn, with the default placement and (for EP > 1)
// with replicated and unevenly spread experts; rank 0 compares greedy tokens (identical),
// logits (within 1e-4) and perplexity (within 0.01%) with a single-process executor it builds
// beside the job. Every rank also checks it read no tensor outside its shard.
#include <mpi.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "coordinator/model_session.h"
#include "coordinator/perplexity.h"
#include "coordinator/sequence_runner.h"
#include "gtest/gtest.h"
#include "tests/distributed_layouts.h"
#include "nlohmann/json.hpp"
#include "worker/distributed_executor.h"
#include "worker/local_executor.h"

namespace switchyard {
namespace {

const std::string kRoot = SWITCHYARD_SOURCE_ROOT;

int WorldSize() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// The names of the tensors a shard should read.
std::set<std::string> ExpectedTensors(const ShardSpec& spec, const ModelConfig& cfg) {
  std::set<std::string> names;
  if (spec.has_embedding || (spec.has_head && cfg.tie_word_embeddings)) {
    names.insert("model.embed_tokens.weight");
  }
  for (int l = spec.layer_begin; l < spec.layer_end; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    for (const char* n : {"input_layernorm.weight", "post_attention_layernorm.weight",
                          "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                          "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                          "block_sparse_moe.gate.weight"}) {
      names.insert(p + n);
    }
    for (int e : spec.local_experts[l - spec.layer_begin]) {
      for (const char* w : {"w1", "w2", "w3"}) {
        names.insert(absl::StrCat(p, "block_sparse_moe.experts.", e, ".", w, ".weight"));
      }
    }
  }
  if (spec.has_head) {
    names.insert("model.norm.weight");
    if (!cfg.tie_word_embeddings) names.insert("lm_head.weight");
  }
  return names;
}

// A single-process executor over the whole model: the reference.
struct Reference {
  explicit Reference(const std::string& dir) {
    cfg = *LoadModelConfig(dir + "/config.json");
    ckpt = std::move(SafetensorsCheckpoint::Open(dir)).value();
    weights = std::move(ModelWeights::Load(*ckpt, cfg, ShardSpec::Whole(cfg), {})).value();
    const int blocks = cfg.max_position_embeddings / 16;
    exec = std::make_unique<LocalExecutor>(
        *weights, KvPoolOptions{.num_blocks = blocks, .block_size = 16},
        ForwardLimits{.max_tokens = 64, .max_context = cfg.max_position_embeddings});
    alloc = std::make_unique<BlockAllocator>(blocks, 16);
  }
  ModelConfig cfg;
  std::unique_ptr<SafetensorsCheckpoint> ckpt;
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<LocalExecutor> exec;
  std::unique_ptr<BlockAllocator> alloc;
};

using testing_layouts::Layout;
using testing_layouts::LayoutsFor;
using testing_layouts::UnevenPlacementFile;

class DistributedEquality : public testing::TestWithParam<std::string> {};

TEST_P(DistributedEquality, MatchesSingleRank) {
  const std::string dir = kRoot + "/models/" + GetParam();
  std::ifstream in(kRoot + "/tests/data/" + GetParam() + ".json");
  const nlohmann::json fixture = nlohmann::json::parse(in);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::unique_ptr<Reference> ref;
  if (rank == 0) ref = std::make_unique<Reference>(dir);
  const ModelConfig cfg = *LoadModelConfig(dir + "/config.json");

  for (const Layout& layout : LayoutsFor(WorldSize(), cfg.num_hidden_layers)) {
    SCOPED_TRACE(absl::StrCat(GetParam(), " ep ", layout.ep, " x pp ", layout.pp,
                              layout.uneven ? " (replicated, uneven experts)" : ""));
    const std::string placement =
        layout.uneven ? UnevenPlacementFile(layout, cfg.num_local_experts, rank) : "";
    // A small step limit makes long inputs cross several steps and micro-batches.
    auto opened = ModelSession::Open({.model_dir = dir,
                                      .max_step_tokens = 48,
                                      .show_progress = false,
                                      .ep = layout.ep,
                                      .pp = layout.pp,
                                      .placement_file = placement,
                                      .comm_timeout = absl::Seconds(60),
                                      // Routing capture and expert moves: the CPU backend's
                                      // (tests/distributed_cuda_test.cc covers the GPU's).
                                      .device = "cpu"});
    ASSERT_TRUE(opened.ok()) << opened.status();
    ModelSession& s = **opened;
    const ShardSpec spec = s.placement.ShardFor(s.world_rank, cfg);
    EXPECT_EQ(s.checkpoint->Accessed(), ExpectedTensors(spec, cfg))
        << "rank " << s.world_rank << " read tensors outside its shard";
    if (layout.uneven) {  // the placement file took effect: expert 0 is on every rank
      for (const std::vector<int>& held : spec.local_experts) {
        EXPECT_TRUE(std::find(held.begin(), held.end(), 0) != held.end());
      }
    }
    if (!s.is_coordinator()) {
      ASSERT_TRUE(s.RunWorker().ok());
      continue;
    }
    SequenceRunner dist(s.executor.get(), s.allocator(0), s.config);
    SequenceRunner local(ref->exec.get(), ref->alloc.get(), ref->cfg);
    for (const auto& g : fixture["generate"]) {
      auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
      const int n = static_cast<int>(g["greedy_ids"].size());
      auto a = dist.Generate(prompt, {.max_tokens = n}, nullptr);
      auto b = local.Generate(prompt, {.max_tokens = n}, nullptr);
      ASSERT_TRUE(a.ok()) << a.status();
      ASSERT_TRUE(b.ok());
      EXPECT_EQ(a->tokens, b->tokens);
      EXPECT_EQ(a->tokens, g["greedy_ids"].get<std::vector<int32_t>>());
    }
    const int V = cfg.vocab_size;
    for (const auto& sc : fixture["score"]) {
      auto tokens = sc["tokens"].get<std::vector<int32_t>>();
      std::vector<float> la(tokens.size() * V), lb(tokens.size() * V);
      auto keep = [&](std::vector<float>* dst) {
        return [dst, V](int first, int rows, const float* l) {
          std::copy(l, l + static_cast<size_t>(rows) * V, dst->begin() + static_cast<size_t>(first) * V);
        };
      };
      ASSERT_TRUE(dist.Score(tokens, keep(&la)).ok());
      ASSERT_TRUE(local.Score(tokens, keep(&lb)).ok());
      double err = 0;
      for (size_t i = 0; i < la.size(); ++i) err = std::max<double>(err, std::abs(la[i] - lb[i]));
      EXPECT_LE(err, 1e-4);
    }
    // Routing: every layer's choices for every position, as one rank makes them, though the
    // layers ran on different stages and the rows crossed micro-batches and steps.
    const size_t row = static_cast<size_t>(cfg.num_hidden_layers) * cfg.num_experts_per_tok;
    for (const auto& sc : fixture["score"]) {
      auto tokens = sc["tokens"].get<std::vector<int32_t>>();
      std::vector<int32_t> ea(tokens.size() * row, -1), eb(tokens.size() * row, -2);
      std::vector<float> wa(tokens.size() * row), wb(tokens.size() * row);
      auto keep = [row](std::vector<int32_t>* e, std::vector<float>* w) {
        return [=](int first, int rows, const int32_t* experts, const float* weights) {
          std::copy_n(experts, rows * row, e->begin() + first * row);
          std::copy_n(weights, rows * row, w->begin() + first * row);
        };
      };
      ASSERT_TRUE(dist.Route(tokens, keep(&ea, &wa)).ok());
      ASSERT_TRUE(local.Route(tokens, keep(&eb, &wb)).ok());
      EXPECT_EQ(ea, eb);
      double err = 0;
      for (size_t i = 0; i < wa.size(); ++i) err = std::max<double>(err, std::abs(wa[i] - wb[i]));
      EXPECT_LE(err, 1e-4);
    }
    for (const auto& p : fixture["perplexity"]) {
      std::ifstream f(kRoot + "/tests/data/" + p["file"].get<std::string>());
      std::stringstream ss;
      ss << f.rdbuf();
      auto tokens = s.tokenizer->Encode(ss.str(), true);
      PerplexityAccumulator pa(tokens, V), pb(tokens, V);
      ASSERT_TRUE(dist.Score(tokens, [&](int a, int r, const float* l) { pa.Add(a, r, l); }).ok());
      ASSERT_TRUE(local.Score(tokens, [&](int a, int r, const float* l) { pb.Add(a, r, l); }).ok());
      EXPECT_NEAR(pa.perplexity(), pb.perplexity(), pb.perplexity() * 1e-4);
    }
    // Experts moved while the job runs (rebalancing): every rank prepares a placement with
    // replicas and moved experts beside its running shard, all switch before the same step,
    // and greedy outputs stay the fixture's; then back to the original placement.
    if (layout.ep > 1 && !layout.uneven) {
      const ExpertRanks original = s.placement.expert_ranks;
      ExpertRanks moved = original;
      for (auto& layer : moved) {
        for (int e = 0; e < static_cast<int>(layer.size()); ++e) {
          layer[e] = e % 2 == 0 ? std::vector<int>{e % layout.ep, (e + 1) % layout.ep}
                                : std::vector<int>{(e + 1) % layout.ep};
          std::sort(layer[e].begin(), layer[e].end());
        }
      }
      // A placement naming a rank outside the group is refused on rank 0, before any rank
      // sees it; the job goes on.
      ExpertRanks outside = original;
      outside[0][1] = {layout.ep};
      const absl::Status refused = s.distributed_executor()->PrepareExperts(1, outside);
      EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
      EXPECT_NE(refused.message().find("layer 0 expert 1 needs distinct EP ranks"),
                absl::string_view::npos)
          << refused;
      int64_t generation = 0;
      for (const ExpertRanks* target : {static_cast<const ExpertRanks*>(&moved), &original}) {
        ++generation;
        DistributedExecutor* exec = s.distributed_executor();
        ASSERT_TRUE(exec->PrepareExperts(generation, *target).ok());
        for (int tries = 0;; ++tries) {
          auto st = exec->CollectStatus();
          ASSERT_TRUE(st.ok()) << st.status();
          bool ready = true;
          for (const RankStatus& r : *st) ready = ready && r.experts_prepared >= generation;
          if (ready) break;
          ASSERT_LT(tries, 1000) << "the ranks did not prepare placement " << generation;
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        ASSERT_TRUE(exec->SwitchExperts(generation).ok());
        for (const auto& g : fixture["generate"]) {
          auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
          const int n = static_cast<int>(g["greedy_ids"].size());
          auto a = dist.Generate(prompt, {.max_tokens = n}, nullptr);
          ASSERT_TRUE(a.ok()) << a.status();
          EXPECT_EQ(a->tokens, g["greedy_ids"].get<std::vector<int32_t>>())
              << "after moving to placement " << generation;
        }
        auto st = exec->CollectStatus();
        ASSERT_TRUE(st.ok());
        for (const RankStatus& r : *st) {
          EXPECT_EQ(r.experts_active, generation);
          for (int l = r.layer_begin; l < r.layer_end; ++l) {
            std::vector<int> want;
            for (int e = 0; e < cfg.num_local_experts; ++e) {
              const auto& ranks = (*target)[l][e];
              if (std::find(ranks.begin(), ranks.end(), r.ep_rank) != ranks.end()) want.push_back(e);
            }
            EXPECT_EQ(r.experts[l - r.layer_begin], want) << "rank " << r.world_rank << " layer " << l;
          }
        }
      }
    }
    // The status every rank reports: its compute/wait split, and the bytes its expert
    // dispatcher sent, only ever to the other EP ranks of its own stage.
    auto status = s.executor->CollectStatus();
    ASSERT_TRUE(status.ok()) << status.status();
    ASSERT_EQ(static_cast<int>(status->size()), WorldSize());
    for (const RankStatus& r : *status) {
      SCOPED_TRACE(absl::StrCat("rank ", r.world_rank));
      EXPECT_GT(r.compute_seconds, 0);
      EXPECT_GE(r.wait_seconds, 0);
      if (layout.pp > 1 || layout.ep > 1) {
        EXPECT_GT(r.wait_seconds, 0);
      }
      ASSERT_EQ(static_cast<int>(r.dispatch_bytes_sent.size()), WorldSize());
      uint64_t to_stage = 0;
      for (int dst = 0; dst < WorldSize(); ++dst) {
        const bool same_stage = dst / layout.ep == r.stage;
        if (dst == r.world_rank || !same_stage) {
          EXPECT_EQ(r.dispatch_bytes_sent[dst], 0u) << "to rank " << dst;
        } else {
          to_stage += r.dispatch_bytes_sent[dst];
        }
      }
      if (layout.ep > 1) {
        EXPECT_GT(to_stage, 0u);
      }
    }
    ASSERT_TRUE(s.Shutdown().ok());
  }
}

INSTANTIATE_TEST_SUITE_P(Models, DistributedEquality, testing::Values("brown-moe", "tiny-odd"));

}  // namespace
}  // namespace switchyard
