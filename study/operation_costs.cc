#include "study/operation_costs.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/cpu_threads.h"
#include "common/stats.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"
#include "model/safetensors.h"
#include "worker/kv_cache.h"
#include "worker/moe.h"
#include "worker/shard_forward.h"
#include "worker/step_head.h"

namespace switchyard {
namespace {

// The MoE left out of the dense timing: its output is zero (a residual add of nothing).
class NoMoe : public MoeRunner {
 public:
  explicit NoMoe(int hidden) : hidden_(hidden) {}
  absl::Status Run(int, const float*, int T, const int32_t*, const float*, float* out) override {
    std::fill_n(out, static_cast<size_t>(T) * hidden_, 0.0f);
    return absl::OkStatus();
  }

 private:
  int hidden_;
};

// The median seconds of the last `calls - untimed` of `calls` calls of `call`; `prepare`
// (untimed, may be empty) runs before each.
double TimeCalls(int calls, const std::function<void()>& prepare,
                 const std::function<void()>& call, int untimed = 1) {
  std::vector<double> t;
  for (int i = 0; i < calls + untimed; ++i) {
    if (prepare) prepare();
    const auto t0 = std::chrono::steady_clock::now();
    call();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= untimed) t.push_back(s);
  }
  return Median(t);
}

// Appends an array's entries to `out`; false (out unchanged) when one is not a finite number
// >= 0.
bool ReadFigures(const nlohmann::json& array, std::vector<double>* out) {
  std::vector<double> figures;
  for (const nlohmann::json& x : array) {
    if (!x.is_number() || x.get<double>() < 0 || !std::isfinite(x.get<double>())) return false;
    figures.push_back(x.get<double>());
  }
  out->insert(out->end(), figures.begin(), figures.end());
  return true;
}

double Pairs(double tokens, double start_pos) {
  return tokens * start_pos + 0.5 * tokens * (tokens + 1);
}

}  // namespace

std::array<double, 3> FitNonNegativeLeastSquares(const std::vector<std::array<double, 3>>& x,
                                                 const std::vector<double>& y) {
  std::array<double, 3> best{0, 0, 0};
  double best_err = std::numeric_limits<double>::infinity();
  for (int mask = 1; mask < 8; ++mask) {
    std::vector<int> idx;
    for (int j = 0; j < 3; ++j) {
      if (mask & (1 << j)) idx.push_back(j);
    }
    const int m = static_cast<int>(idx.size());
    // Normal equations A c = b over the chosen terms, solved by Gauss-Jordan elimination.
    double A[3][4] = {};
    for (size_t i = 0; i < y.size(); ++i) {
      const double w = 1.0 / std::max(y[i], 1e-12);
      for (int a = 0; a < m; ++a) {
        for (int b = 0; b < m; ++b) A[a][b] += w * w * x[i][idx[a]] * x[i][idx[b]];
        A[a][m] += w * w * x[i][idx[a]] * y[i];
      }
    }
    bool singular = false;
    for (int c = 0; c < m && !singular; ++c) {
      int p = c;
      for (int r = c + 1; r < m; ++r) {
        if (std::abs(A[r][c]) > std::abs(A[p][c])) p = r;
      }
      if (std::abs(A[p][c]) < 1e-300) {
        singular = true;
        break;
      }
      for (int k = 0; k <= m; ++k) std::swap(A[c][k], A[p][k]);
      for (int r = 0; r < m; ++r) {
        if (r == c) continue;
        const double f = A[r][c] / A[c][c];
        for (int k = c; k <= m; ++k) A[r][k] -= f * A[c][k];
      }
    }
    if (singular) continue;
    std::array<double, 3> coef{0, 0, 0};
    bool ok = true;
    for (int a = 0; a < m; ++a) {
      coef[idx[a]] = A[a][m] / A[a][a];
      if (coef[idx[a]] < 0) ok = false;
    }
    if (!ok) continue;
    double err = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      double f = 0;
      for (int j = 0; j < 3; ++j) f += coef[j] * x[i][j];
      const double e = (f - y[i]) / std::max(y[i], 1e-12);
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best = coef;
    }
  }
  return best;
}

