#include "coordinator/placement.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/progress.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

using nlohmann::json;

// Checks the flags against the model; shared by PlanPlacement and LoadPlacementFile.
absl::Status ValidateShape(const ModelConfig& cfg, int ep, int pp) {
  if (ep < 1) return absl::InvalidArgumentError(absl::StrCat("--ep must be at least 1, got ", ep));
  if (pp < 1) return absl::InvalidArgumentError(absl::StrCat("--pp must be at least 1, got ", pp));
  if (pp > cfg.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("--pp ", pp, " exceeds the model's ", cfg.num_hidden_layers,
                     " layers: every pipeline stage needs at least one layer"));
  }
  if (cfg.num_local_experts < 1) {
    return absl::InvalidArgumentError("the model config has no experts (num_local_experts < 1)");
  }
  return absl::OkStatus();
}

// The cut of `layers` equal-or-unequal-cost layers into `pp` contiguous non-empty stages that
// minimises the largest stage cost; among optimal cuts, the one whose stage sizes are
// lexicographically largest (earlier stages get more layers). O(pp * layers^2).
std::vector<std::pair<int, int>> BalancedCut(const std::vector<int64_t>& layer_cost,
                                             int64_t last_stage_extra, int pp) {
  const int L = static_cast<int>(layer_cost.size());
  std::vector<int64_t> prefix(L + 1, 0);
  for (int l = 0; l < L; ++l) prefix[l + 1] = prefix[l] + layer_cost[l];
  auto cost = [&](int s, int b, int e) {
    return prefix[e] - prefix[b] + (s == pp - 1 ? last_stage_extra : 0);
  };
  constexpr int64_t kInf = std::numeric_limits<int64_t>::max();
  // best[s][b]: smallest achievable max cost of stages s..pp-1 covering layers [b, L).
  std::vector<std::vector<int64_t>> best(pp + 1, std::vector<int64_t>(L + 1, kInf));
  best[pp][L] = 0;
  for (int s = pp - 1; s >= 0; --s) {
    for (int b = 0; b < L; ++b) {
      for (int e = b + 1; e <= L; ++e) {
        if (best[s + 1][e] == kInf) continue;
        best[s][b] = std::min(best[s][b], std::max(cost(s, b, e), best[s + 1][e]));
      }
    }
  }
  const int64_t target = best[0][0];
  std::vector<std::pair<int, int>> cut;
  int b = 0;
  for (int s = 0; s < pp; ++s) {
    int chosen = -1;
    for (int e = L; e > b; --e) {  // largest end that keeps the optimum reachable
      if (best[s + 1][e] != kInf && std::max(cost(s, b, e), best[s + 1][e]) <= target) {
        chosen = e;
        break;
      }
    }
    cut.emplace_back(b, chosen);
    b = chosen;
  }
  return cut;
}

absl::Status FieldError(const std::string& source, const std::string& field,
                        const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", field, ": ", problem));
}

// Reads an integer JSON value (signed or unsigned, saturating at the int64 limits).
bool AsInt(const json& v, int64_t* out) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    *out = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
               ? std::numeric_limits<int64_t>::max()
               : static_cast<int64_t>(u);
  } else {
    *out = v.get<int64_t>();
  }
  return true;
}

// Parses an object key naming an id in [0, limit): decimal digits, no sign, no leading zero.
absl::StatusOr<int> ParseIdKey(const std::string& key, int limit, const std::string& what,
                               const std::string& source, const std::string& field) {
  bool digits = !key.empty() && key.size() <= 9 &&
                std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || (key.size() > 1 && key[0] == '0')) {
    return FieldError(source, field,
                      absl::StrCat("key \"", key, "\" is not a valid ", what,
                                   " id (expected a decimal integer such as \"0\")"));
  }
  int id = std::stoi(key);
  if (id >= limit) {
    return FieldError(source, field, absl::StrCat(what, " id ", id, " outside [0, ", limit, ")"));
  }
  return id;
}

// Parses a list of EP ranks: non-empty, integers in [0, ep), distinct. Returns it sorted.
absl::StatusOr<std::vector<int>> ParseRanks(const json& v, int ep, const std::string& source,
                                            const std::string& field) {
  if (!v.is_array()) return FieldError(source, field, "expected a list of EP ranks");
  if (v.empty()) {
    return FieldError(source, field, "rank list is empty: every expert needs at least one rank");
  }
  std::vector<int> ranks;
  for (size_t i = 0; i < v.size(); ++i) {
    int64_t r;
    if (!AsInt(v[i], &r)) {
      return FieldError(source, absl::StrCat(field, "[", i, "]"),
                        absl::StrCat("rank ", v[i].dump(), " is not an integer"));
    }
    if (r < 0 || r >= ep) {
      return FieldError(source, absl::StrCat(field, "[", i, "]"),
                        absl::StrCat("rank ", r, " outside [0, ", ep, ") (--ep ", ep, ")"));
    }
    if (std::find(ranks.begin(), ranks.end(), r) != ranks.end()) {
      return FieldError(source, absl::StrCat(field, "[", i, "]"),
                        absl::StrCat("rank ", r, " listed twice"));
    }
    ranks.push_back(static_cast<int>(r));
  }
  std::sort(ranks.begin(), ranks.end());
  return ranks;
}

