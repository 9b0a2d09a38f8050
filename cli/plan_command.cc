// `switchyard plan`: where every layer and expert of a model would live on --ep x --pp ranks,
// and the bytes of weights each rank would hold. Reads config.json (and, when the checkpoint
// opens, the stored dtype); loads no weights and needs no MPI.
//
//   switchyard plan --model models/brown-moe --ep 2 --pp 2 [--placement FILE] [--json]
//                   [--device-memory 80GiB]
//
// Exit codes: 0 success; 1 runtime error (bad config or placement file, pp above the layer
// count, a rank exceeding --device-memory); 2 usage error.
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/run_flags.h"
#include "common/byte_size.h"
#include "common/log.h"
#include "common/progress.h"
#include "coordinator/placement.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace switchyard::cli {
namespace {

using nlohmann::json;

struct PlanArgs {
  std::string model, placement, device_memory;
  int ep = 1, pp = 1;
  bool json = false;
};

int Fail(const absl::Status& st) {
  spdlog::error("{}", st.message());
  return 1;
}

// Bytes per parameter as stored in the checkpoint (its embedding's dtype); 2 (bf16) with a note
// on stderr when the checkpoint cannot be opened.
struct StoredType {
  uint64_t bytes_per_param = 2;
  std::string name = "BF16 (assumed)";
};

StoredType DetectStoredType(const std::string& model) {
  StoredType t;
  auto ckpt = SafetensorsCheckpoint::Open(model);
  absl::Status st = ckpt.status();
  if (ckpt.ok()) {
    auto emb = (*ckpt)->Get("model.embed_tokens.weight");
    if (emb.ok()) {
      t.bytes_per_param = DTypeSize(emb->dtype);
      t.name = DTypeName(emb->dtype);
      return t;
    }
    st = emb.status();
  }
  spdlog::info("{}; assuming 2 bytes per parameter", st.message());
  return t;
}

// "0,2,4,6" when a rank holds the same experts in every layer ("none" for no experts), else
// "L2:0,2 L3:0,2,4".
std::string CompactExperts(const RankStatus& f) {
  auto list = [](const std::vector<int>& ids) {
    return ids.empty() ? std::string("none") : absl::StrJoin(ids, ",");
  };
  bool uniform = true;
  for (const auto& ids : f.experts) uniform = uniform && ids == f.experts.front();
  if (uniform) return f.experts.empty() ? "none" : list(f.experts.front());
  std::vector<std::string> parts;
  for (size_t i = 0; i < f.experts.size(); ++i) {
    parts.push_back(absl::StrCat("L", f.layer_begin + i, ":", list(f.experts[i])));
  }
  return absl::StrJoin(parts, " ");
}

int RunPlan(const PlanArgs& a) {
  auto cfg = LoadModelConfig(a.model + "/config.json");
  if (!cfg.ok()) return Fail(cfg.status());
  auto plan = a.placement.empty() ? PlanPlacement(*cfg, a.ep, a.pp)
                                  : LoadPlacementFile(a.placement, *cfg, a.ep, a.pp);
  if (!plan.ok()) return Fail(plan.status());
  const StoredType stored = DetectStoredType(a.model);
  const std::vector<RankStatus> fps = Footprints(*plan, *cfg, stored.bytes_per_param);

  if (a.json) {
    json ranks = json::array();
    for (const RankStatus& f : fps) {
      ranks.push_back({{"world_rank", f.world_rank},
                       {"stage", f.stage},
                       {"ep_rank", f.ep_rank},
                       {"layers", {f.layer_begin, f.layer_end}},
                       {"experts", f.experts},
                       {"weight_bytes", f.weight_bytes},
                       {"has_embedding", f.has_embedding},
                       {"has_head", f.has_head}});
    }
    json j = {{"ep", plan->ep},
              {"pp", plan->pp},
              {"bytes_per_param", stored.bytes_per_param},
              {"placement", PlacementToJson(*plan)},
              {"ranks", ranks}};
    std::cout << j.dump() << "\n";
  } else {
    std::vector<std::string> stages;
    for (const auto& [b, e] : plan->stage_layers)
      stages.push_back(absl::StrCat("[", b, ", ", e, ")"));
    std::printf("model %s: %d layers, %d experts (top-%d), %s\n", a.model.c_str(),
                cfg->num_hidden_layers, cfg->num_local_experts, cfg->num_experts_per_tok,
                stored.name.c_str());
    std::printf("plan: --ep %d x --pp %d = %d ranks (mpirun -np %d), stages %s, placement %s\n\n",
                plan->ep, plan->pp, plan->world_size(), plan->world_size(),
                absl::StrJoin(stages, " ").c_str(),
                a.placement.empty() ? "balanced default" : a.placement.c_str());
    std::printf("%4s  %5s  %7s  %-9s  %10s  %5s  %4s  %s\n", "rank", "stage", "ep rank", "layers",
                "weights", "embed", "head", "experts");
    for (const RankStatus& f : fps) {
      std::string layers = absl::StrCat("[", f.layer_begin, ", ", f.layer_end, ")");
      std::printf("%4d  %5d  %7d  %-9s  %10s  %5s  %4s  %s\n", f.world_rank, f.stage, f.ep_rank,
                  layers.c_str(), ByteProgress::FormatBytes(f.weight_bytes).c_str(),
                  f.has_embedding ? "yes" : "no", f.has_head ? "yes" : "no",
                  CompactExperts(f).c_str());
    }
  }

  if (!a.device_memory.empty()) {
    auto limit = ParseByteSize(a.device_memory);  // validated at parse time
    if (!limit.ok()) return Fail(limit.status());
    absl::Status fits = CheckDeviceMemory(fps, *limit);
    if (!fits.ok()) return Fail(fits);
    if (!a.json) {
      std::printf("\nevery rank fits in --device-memory %s\n",
                  ByteProgress::FormatBytes(*limit).c_str());
    }
  }
  return 0;
}

}  // namespace

void RegisterPlan(CLI::App& app, Action* action) {
  static PlanArgs args;  // CLI11 binds options to storage that outlives parsing
  PlanArgs* a = &args;
  CLI::App* cmd = app.add_subcommand(
      "plan", "Show where layers and experts go on --ep x --pp ranks, and each rank's bytes");
  cmd->add_option("--model", a->model, "Checkpoint directory (config.json, *.safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--ep", a->ep, "Expert-parallel ranks per pipeline stage")
      ->required()
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--pp", a->pp, "Pipeline stages")->required()->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--placement", a->placement,
                  "Placement JSON file (stages, experts, layer_experts) instead of the "
                  "balanced default")
      ->check(CLI::ExistingFile);
  cmd->add_flag("--json", a->json, "Print one JSON object");
  cmd->add_option("--device-memory", a->device_memory,
                  "Fail naming the first rank whose weights exceed BYTES (e.g. 80GiB; K/M/G/T "
                  "are powers of 1000, KiB/MiB/GiB/TiB of 1024)")
      ->type_name("BYTES")
      ->check(ByteSizeCheck(/*allow_zero=*/false));
  cmd->callback([a, action] { *action = [a] { return RunPlan(*a); }; });
}

}  // namespace switchyard::cli