double Interpolate(const std::vector<double>& xs, const std::vector<double>& ys, double at) {
  if (at <= xs[0]) return ys[0];
  if (xs.size() == 1) return ys[0] * at / xs[0];
  size_t i = 1;
  while (i + 1 < xs.size() && xs[i] < at) ++i;
  const double t = (at - xs[i - 1]) / (xs[i] - xs[i - 1]);
  return std::max(0.0, ys[i - 1] + t * (ys[i] - ys[i - 1]));
}

bool OperationCosts::Matches(const ModelConfig& cfg) const {
  return hidden == cfg.hidden_size && intermediate == cfg.intermediate_size &&
         heads == cfg.num_attention_heads && kv_heads == cfg.num_key_value_heads &&
         head_dim == cfg.head_dim && experts == cfg.num_local_experts &&
         top_k == cfg.num_experts_per_tok && vocab == cfg.vocab_size;
}

double OperationCosts::Dense(double n) const { return n > 0 ? Interpolate(rows, dense_s, n) : 0; }
double OperationCosts::Expert(double n) const {
  return n > 0 ? Interpolate(rows, expert_s, n) : 0;
}
double OperationCosts::Expert(double n, double working_set_bytes) const {
  if (n <= 0) return 0;
  if (expert_set_bytes.empty()) return Expert(n);
  // Sets are stored largest first; walk them smallest first.
  const size_t S = expert_set_bytes.size();
  auto at = [&](size_t i) { return Interpolate(rows, expert_set_s[S - 1 - i], n); };
  auto bytes = [&](size_t i) { return expert_set_bytes[S - 1 - i]; };
  if (working_set_bytes <= bytes(0)) return at(0);
  for (size_t i = 1; i < S; ++i) {
    if (working_set_bytes <= bytes(i)) {
      const double t = (working_set_bytes - bytes(i - 1)) / (bytes(i) - bytes(i - 1));
      return at(i - 1) + t * (at(i) - at(i - 1));
    }
  }
  return at(S - 1);
}
double OperationCosts::ExpertCold(double n) const {
  if (n <= 0) return 0;
  return expert_cold_s.empty() ? Expert(n) : Interpolate(rows, expert_cold_s, n);
}

double LastLevelCacheBytes() {
  double best = 0;
  int best_level = -1;
  for (int i = 0; i < 16; ++i) {
    const std::string dir = absl::StrCat("/sys/devices/system/cpu/cpu0/cache/index", i, "/");
    std::ifstream level_file(dir + "level"), size_file(dir + "size"), type_file(dir + "type");
    int level = 0;
    std::string size, type;
    if (!(level_file >> level) || !(size_file >> size) || !(type_file >> type)) continue;
    if (type == "Instruction" || size.empty()) continue;
    double bytes = std::atof(size.c_str());
    if (size.back() == 'K') bytes *= 1024;
    if (size.back() == 'M') bytes *= 1024 * 1024;
    if (level > best_level) {
      best_level = level;
      best = bytes;
    }
  }
  return best;
}

double OperationCosts::Head(double n) const { return n > 0 ? Interpolate(rows, head_s, n) : 0; }
double OperationCosts::Attention(double tokens, double start_pos) const {
  if (tokens <= 0) return 0;
  return attention_call_s + attention_token_s * tokens +
         attention_pair_s * Pairs(tokens, start_pos);
}