// Parses {"<expert id>": [ranks], ...} into `out[expert]` (entries not named are untouched).
absl::Status ParseExpertMap(const json& v, const ModelConfig& cfg, int ep,
                            const std::string& source, const std::string& field,
                            std::vector<std::vector<int>>* out) {
  if (!v.is_object()) {
    return FieldError(source, field, "expected an object {\"<expert id>\": [ranks]}");
  }
  for (const auto& [key, ranks_json] : v.items()) {
    const std::string key_field = absl::StrCat(field, ".\"", key, "\"");
    ASSIGN_OR_RETURN(int e, ParseIdKey(key, cfg.num_local_experts, "expert", source, field));
    ASSIGN_OR_RETURN((*out)[e], ParseRanks(ranks_json, ep, source, key_field));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<int, int>>> ParseStages(const json& v, int layers, int pp,
                                                             const std::string& source) {
  if (!v.is_array()) return FieldError(source, "stages", "expected a list of [begin, end) pairs");
  if (static_cast<int>(v.size()) != pp) {
    return FieldError(
        source, "stages",
        absl::StrCat("has ", v.size(), " entries, expected one per stage (--pp ", pp, ")"));
  }
  std::vector<std::pair<int, int>> stages;
  int prev_end = 0;
  for (int s = 0; s < pp; ++s) {
    const std::string field = absl::StrCat("stages[", s, "]");
    const json& st = v[s];
    int64_t b, e;
    if (!st.is_array() || st.size() != 2 || !AsInt(st[0], &b) || !AsInt(st[1], &e)) {
      return FieldError(source, field,
                        absl::StrCat("expected [begin, end) as two integers, got ", st.dump()));
    }
    if (b < 0 || e > layers) {
      return FieldError(
          source, field,
          absl::StrCat("[", b, ", ", e, ") lies outside the model's layers [0, ", layers, ")"));
    }
    if (e <= b) return FieldError(source, field, absl::StrCat("[", b, ", ", e, ") is empty"));
    if (b < prev_end) {
      return FieldError(source, field,
                        absl::StrCat("begins at layer ", b, " but stage ", s - 1, " ends at ",
                                     prev_end, ": stages overlap"));
    }
    if (b > prev_end) {
      return FieldError(
          source, field,
          s == 0 ? absl::StrCat("begins at layer ", b, ": layers [0, ", b, ") are in no stage")
                 : absl::StrCat("begins at layer ", b, " but stage ", s - 1, " ends at ", prev_end,
                                ": layers [", prev_end, ", ", b,
                                ") are in no stage (stages must be contiguous)"));
    }
    stages.emplace_back(static_cast<int>(b), static_cast<int>(e));
    prev_end = static_cast<int>(e);
  }
  if (prev_end != layers) {
    return FieldError(
        source, "stages",
        absl::StrCat("cover layers [0, ", prev_end, ") but the model has ", layers, " layers"));
  }
  return stages;
}

std::vector<std::vector<int>> DefaultExperts(int num_experts, int ep) {
  std::vector<std::vector<int>> ranks(num_experts);
  for (int e = 0; e < num_experts; ++e) ranks[e] = {e % ep};
  return ranks;
}

}  // namespace

int PlacementPlan::StageOfLayer(int layer) const {
  for (int s = 0; s < static_cast<int>(stage_layers.size()); ++s) {
    if (layer >= stage_layers[s].first && layer < stage_layers[s].second) return s;
  }
  return -1;
}

ShardSpec PlacementPlan::ShardFor(int world_rank, const ModelConfig& cfg) const {
  ShardSpec spec;
  spec.has_embedding = false;
  spec.has_head = false;
  if (world_rank < 0 || world_rank >= world_size() || static_cast<int>(stage_layers.size()) != pp) {
    return spec;
  }
  const int stage = world_rank / ep, ep_rank = world_rank % ep;
  spec.layer_begin = stage_layers[stage].first;
  spec.layer_end = stage_layers[stage].second;
  spec.has_embedding = stage == 0;
  spec.has_head = stage == pp - 1;
  for (int l = spec.layer_begin; l < spec.layer_end; ++l) {
    std::vector<int> held;
    const auto& experts = expert_ranks[l];
    const int n = std::min<int>(cfg.num_local_experts, static_cast<int>(experts.size()));
    for (int e = 0; e < n; ++e) {
      if (std::binary_search(experts[e].begin(), experts[e].end(), ep_rank)) held.push_back(e);
    }
    spec.local_experts.push_back(std::move(held));
  }
  return spec;
}

int64_t LayerCostTimesEp(const ModelConfig& cfg, int ep) {
  const int64_t router = int64_t{cfg.num_local_experts} * cfg.hidden_size;
  return int64_t{ep} * (cfg.AttentionParamsPerLayer() + router) +
         int64_t{cfg.num_local_experts} * cfg.ExpertParams();
}

int64_t HeadCostTimesEp(const ModelConfig& cfg, int ep) {
  return int64_t{ep} * (int64_t{cfg.vocab_size} * cfg.hidden_size + cfg.hidden_size);
}

absl::StatusOr<PlacementPlan> PlanPlacement(const ModelConfig& cfg, int ep, int pp) {
  RETURN_IF_ERROR(ValidateShape(cfg, ep, pp));
  PlacementPlan plan;
  plan.ep = ep;
  plan.pp = pp;
  std::vector<int64_t> costs(cfg.num_hidden_layers, LayerCostTimesEp(cfg, ep));
  plan.stage_layers = BalancedCut(costs, HeadCostTimesEp(cfg, ep), pp);
  plan.expert_ranks.assign(cfg.num_hidden_layers, DefaultExperts(cfg.num_local_experts, ep));
  return plan;
}

absl::Status CheckWorldSize(int world, int ep, int pp) {
  if (world == ep * pp) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("world size ", world, " does not equal --ep ", ep, " x --pp ", pp, " = ",
                   ep * pp, ": launch with mpirun -np ", ep * pp, ", or change --ep/--pp"));
}

