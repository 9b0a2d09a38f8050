#include "coordinator/expert_balance.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

// The state both planners work on: which ranks hold which experts, and the loads.
struct Packing {
  int ep = 0;
  std::vector<int> capacity;                // [rank]
  std::vector<int> replicas;                // [expert]
  std::vector<std::vector<uint8_t>> holds;  // [rank][expert]
  std::vector<int> used;                    // [rank]: experts held
  std::vector<double> rank_load;            // [rank]
  std::vector<double> weight;               // [expert]: load per replica

  bool Fits(int rank, int expert) const {
    return used[rank] < capacity[rank] && holds[rank][expert] == 0;
  }
  void Put(int rank, int expert) {
    holds[rank][expert] = 1;
    ++used[rank];
    rank_load[rank] += weight[expert];
  }
  // Sets `expert`'s replica count; the ranks holding it carry load / replicas each.
  void Reweigh(int expert, int count, double load) {
    const double w = load / count;
    for (int r = 0; r < ep; ++r) {
      if (holds[r][expert] != 0) rank_load[r] += w - weight[expert];
    }
    weight[expert] = w;
    replicas[expert] = count;
  }
  void Take(int rank, int expert) {
    holds[rank][expert] = 0;
    --used[rank];
    rank_load[rank] -= weight[expert];
  }
  std::vector<std::vector<int>> ExpertRanks() const {
    std::vector<std::vector<int>> out(replicas.size());
    for (int r = 0; r < ep; ++r) {
      for (size_t e = 0; e < replicas.size(); ++e) {
        if (holds[r][e] != 0) out[e].push_back(r);
      }
    }
    return out;
  }
};

absl::StatusOr<std::vector<int>> Capacities(std::span<const double> load,
                                            const ExpertBalanceOptions& o) {
  if (o.ep < 1) return absl::InvalidArgumentError(absl::StrCat("ep: must be >= 1, got ", o.ep));
  if (o.redundant < 0) {
    return absl::InvalidArgumentError(absl::StrCat("redundant: must be >= 0, got ", o.redundant));
  }
  if (load.empty()) return absl::InvalidArgumentError("load: no experts");
  for (size_t e = 0; e < load.size(); ++e) {
    if (!(load[e] >= 0) || !std::isfinite(load[e])) {
      return absl::InvalidArgumentError(
          absl::StrCat("load[", e, "]: must be a finite number >= 0, got ", load[e]));
    }
  }
  const int E = static_cast<int>(load.size());
  std::vector<int> cap = o.capacity;
  if (cap.empty()) {
    cap.assign(o.ep, (E + o.redundant + o.ep - 1) / o.ep);
  } else if (static_cast<int>(cap.size()) != o.ep) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity: ", cap.size(), " entries for ep ", o.ep));
  }
  int64_t total = 0;
  for (int c : cap) total += std::max(c, 0);
  if (total < E) {
    return absl::ResourceExhaustedError(absl::StrCat("capacity: the ", o.ep, " ranks hold ", total,
                                                     " experts of a layer in all, fewer than its ",
                                                     E, " experts"));
  }
  for (int& c : cap) c = std::max(c, 0);
  return cap;
}

// DeepSeek's EPLB global policy: replica counts by largest load per replica, then replicas
// packed heaviest first onto the least loaded rank with room (and without that expert).
absl::StatusOr<Packing> ReferencePacking(std::span<const double> load,
                                         const ExpertBalanceOptions& o) {
  ASSIGN_OR_RETURN(std::vector<int> cap, Capacities(load, o));
  const int E = static_cast<int>(load.size());
  const int64_t room = std::accumulate(cap.begin(), cap.end(), int64_t{0});
  const int64_t slots = std::min<int64_t>({int64_t{E} + o.redundant, room, int64_t{E} * o.ep});
  Packing p;
  p.ep = o.ep;
  p.capacity = cap;
  p.replicas.assign(E, 1);
  for (int64_t k = E; k < slots; ++k) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      if (p.replicas[e] >= o.ep) continue;
      if (best < 0 || load[e] / p.replicas[e] > load[best] / p.replicas[best]) best = e;
    }
    if (best < 0) break;
    ++p.replicas[best];
  }
  p.weight.resize(E);
  for (int e = 0; e < E; ++e) p.weight[e] = load[e] / p.replicas[e];
  std::vector<int> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&p](int a, int b) { return p.weight[a] > p.weight[b]; });
  p.holds.assign(o.ep, std::vector<uint8_t>(E, 0));
  p.used.assign(o.ep, 0);
  p.rank_load.assign(o.ep, 0.0);
  for (int e : order) {
    int placed = 0;
    for (int k = 0; k < p.replicas[e]; ++k) {
      int best = -1;
      for (int r = 0; r < o.ep; ++r) {
        if (p.Fits(r, e) && (best < 0 || p.rank_load[r] < p.rank_load[best])) best = r;
      }
      if (best < 0) break;  // every rank with room holds it already: fewer replicas
      p.Put(best, e);
      ++placed;
    }
    if (placed == 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("capacity: no rank has room for expert ", e));
    }
    if (placed != p.replicas[e]) p.Reweigh(e, placed, load[e]);  // the replicas placed
  }
  return p;
}

