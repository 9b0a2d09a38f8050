// `switchyard plan`: where every layer and expert of a model would live on --ep x --pp ranks,
// and the bytes of weights each rank would hold. Reads config.json (and, when the checkpoint
// opens, the stored dtype); loads no weights and needs no MPI.
//
//   switchyard plan --model models/brown-moe --ep 2 --pp 2 [--placement FILE] [--json]
//                   [--device-memory 80GiB]
//   switchyard plan ... --load status.json --redundant 2 [--out placement.json]
//
// With --load (per-expert token counts: `switchyard client status --json`, or [[...], ...]),
// the experts of every layer are placed by the load planner (coordinator/expert_balance.h)
// with up to --redundant extra replicas per layer, within --device-memory; the per-layer
// max/mean rank load of the given placement, DeepSeek's EPLB and Switchyard's planner are
// printed side by side, and --out writes the planned placement file.
//
// Exit codes: 0 success; 1 runtime error (bad config or placement file, pp above the layer
// count, a rank exceeding --device-memory); 2 usage error.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/run_flags.h"
#include "common/byte_size.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "coordinator/expert_balance.h"
#include "coordinator/placement.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace switchyard::cli {
namespace {

using nlohmann::json;

struct PlanArgs {
  std::string model, placement, device_memory, load, out;
  int ep = 1, pp = 1, redundant = 0;
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

// Experts of one layer each rank may hold within --device-memory: what is left after its
// other weights, over the expert bytes of its stage's layers. Empty without the flag.
absl::StatusOr<std::vector<int>> MemoryCapacity(const PlanArgs& a, const ModelConfig& cfg,
                                                const PlacementPlan& base, uint64_t bpp) {
  if (a.device_memory.empty()) return std::vector<int>();
  ASSIGN_OR_RETURN(uint64_t limit, ParseByteSize(a.device_memory));
  const uint64_t expert_bytes = 3ull * cfg.hidden_size * cfg.intermediate_size * bpp;  // w1, w2, w3
  std::vector<int> capacity;
  for (const RankStatus& f : Footprints(base, cfg, bpp)) {
    uint64_t held = 0;
    for (const auto& layer : f.experts) held += layer.size();
    const uint64_t other = f.weight_bytes - held * expert_bytes;
    const uint64_t layers = std::max(1, f.layer_end - f.layer_begin);
    const uint64_t slots = limit > other ? (limit - other) / (expert_bytes * layers) : 0;
    capacity.push_back(
        static_cast<int>(std::min<uint64_t>(slots, static_cast<uint64_t>(cfg.num_local_experts))));
  }
  return capacity;
}

// The placement planned from --load; `balance` gets the comparison (also printed unless
// --json).
absl::StatusOr<PlacementPlan> PlanForLoad(const PlanArgs& a, const ModelConfig& cfg,
                                          const PlacementPlan& base, uint64_t bpp, json* balance) {
  ASSIGN_OR_RETURN(auto load, LoadExpertLoads(a.load, cfg));
  ASSIGN_OR_RETURN(std::vector<int> capacity, MemoryCapacity(a, cfg, base, bpp));
  auto eplb_plan = PlanFromLoads(base, load, a.redundant, capacity, &BalanceLayerEplb);
  if (!eplb_plan.ok() && !a.device_memory.empty()) {
    return absl::Status(eplb_plan.status().code(),
                        absl::StrCat(eplb_plan.status().message(), " within --device-memory ",
                                     a.device_memory, " (raise it, or use more ranks)"));
  }
  ASSIGN_OR_RETURN(PlacementPlan eplb, std::move(eplb_plan));
  ASSIGN_OR_RETURN(PlacementPlan ours,
                   PlanFromLoads(base, load, a.redundant, capacity, &BalanceLayer));
  struct Row {
    const char* name;
    const PlacementPlan* plan;
    double max_sum = 0, mean_sum = 0;
    json layers = json::array();
  };
  std::vector<Row> rows = {{"given", &base}, {"eplb", &eplb}, {"switchyard", &ours}};
  for (Row& row : rows) {
    for (size_t l = 0; l < load.size(); ++l) {
      const LayerBalance b = EvaluateLayer(load[l], row.plan->expert_ranks[l], row.plan->ep);
      row.max_sum += b.max_load();
      row.mean_sum += b.mean_load();
      row.layers.push_back({{"max", b.max_load()}, {"mean", b.mean_load()}});
    }
  }
  auto ratio = [](double max, double mean) { return mean > 0 ? max / mean : 1.0; };
  *balance = {{"load", a.load}, {"redundant", a.redundant}};
  for (const Row& row : rows) {
    (*balance)[row.name] = {{"layers", row.layers},
                            {"max_over_mean", ratio(row.max_sum, row.mean_sum)}};
  }
  if (!a.json) {
    std::printf("expert load per rank, max / mean (1.00 is perfect balance), --redundant %d:\n",
                a.redundant);
    auto width = [](const Row& row) { return std::max<int>(8, std::strlen(row.name)); };
    std::printf("%5s", "layer");
    for (const Row& row : rows) std::printf("  %*s", width(row), row.name);
    for (size_t l = 0; l <= load.size(); ++l) {
      // The last line, "all": the sum over layers of the max, over the sum of the means.
      l < load.size() ? std::printf("\n%5zu", l) : std::printf("\n%5s", "all");
      for (const Row& row : rows) {
        const double max = l < load.size() ? row.layers[l]["max"].get<double>() : row.max_sum;
        const double mean = l < load.size() ? row.layers[l]["mean"].get<double>() : row.mean_sum;
        std::printf("  %*.2f", width(row), ratio(max, mean));
      }
    }
    std::printf("\n\n");
  }
  return ours;
}

int RunPlan(const PlanArgs& a) {
  auto cfg = LoadModelConfig(a.model + "/config.json");
  if (!cfg.ok()) return Fail(cfg.status());
  auto plan = a.placement.empty() ? PlanPlacement(*cfg, a.ep, a.pp)
                                  : LoadPlacementFile(a.placement, *cfg, a.ep, a.pp);
  if (!plan.ok()) return Fail(plan.status());
  const StoredType stored = DetectStoredType(a.model);
  json balance;
  if (!a.load.empty()) {
    auto planned = PlanForLoad(a, *cfg, *plan, stored.bytes_per_param, &balance);
    if (!planned.ok()) return Fail(planned.status());
    *plan = *std::move(planned);
    if (!a.out.empty()) {
      std::ofstream(a.out) << PlacementToJson(*plan).dump(2) << "\n";
      if (!a.json) std::printf("placement written to %s\n\n", a.out.c_str());
    }
  }
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
    if (!balance.is_null()) j["balance"] = balance;
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
                !a.load.empty()       ? "planned from --load"
                : a.placement.empty() ? "balanced default"
                                      : a.placement.c_str());
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
  CLI::Option* load =
      cmd->add_option("--load", a->load,
                      "Per-expert load (switchyard client status --json, or [[...], ...] per "
                      "layer): place experts to balance it")
          ->check(CLI::ExistingFile);
  cmd->add_option("--redundant", a->redundant,
                  "With --load: up to this many extra expert replicas per layer")
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str()
      ->needs(load);
  cmd->add_option("--out", a->out, "With --load: write the planned placement file here")
      ->needs(load);
  cmd->callback([a, action] { *action = [a] { return RunPlan(*a); }; });
}

}  // namespace switchyard::cli