absl::StatusOr<PlacementPlan> ParsePlacement(const std::string& text, const std::string& source,
                                             const ModelConfig& cfg, int ep, int pp) {
  RETURN_IF_ERROR(ValidateShape(cfg, ep, pp));
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    // "file:3:14: invalid JSON: syntax error while parsing object - unexpected '}'; ..."
    const std::string_view before(text.data(), std::min<size_t>(e.byte > 0 ? e.byte - 1 : 0,
                                                                text.size()));
    const size_t line = 1 + std::count(before.begin(), before.end(), '\n');
    const size_t last_newline = before.rfind('\n');  // npos + 1 == 0 on the first line
    const size_t column = before.size() - (last_newline + 1) + 1;
    std::string reason = e.what();
    if (const size_t colon = reason.find(": "); colon != std::string::npos) {
      reason = reason.substr(colon + 2);  // drop "[json.exception...] parse error at ..."
    }
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", line, ":", column, ": invalid JSON: ", reason));
  } catch (const json::exception& e) {  // e.g. a number too large for a double (1e400)
    std::string reason = e.what();
    if (const size_t bracket = reason.find("] "); bracket != std::string::npos) {
      reason = reason.substr(bracket + 2);
    }
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON: ", reason));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(source + ": expected a JSON object at the top level");
  }
  static const char* const kKeys[] = {"ep", "pp", "stages", "experts", "layer_experts"};
  for (const auto& [key, value] : j.items()) {
    if (std::find(std::begin(kKeys), std::end(kKeys), key) == std::end(kKeys)) {
      return FieldError(source, key,
                        "unknown key (expected ep, pp, stages, experts, layer_experts)");
    }
  }
  for (const auto& [key, flag] : {std::pair<const char*, int>{"ep", ep}, {"pp", pp}}) {
    auto it = j.find(key);
    if (it == j.end()) continue;
    int64_t v;
    if (!AsInt(*it, &v)) return FieldError(source, key, "expected an integer");
    if (v != flag) {
      return FieldError(source, key, absl::StrCat(v, " disagrees with --", key, " ", flag));
    }
  }

  PlacementPlan plan;
  plan.ep = ep;
  plan.pp = pp;
  const int L = cfg.num_hidden_layers;
  if (auto it = j.find("stages"); it != j.end()) {
    ASSIGN_OR_RETURN(plan.stage_layers, ParseStages(*it, L, pp, source));
  } else {
    std::vector<int64_t> costs(L, LayerCostTimesEp(cfg, ep));
    plan.stage_layers = BalancedCut(costs, HeadCostTimesEp(cfg, ep), pp);
  }

  std::vector<std::vector<int>> all_layers = DefaultExperts(cfg.num_local_experts, ep);
  if (auto it = j.find("experts"); it != j.end()) {
    RETURN_IF_ERROR(ParseExpertMap(*it, cfg, ep, source, "experts", &all_layers));
  }
  plan.expert_ranks.assign(L, all_layers);
  if (auto it = j.find("layer_experts"); it != j.end()) {
    if (!it->is_object()) {
      return FieldError(source, "layer_experts",
                        "expected an object {\"<layer>\": {\"<expert id>\": [ranks]}}");
    }
    for (const auto& [key, experts] : it->items()) {
      ASSIGN_OR_RETURN(int l, ParseIdKey(key, L, "layer", source, "layer_experts"));
      RETURN_IF_ERROR(ParseExpertMap(experts, cfg, ep, source,
                                     absl::StrCat("layer_experts.\"", key, "\""),
                                     &plan.expert_ranks[l]));
    }
  }
  return plan;
}