absl::StatusOr<OperationModel> LoadForOperations(const std::string& model_dir,
                                                 const OperationBenchOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig cfg, LoadModelConfig(model_dir + "/config.json"));
  OperationModel m;
  ASSIGN_OR_RETURN(m.checkpoint, SafetensorsCheckpoint::Open(model_dir));
  const double layer_bytes = 2.0 * cfg.LayerParams();
  const int layers = static_cast<int>(std::clamp<double>(
      std::floor(static_cast<double>(options.max_weight_bytes) / layer_bytes), 1,
      cfg.num_hidden_layers));
  ShardSpec spec = ShardSpec::Whole(cfg);
  spec.layer_end = layers;
  spec.local_experts.resize(layers);
  ASSIGN_OR_RETURN(m.weights, ModelWeights::Load(*m.checkpoint, cfg, spec, LoadOptions{}));
  return m;
}

absl::StatusOr<OperationCosts> MeasureOperations(const ModelWeights& weights,
                                                 const OperationBenchOptions& o) {
  const ModelConfig& cfg = weights.config();
  const ShardSpec& spec = weights.spec();
  const int L = spec.layer_end - spec.layer_begin;
  if (L < 1 || !spec.has_embedding || !spec.has_head) {
    return absl::InvalidArgumentError(
        "operation costs: the weights must hold a layer, the embedding and the head");
  }
  for (int l = spec.layer_begin; l < spec.layer_end; ++l) {
    for (int e = 0; e < cfg.num_local_experts; ++e) {
      if (!weights.layer(l).HasExpert(e)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "operation costs: the weights must hold every expert (layer ", l, " lacks ", e, ")"));
      }
    }
  }
  const int H = cfg.hidden_size, V = cfg.vocab_size, E = cfg.num_local_experts;
  const int max_rows = std::max(1, o.max_rows);
  const int max_context = std::clamp(o.max_context, 2, cfg.max_position_embeddings);
  const int bs = 16;
  const int context_blocks = (max_context + bs - 1) / bs;
  const int num_blocks = std::max(max_rows, context_blocks);
  PagedKvCache kv(
      {.num_layers = L, .num_blocks = num_blocks, .block_size = bs, .kv_dim = cfg.kv_dim()});
  NoMoe no_moe(H);
  ShardForward forward(weights, &kv, &no_moe,
                       {.max_tokens = max_rows, .max_context = max_context});
  StepHead head(V);

  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::uniform_int_distribution<int32_t> token(3, V - 1);
  auto random = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = uni(rng);
    return v;
  };

  OperationCosts c;
  c.hidden = H;
  c.intermediate = cfg.intermediate_size;
  c.heads = cfg.num_attention_heads;
  c.kv_heads = cfg.num_key_value_heads;
  c.head_dim = cfg.head_dim;
  c.experts = E;
  c.top_k = cfg.num_experts_per_tok;
  c.vocab = V;
  c.layers = L;
  c.threads = omp_get_max_threads();
  c.cache_bytes = LastLevelCacheBytes();
  c.cpu_list = OwnCpus();
  c.cpus = static_cast<int>(c.cpu_list.size());

  // Attention: one sequence's KV write and attention, as RunLayers calls them.
  {
    const cpu::KvLayer cache = kv.layer(0);
    const cpu::AttentionShape shape{cfg.num_attention_heads, cfg.num_key_value_heads,
                                    cfg.head_dim};
    const int threads = omp_get_max_threads();
    std::vector<float> scratch(static_cast<size_t>(threads) *
                               cpu::AttentionScratchFloats(max_context));
    std::vector<int32_t> table(context_blocks);
    for (int b = 0; b < context_blocks; ++b) table[b] = b;
    const int longest_chunk = std::min(max_rows, max_context);
    std::vector<float> q = random(static_cast<size_t>(longest_chunk) * cfg.q_dim());
    std::vector<float> k = random(static_cast<size_t>(longest_chunk) * cfg.kv_dim());
    std::vector<float> v = random(k.size()), out(q.size());
    // Decode chunks at several contexts, prefill chunks of several lengths; each point the
    // median over the sweeps.
    std::vector<std::pair<int, int>> points;  // (tokens, start)
    for (int start : {0, max_context / 8, max_context / 4, max_context / 2, max_context - 1}) {
      points.push_back({1, start});
    }
    for (int tokens : {longest_chunk / 8, longest_chunk / 4, longest_chunk / 2, longest_chunk}) {
      if (tokens > 1) points.push_back({tokens, 0});
    }
    std::vector<std::vector<double>> times(points.size());
    for (int sweep = 0; sweep < o.sweeps; ++sweep) {
      for (size_t i = 0; i < points.size(); ++i) {
        // Plain variables: a lambda may not capture structured bindings before C++20 in
        // every compiler (clang 14).
        const int tokens = points[i].first, start = points[i].second;
        times[i].push_back(TimeCalls(o.repeats, nullptr, [&] {
          cpu::KvWrite(cache, table.data(), start, k.data(), v.data(), tokens);
          cpu::Attention(q.data(), tokens, start, cache, table.data(), shape, out.data(),
                         scratch.data(), threads);
        }));
      }
    }
    std::vector<std::array<double, 3>> x;
    std::vector<double> y;
    for (size_t i = 0; i < points.size(); ++i) {
      const auto [tokens, start] = points[i];
      x.push_back({1.0, static_cast<double>(tokens), Pairs(tokens, start)});
      y.push_back(Median(times[i]));
    }
    const std::array<double, 3> fit = FitNonNegativeLeastSquares(x, y);
    c.attention_call_s = fit[0];
    c.attention_token_s = fit[1];
    c.attention_pair_s = fit[2];
  }

  // Rows: dense layers, one expert, the head.
  std::vector<float> hidden(static_cast<size_t>(max_rows) * H);
  std::vector<int32_t> ids(max_rows), block_tables(max_rows), head_rows(max_rows);
  for (int i = 0; i < max_rows; ++i) {
    ids[i] = token(rng);
    block_tables[i] = i;
    head_rows[i] = i;
  }
  std::vector<SeqEntry> seqs;
  GroupedExperts experts(weights, max_rows);
  std::vector<float> ex_in = random(static_cast<size_t>(max_rows) * H);
  std::vector<float> ex_out(ex_in.size()), scale(max_rows, 1.0f);
  std::vector<const float*> xs(max_rows);
  std::vector<float*> ys(max_rows);
  for (int i = 0; i < max_rows; ++i) {
    xs[i] = &ex_in[static_cast<size_t>(i) * H];
    ys[i] = &ex_out[static_cast<size_t>(i) * H];
  }
  std::vector<int32_t> counts(E, 0);
  std::vector<float> logits(static_cast<size_t>(max_rows) * V);
  StepPlan plan;
  StepResult result;
  // The expert working sets: the first k of the (layer, expert) pairs ordered layer-fastest
  // (k = all, a half, a quarter, an eighth), so that a set spreads over the layers as a
  // rank's share of the experts does.
  const int pairs = L * E;
  std::vector<int> sets;
  for (int k = pairs; k >= 1 && sets.size() < 4; k /= 2) sets.push_back(k);
  const double expert_bytes = 2.0 * static_cast<double>(cfg.ExpertParams());  // bf16
  // Read before each cold call: twice the last-level cache (64 MiB when unknown).
  std::vector<uint64_t> flush(static_cast<size_t>(
      (c.cache_bytes > 0 ? 2 * c.cache_bytes : 64.0 * (1 << 20)) / sizeof(uint64_t)));
  for (size_t i = 0; i < flush.size(); ++i) flush[i] = i;
  volatile uint64_t flush_sink = 0;
  auto flush_caches = [&] {
    uint64_t sum = 0;
    for (size_t i = 0; i < flush.size(); i += 8) sum += flush[i];  // a line at a time
    flush_sink = flush_sink + sum;
  };
  // One point: [dense, head, expert cold, expert at each set] seconds at n rows.
  auto measure = [&](int n) -> absl::StatusOr<std::vector<double>> {
    seqs.assign(n, SeqEntry{});
    for (int i = 0; i < n; ++i) {
      seqs[i].num_tokens = 1;
      seqs[i].token_offset = i;
      seqs[i].block_offset = i;
      seqs[i].num_blocks = 1;
    }
    absl::Status st;
    const double layers_s = TimeCalls(
        o.repeats, [&] { forward.Embed(ids.data(), n, hidden.data()); },
        [&] { st.Update(forward.RunLayers(seqs, block_tables.data(), hidden.data())); });
    RETURN_IF_ERROR(st);
    // Each set's experts in turn, three rounds untimed and then timed (at least `repeats`
    // calls): a step loop's steady state, whose working set is the set (in the caches where
    // it fits).
    std::vector<double> expert;
    for (int k : sets) {
      int turn = 0;
      expert.push_back(TimeCalls(std::max(o.repeats, 2 * k), nullptr, [&] {
        const int i = turn++ % k;
        const int e = i / L, l = spec.layer_begin + i % L;
        std::fill(counts.begin(), counts.end(), 0);
        counts[e] = n;
        experts.Run(l, ExpertBatch{.counts = counts.data(), .x = xs.data(), .y = ys.data(),
                                   .scale = scale.data(), .pairs = n});
      }, 3 * k));
    }
    plan.Clear();
    for (int i = 0; i < n; ++i) {
      plan.AddSequence({.seq_id = i + 1, .sample = true},
                       std::span<const int32_t>(&ids[i], 1),
                       std::span<const int32_t>(&block_tables[i], 1));
    }
    const double head_s = TimeCalls(o.repeats, nullptr, [&] {
      forward.Head(hidden.data(), std::span<const int32_t>(head_rows.data(), n), logits.data());
      head.Finish(plan, logits.data(), &result);
    });
    int cold_turn = 0;
    const double cold = TimeCalls(o.repeats, flush_caches, [&] {
      const int i = cold_turn++ % pairs;
      std::fill(counts.begin(), counts.end(), 0);
      counts[i / L] = n;
      experts.Run(spec.layer_begin + i % L,
                  ExpertBatch{.counts = counts.data(), .x = xs.data(), .y = ys.data(),
                              .scale = scale.data(), .pairs = n});
    });
    std::vector<double> t{layers_s / L, head_s, cold};
    t.insert(t.end(), expert.begin(), expert.end());
    return t;
  };
  // The first sweep picks the points (doubling rows until the step limit or the budget);
  // every sweep measures them all, and each figure is the median over the sweeps (a slow
  // moment of a shared machine spoils one sweep's point, not the table).
  const size_t figures = 3 + sets.size();
  std::vector<std::vector<std::vector<double>>> samples;  // [point][figure][sweep]
  for (int n = 1;; n = std::min(2 * n, max_rows)) {
    ASSIGN_OR_RETURN(const std::vector<double> t, measure(n));
    c.rows.push_back(n);
    samples.emplace_back(figures);
    for (size_t k = 0; k < figures; ++k) samples.back()[k].push_back(t[k]);
    if (n == max_rows || std::max({t[0], t[1], t[3]}) > o.call_budget_s) break;
  }
  for (int sweep = 1; sweep < o.sweeps; ++sweep) {
    for (size_t i = 0; i < c.rows.size(); ++i) {
      ASSIGN_OR_RETURN(const std::vector<double> t, measure(static_cast<int>(c.rows[i])));
      for (size_t k = 0; k < figures; ++k) samples[i][k].push_back(t[k]);
    }
  }
  c.expert_set_s.assign(sets.size(), {});
  for (int k : sets) c.expert_set_bytes.push_back(k * expert_bytes);
  for (size_t i = 0; i < c.rows.size(); ++i) {
    // The dense work is the layers' time less their attention calls' own.
    c.dense_s.push_back(
        std::max(0.0, Median(samples[i][0]) - c.rows[i] * c.Attention(1, 0)));
    c.head_s.push_back(Median(samples[i][1]));
    c.expert_cold_s.push_back(Median(samples[i][2]));
    for (size_t j = 0; j < sets.size(); ++j) {
      c.expert_set_s[j].push_back(Median(samples[i][3 + j]));
    }
  }
  c.expert_s = c.expert_set_s[0];
  return c;
}