// Local search from the reference packing. Candidate changes, each around the most loaded
// rank r: move one of r's replicas to a rank with room; swap one of r's replicas with a lighter
// one elsewhere; drop one of r's replicas of an expert that has others (its load moves to
// them); add a replica of one of r's experts on a rank with room, while the budget of replicas
// allows (r and the expert's other holders give up part of its load). A change is kept when it
// lowers the largest rank load, or keeps it and lowers the sum of squared loads, so the search
// ends; the number of steps is also bounded.
class LocalSearch {
 public:
  LocalSearch(Packing* p, std::span<const double> load, int max_replicas)
      : p_(p), load_(load), max_replicas_(max_replicas) {}

  void Run() {
    const int E = static_cast<int>(p_->replicas.size());
    for (int step = 0; step < 64 * E * p_->ep; ++step) {
      if (!Step()) return;
    }
  }

 private:
  struct Score {
    double max = 0, sumsq = 0;
  };
  Score Measure() const {
    Score s;
    for (double l : p_->rank_load) {
      s.max = std::max(s.max, l);
      s.sumsq += l * l;
    }
    return s;
  }
  bool Better(const Score& a, const Score& b) const {  // a better than b
    const double eps = 1e-9 * std::max(1.0, b.max);
    if (a.max < b.max - eps) return true;
    return a.max <= b.max + eps && a.sumsq < b.sumsq - eps * std::max(1.0, b.max);
  }
  // Sets expert e's replica count (its holders' loads follow).
  void Reweigh(int e, int replicas) { p_->Reweigh(e, replicas, load_[e]); }
  int TotalReplicas() const { return std::accumulate(p_->replicas.begin(), p_->replicas.end(), 0); }

  // Tries every change around the most loaded rank; applies the best. False: none helps.
  bool Step() {
    const int E = static_cast<int>(p_->replicas.size());
    const int r = static_cast<int>(std::max_element(p_->rank_load.begin(), p_->rank_load.end()) -
                                   p_->rank_load.begin());
    const Score now = Measure();
    Score best = now;
    std::function<void()> best_change;
    auto consider = [&](const std::function<void()>& apply, const std::function<void()>& undo) {
      apply();
      const Score s = Measure();
      undo();
      if (Better(s, best)) {
        best = s;
        best_change = apply;
      }
    };
    const bool can_add = TotalReplicas() < max_replicas_;
    for (int e = 0; e < E; ++e) {
      if (p_->holds[r][e] == 0) continue;
      const int c = p_->replicas[e];
      if (c > 1) {  // drop r's replica
        consider(
            [this, r, e, c] {
              p_->Take(r, e);
              Reweigh(e, c - 1);
            },
            [this, r, e, c] {
              Reweigh(e, c);
              p_->Put(r, e);
            });
      }
      for (int q = 0; q < p_->ep; ++q) {
        if (q == r || p_->holds[q][e] != 0) continue;
        if (p_->used[q] < p_->capacity[q]) {
          consider(
              [this, r, q, e] {
                p_->Take(r, e);
                p_->Put(q, e);
              },
              [this, r, q, e] {
                p_->Take(q, e);
                p_->Put(r, e);
              });
          if (can_add && c < p_->ep) {
            consider(
                [this, q, e, c] {
                  Reweigh(e, c + 1);
                  p_->Put(q, e);
                },
                [this, q, e, c] {
                  p_->Take(q, e);
                  Reweigh(e, c);
                });
          }
        }
        for (int f = 0; f < E; ++f) {
          if (p_->holds[q][f] == 0 || p_->holds[r][f] != 0) continue;
          if (p_->weight[f] >= p_->weight[e]) continue;
          consider(
              [this, r, q, e, f] {
                p_->Take(r, e);
                p_->Take(q, f);
                p_->Put(r, f);
                p_->Put(q, e);
              },
              [this, r, q, e, f] {
                p_->Take(q, e);
                p_->Take(r, f);
                p_->Put(q, f);
                p_->Put(r, e);
              });
        }
      }
    }
    if (!best_change) return false;
    best_change();
    return true;
  }