absl::StatusOr<PlacementPlan> LoadPlacementFile(const std::string& path, const ModelConfig& cfg,
                                                int ep, int pp) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read placement file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ParsePlacement(ss.str(), path, cfg, ep, pp);
}

json PlacementToJson(const PlacementPlan& plan) {
  json stages = json::array();
  for (const auto& [b, e] : plan.stage_layers) stages.push_back({b, e});
  json experts = json::object();
  json layer_experts = json::object();
  const int L = static_cast<int>(plan.expert_ranks.size());
  const int E = L > 0 ? static_cast<int>(plan.expert_ranks[0].size()) : 0;
  std::vector<std::vector<int>> common(E);
  for (int e = 0; e < E; ++e) {
    // The most common rank list of expert e over the layers; ties go to the earliest layer.
    std::map<std::vector<int>, int> count;
    int best = 0;
    for (int l = 0; l < L; ++l) {
      int c = ++count[plan.expert_ranks[l][e]];
      if (c > best) {
        best = c;
        common[e] = plan.expert_ranks[l][e];
      }
    }
    experts[std::to_string(e)] = common[e];
  }
  for (int l = 0; l < L; ++l) {
    json differing = json::object();
    for (int e = 0; e < E; ++e) {
      if (plan.expert_ranks[l][e] != common[e])
        differing[std::to_string(e)] = plan.expert_ranks[l][e];
    }
    if (!differing.empty()) layer_experts[std::to_string(l)] = differing;
  }
  json j = {{"ep", plan.ep}, {"pp", plan.pp}, {"stages", stages}, {"experts", experts}};
  if (!layer_experts.empty()) j["layer_experts"] = layer_experts;
  return j;
}

std::vector<RankStatus> Footprints(const PlacementPlan& plan, const ModelConfig& cfg,
                                      uint64_t bytes_per_param) {
  const uint64_t H = cfg.hidden_size;
  const uint64_t embedding = static_cast<uint64_t>(cfg.vocab_size) * H;
  const uint64_t dense_per_layer =  // attention, norms, router
      static_cast<uint64_t>(cfg.AttentionParamsPerLayer()) + cfg.num_local_experts * H;
  std::vector<RankStatus> out;
  for (int r = 0; r < plan.world_size(); ++r) {
    const ShardSpec spec = plan.ShardFor(r, cfg);
    RankStatus f;
    f.world_rank = r;
    f.stage = r / plan.ep;
    f.ep_rank = r % plan.ep;
    f.layer_begin = spec.layer_begin;
    f.layer_end = spec.layer_end;
    f.experts = spec.local_experts;
    f.has_embedding = spec.has_embedding;
    f.has_head = spec.has_head;
    uint64_t params = 0;
    for (const auto& held : spec.local_experts) {
      params += dense_per_layer + held.size() * static_cast<uint64_t>(cfg.ExpertParams());
    }
    if (spec.has_embedding) params += embedding;
    if (spec.has_head) {
      params += H;  // final norm
      if (!(cfg.tie_word_embeddings && spec.has_embedding)) params += embedding;
    }
    f.weight_bytes = params * bytes_per_param;
    out.push_back(std::move(f));
  }
  return out;
}

absl::Status CheckDeviceMemory(const std::vector<RankStatus>& footprints,
                               uint64_t device_bytes) {
  for (const RankStatus& f : footprints) {
    if (f.weight_bytes <= device_bytes) continue;
    return absl::ResourceExhaustedError(
        absl::StrCat("rank ", f.world_rank, " (stage ", f.stage, ", ep rank ", f.ep_rank,
                     ") needs ", ByteProgress::FormatBytes(f.weight_bytes), " (", f.weight_bytes,
                     " bytes) of weights, more than the device memory limit of ",
                     ByteProgress::FormatBytes(device_bytes), " (", device_bytes, " bytes)"));
  }
  return absl::OkStatus();
}

}  // namespace switchyard