nlohmann::json OperationCostsJson(const OperationCosts& c) {
  nlohmann::json sets = nlohmann::json::array();
  for (size_t j = 0; j < c.expert_set_bytes.size(); ++j) {
    sets.push_back({{"bytes", c.expert_set_bytes[j]}, {"expert_s", c.expert_set_s[j]}});
  }
  return {{"shape",
           {{"hidden", c.hidden},
            {"intermediate", c.intermediate},
            {"heads", c.heads},
            {"kv_heads", c.kv_heads},
            {"head_dim", c.head_dim},
            {"experts", c.experts},
            {"top_k", c.top_k},
            {"vocab", c.vocab}}},
          {"layers", c.layers},
          {"rows", c.rows},
          {"dense_s", c.dense_s},
          {"expert_s", c.expert_s},
          {"head_s", c.head_s},
          {"attention",
           {{"call_s", c.attention_call_s},
            {"token_s", c.attention_token_s},
            {"pair_s", c.attention_pair_s}}},
          {"expert_sets", sets},
          {"expert_cold_s", c.expert_cold_s},
          {"cache_bytes", c.cache_bytes},
          {"threads", c.threads},
          {"cpus", c.cpus},
          {"cpu_list", c.cpu_list}};
}

absl::StatusOr<OperationCosts> ParseOperationCosts(const nlohmann::json& j,
                                                   const std::string& where) {
  auto bad = [&](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", field, ": ", why));
  };
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not an object"));
  OperationCosts c;
  const nlohmann::json shape = j.value("shape", nlohmann::json());
  if (!shape.is_object()) return bad("shape", "missing or not an object");
  for (auto [name, field] : std::initializer_list<std::pair<const char*, int*>>{
           {"hidden", &c.hidden},
           {"intermediate", &c.intermediate},
           {"heads", &c.heads},
           {"kv_heads", &c.kv_heads},
           {"head_dim", &c.head_dim},
           {"experts", &c.experts},
           {"top_k", &c.top_k},
           {"vocab", &c.vocab}}) {
    const nlohmann::json v = shape.value(name, nlohmann::json());
    if (!v.is_number_integer() || v.get<int64_t>() < 1) {
      return bad(absl::StrCat("shape.", name), "missing or not a positive integer");
    }
    *field = v.get<int>();
  }
  const nlohmann::json layers = j.value("layers", nlohmann::json());
  if (!layers.is_number_integer() || layers.get<int64_t>() < 1) {
    return bad("layers", "missing or not a positive integer");
  }
  c.layers = layers.get<int>();
  for (auto [name, field] : std::initializer_list<std::pair<const char*, std::vector<double>*>>{
           {"rows", &c.rows}, {"dense_s", &c.dense_s}, {"expert_s", &c.expert_s},
           {"head_s", &c.head_s}}) {
    const nlohmann::json v = j.value(name, nlohmann::json());
    if (!v.is_array() || v.empty()) return bad(name, "missing or not a non-empty array");
    if (!ReadFigures(v, field)) return bad(name, "every entry must be a number >= 0");
  }
  if (c.dense_s.size() != c.rows.size() || c.expert_s.size() != c.rows.size() ||
      c.head_s.size() != c.rows.size()) {
    return bad("rows", "dense_s, expert_s and head_s must have one entry per row count");
  }
  for (size_t i = 0; i < c.rows.size(); ++i) {
    if (c.rows[i] < 1 || (i > 0 && c.rows[i] <= c.rows[i - 1])) {
      return bad("rows", "row counts must be >= 1 and increasing");
    }
  }
  const nlohmann::json a = j.value("attention", nlohmann::json());
  if (!a.is_object()) return bad("attention", "missing or not an object");
  for (auto [name, field] : std::initializer_list<std::pair<const char*, double*>>{
           {"call_s", &c.attention_call_s},
           {"token_s", &c.attention_token_s},
           {"pair_s", &c.attention_pair_s}}) {
    const nlohmann::json v = a.value(name, nlohmann::json());
    if (!v.is_number() || v.get<double>() < 0) {
      return bad(absl::StrCat("attention.", name), "missing or not a number >= 0");
    }
    *field = v.get<double>();
  }
  // Optional (calibrations before them lack them): the cold expert, the cache, the rank's
  // threads and CPUs, the sets.
  const nlohmann::json cold = j.value("expert_cold_s", nlohmann::json::array());
  if (!cold.is_array() || (!cold.empty() && cold.size() != c.rows.size())) {
    return bad("expert_cold_s", "must have one entry per row count");
  }
  if (!ReadFigures(cold, &c.expert_cold_s)) {
    return bad("expert_cold_s", "every entry must be a number >= 0");
  }
  const nlohmann::json cache = j.value("cache_bytes", nlohmann::json(0));
  if (!cache.is_number() || !(cache.get<double>() >= 0)) {
    return bad("cache_bytes", "not a number >= 0");
  }
  c.cache_bytes = cache.get<double>();
  for (auto [name, field] :
       std::initializer_list<std::pair<const char*, int*>>{{"threads", &c.threads},
                                                            {"cpus", &c.cpus}}) {
    const nlohmann::json v = j.value(name, nlohmann::json(0));
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 20)) {
      return bad(name, "not an integer >= 0");
    }
    *field = v.get<int>();
  }
  const nlohmann::json cpu_list = j.value("cpu_list", nlohmann::json::array());
  if (!cpu_list.is_array()) return bad("cpu_list", "not an array");
  for (const nlohmann::json& v : cpu_list) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 20) ||
        (!c.cpu_list.empty() && v.get<int64_t>() <= c.cpu_list.back())) {
      return bad("cpu_list", "must be increasing CPU ids (integers >= 0)");
    }
    c.cpu_list.push_back(v.get<int>());
  }
  if (!c.cpu_list.empty() && c.cpus != static_cast<int>(c.cpu_list.size())) {
    return bad("cpu_list", absl::StrCat("has ", c.cpu_list.size(), " CPUs where cpus says ",
                                        c.cpus));
  }
  const nlohmann::json sets = j.value("expert_sets", nlohmann::json::array());
  if (!sets.is_array()) return bad("expert_sets", "not an array");
  for (size_t k = 0; k < sets.size(); ++k) {
    const std::string name = absl::StrCat("expert_sets[", k, "]");
    if (!sets[k].is_object()) return bad(name, "not an object");
    const nlohmann::json bytes = sets[k].value("bytes", nlohmann::json());
    if (!bytes.is_number() || !(bytes.get<double>() > 0)) {
      return bad(absl::StrCat(name, ".bytes"), "missing or not a number > 0");
    }
    if (k > 0 && bytes.get<double>() >= c.expert_set_bytes.back()) {
      return bad(absl::StrCat(name, ".bytes"), "sets must be ordered largest first");
    }
    const nlohmann::json v = sets[k].value("expert_s", nlohmann::json());
    if (!v.is_array() || v.size() != c.rows.size()) {
      return bad(absl::StrCat(name, ".expert_s"), "must have one entry per row count");
    }
    std::vector<double> figures;
    if (!ReadFigures(v, &figures)) {
      return bad(absl::StrCat(name, ".expert_s"), "every entry must be a number >= 0");
    }
    c.expert_set_bytes.push_back(bytes.get<double>());
    c.expert_set_s.push_back(std::move(figures));
  }
  return c;
}

}  // namespace switchyard