  Packing* p_;
  std::span<const double> load_;
  const int max_replicas_;
};

LayerBalance ToBalance(std::span<const double> load, const Packing& p) {
  return EvaluateLayer(load, p.ExpertRanks(), p.ep);
}

double Number(const nlohmann::json& v, const std::string& where) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {  // protobuf's JSON writes int64 as a string
    const std::string& s = v.get_ref<const std::string&>();
    if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos && s.size() <= 18) {
      return static_cast<double>(std::stoll(s));
    }
  }
  throw std::invalid_argument(absl::StrCat(where, ": not a number: ", v.dump()));
}

}  // namespace

double LayerBalance::max_load() const {
  return rank_load.empty() ? 0 : *std::max_element(rank_load.begin(), rank_load.end());
}

double LayerBalance::mean_load() const {
  if (rank_load.empty()) return 0;
  return std::accumulate(rank_load.begin(), rank_load.end(), 0.0) / rank_load.size();
}

LayerBalance EvaluateLayer(std::span<const double> load,
                           const std::vector<std::vector<int>>& expert_ranks, int ep) {
  LayerBalance b;
  b.expert_ranks = expert_ranks;
  b.rank_load.assign(ep, 0.0);
  for (size_t e = 0; e < expert_ranks.size() && e < load.size(); ++e) {
    if (expert_ranks[e].empty()) continue;
    const double share = load[e] / expert_ranks[e].size();
    for (int r : expert_ranks[e]) {
      if (r >= 0 && r < ep) b.rank_load[r] += share;
    }
  }
  return b;
}

absl::StatusOr<LayerBalance> BalanceLayerEplb(std::span<const double> load,
                                              const ExpertBalanceOptions& options) {
  ASSIGN_OR_RETURN(Packing p, ReferencePacking(load, options));
  return ToBalance(load, p);
}

absl::StatusOr<LayerBalance> BalanceLayer(std::span<const double> load,
                                          const ExpertBalanceOptions& options) {
  ASSIGN_OR_RETURN(std::vector<int> cap, Capacities(load, options));
  // The budget is an upper bound: a replica that does not help is dropped.
  const int64_t room = std::accumulate(cap.begin(), cap.end(), int64_t{0});
  const int max_replicas = static_cast<int>(
      std::min<int64_t>(static_cast<int64_t>(load.size()) + options.redundant, room));
  // Local search from several starts: the reference packing with 0 .. redundant extra
  // replicas (at most 17 of them, spread evenly, the full budget always among them).
  const int starts = std::min(options.redundant, 16);
  std::optional<LayerBalance> best;
  for (int i = 0; i <= starts; ++i) {
    ExpertBalanceOptions o = options;
    o.capacity = cap;
    o.redundant = starts == 0 ? 0 : static_cast<int>(int64_t{options.redundant} * i / starts);
    ASSIGN_OR_RETURN(Packing p, ReferencePacking(load, o));
    LocalSearch(&p, load, max_replicas).Run();
    LayerBalance b = ToBalance(load, p);
    if (!best || b.max_load() < best->max_load()) best = std::move(b);
  }
  return *std::move(best);
}

namespace {

// Per-layer expert counts of a `switchyard trace` file: a header line, then one line per token
// whose "experts" lists each layer's choices.
absl::StatusOr<std::vector<std::vector<double>>> ParseTraceLoads(const std::string& text,
                                                                 const std::string& source,
                                                                 const ModelConfig& cfg) {
  const int L = cfg.num_hidden_layers, E = cfg.num_local_experts;
  std::vector<std::vector<double>> out(L, std::vector<double>(E, 0));
  size_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    ++line_no;
    const std::string where = absl::StrCat(source, ": line ", line_no);
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return absl::InvalidArgumentError(where + ": not a JSON object");
    if (line_no == 1) {
      if (j.value("layers", -1) != L || j.value("experts", -1) != E) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": a trace of ", j.value("layers", -1), " layers x ", j.value("experts", -1),
            " experts, the model has ", L, " x ", E));
      }
      continue;
    }
    const auto it = j.find("experts");
    if (it == j.end() || !it->is_array() || static_cast<int>(it->size()) != L) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": want experts, one list per layer"));
    }
    for (int l = 0; l < L; ++l) {
      if (!(*it)[l].is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": layer ", l, ": not a list"));
      }
      for (const nlohmann::json& e : (*it)[l]) {
        if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= E) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": layer ", l, ": expert ", e.dump(), " outside [0, ", E, ")"));
        }
        out[l][e.get<int>()] += 1;
      }
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<std::vector<double>>> ParseExpertLoads(const std::string& text,
                                                                  const std::string& source,
                                                                  const ModelConfig& cfg) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // One JSON object per line: a routing trace (switchyard trace).
    const size_t first = text.find_first_not_of(" \t\r\n");
    if (first != std::string::npos && text[first] == '{' &&
        text.find('\n', first) != std::string::npos) {
      return ParseTraceLoads(text, source, cfg);
    }
    return absl::InvalidArgumentError(absl::StrCat(source, ": not JSON"));
  }
  if (j.is_object()) {
    if (!j.contains("expert_token_counts")) {
      return absl::InvalidArgumentError(
          absl::StrCat(source,
                       ": want expert_token_counts (the JSON of `switchyard client status --json`) "
                       "or an array of per-layer arrays"));
    }
    j = j["expert_token_counts"];
  }
  if (!j.is_array() || static_cast<int>(j.size()) != cfg.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": want one row per layer (", cfg.num_hidden_layers, "), got ",
                     j.is_array() ? std::to_string(j.size()) : std::string(j.type_name())));
  }
  std::vector<std::vector<double>> out;
  try {
    for (size_t l = 0; l < j.size(); ++l) {
      const nlohmann::json& row =
          j[l].is_object() && j[l].contains("tokens") ? j[l]["tokens"] : j[l];
      const std::string where = absl::StrCat(source, ": layer ", l);
      if (!row.is_array() || static_cast<int>(row.size()) != cfg.num_local_experts) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": want ", cfg.num_local_experts, " numbers, one per expert"));
      }
      std::vector<double> loads;
      for (size_t e = 0; e < row.size(); ++e) {
        const double v = Number(row[e], absl::StrCat(where, " expert ", e));
        if (!(v >= 0) || !std::isfinite(v)) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, " expert ", e, ": must be a finite number >= 0"));
        }
        loads.push_back(v);
      }
      out.push_back(std::move(loads));
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(e.what());
  }
  return out;
}

absl::StatusOr<std::vector<std::vector<double>>> LoadExpertLoads(const std::string& path,
                                                                 const ModelConfig& cfg) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, "--load"));
  return ParseExpertLoads(text, path, cfg);
}

absl::StatusOr<PlacementPlan> PlanFromLoads(const PlacementPlan& base,
                                            const std::vector<std::vector<double>>& load,
                                            int redundant, const std::vector<int>& capacity,
                                            LayerPlanner planner) {
  PlacementPlan plan = base;
  for (size_t l = 0; l < load.size() && l < plan.expert_ranks.size(); ++l) {
    const int stage = plan.StageOfLayer(static_cast<int>(l));
    ExpertBalanceOptions o{.ep = plan.ep, .redundant = redundant};
    if (!capacity.empty()) {
      o.capacity.assign(capacity.begin() + stage * plan.ep,
                        capacity.begin() + (stage + 1) * plan.ep);
    }
    auto b = planner(load[l], o);
    if (!b.ok()) {
      return absl::Status(b.status().code(), absl::StrCat("layer ", l, ": ", b.status().message()));
    }
    plan.expert_ranks[l] = b->expert_ranks;
  }
  return plan;
}

}  // namespace switchyard
