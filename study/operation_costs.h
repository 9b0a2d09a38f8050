// What the runtime's own operations cost on this rank, at one model's shapes: the per-operation
// figures `switchyard preflight --model DIR` adds to a calibration, which the cost model
// (study/cost_model.h) uses instead of its two multiply rates when the shapes match.
//
//   ASSIGN_OR_RETURN(OperationCosts ops, MeasureOperations(weights, OperationBenchOptions{}));
//   double t = ops.Dense(64) + ops.Attention(/*tokens=*/1, /*start_pos=*/511) + ops.Expert(16);
//
// Each figure is the runtime's code itself, timed with the rank's threads while every rank
// of the job measures at once (as they run while serving):
// - dense(rows): one layer's work outside the attention core and the experts, as
//   ShardForward::RunLayers runs it (two RMS norms, q/k/v and o, RoPE, router and top-k, the
//   residual adds), timed over every loaded layer in turn (so weights come from where a step
//   finds them: caches or memory) with the MoE left out, less the attention calls' own time;
// - attention(tokens, start): one sequence chunk's KV write and causal attention (the kernels
//   RunLayers calls per sequence), fitted as call + per token + per (query, key) pair from
//   decode chunks at several contexts and prefill chunks of several lengths;
// - expert(rows): one expert over its rows (GroupedExperts: w1, w3, SwiGLU, w2, the weighted
//   write), cycling over a working set of the loaded layers' experts: all of them, then a
//   half, a quarter and an eighth of them (spread over the layers as a rank's share is). A
//   rank of a real job holds only its share of the experts, and whether they stay in the
//   caches from one step to the next depends on that share (and on what the node's other
//   ranks hold): expert(rows, bytes) reads the cost at the rank's own working set; and once
//   more with the caches flushed before each call (expert_cold(rows)): its cost from memory;
// - head(rows): the final norm and lm_head over the rows (ShardForward::Head) and their
//   sampling (StepHead::Finish, greedy).
// Row figures are measured at 1, 2, 4, ... rows up to the step limit (stopping early once one
// call passes the time budget) and read between samples by linear interpolation, beyond the
// last by extending its last segment. Every point is measured in several sweeps over all the
// points and keeps its median, so that a slow moment of a shared machine spoils one sample.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace switchyard {

struct OperationCosts {
  // The shape measured (the cost model uses the figures for a model of the same shape only).
  int hidden = 0, intermediate = 0, heads = 0, kv_heads = 0, head_dim = 0, experts = 0,
      top_k = 0, vocab = 0;
  int layers = 0;  // layers whose weights the measurement cycled through
  // The rank's OpenMP threads the figures were timed with, and the CPUs it could run on
  // (its affinity mask: the node's CPUs when not bound); 0 when unknown. Ranks whose threads
  // add up to more than their node's CPUs take turns on the cores (CostModel).
  int threads = 0, cpus = 0;
  // The CPUs of that mask (their ids, increasing): whether the launcher bound the rank, and
  // to which CPUs, so that the cost model knows which ranks share a core. Empty when unknown
  // (calibrations that predate it).
  std::vector<int> cpu_list;
  std::vector<double> rows;  // increasing sample points
  std::vector<double> dense_s, expert_s, head_s;  // per sample point
  // The expert's cost cycling over working sets of several sizes (bytes of expert weights,
  // decreasing; the first is every loaded expert, whose figures are expert_s):
  // expert_set_s[set][sample point]. Empty in calibrations that predate them.
  std::vector<double> expert_set_bytes;
  std::vector<std::vector<double>> expert_set_s;
  // The expert's cost with the caches flushed before each call (a buffer twice the last-level
  // cache read first): what a rank pays when its node's ranks touch more between an expert's
  // uses than the cache holds. Per sample point; empty in older calibrations.
  std::vector<double> expert_cold_s;
  double cache_bytes = 0;  // the rank's last-level cache (sysfs); 0 when unknown
  double attention_call_s = 0, attention_token_s = 0, attention_pair_s = 0;

  bool Matches(const ModelConfig& cfg) const;
  // 0 for rows <= 0.
  double Dense(double rows) const;
  double Expert(double rows) const;
  // One expert's cost when the rank's weights take `working_set_bytes`: between the measured
  // sets by linear interpolation over bytes, the nearest set outside them (every loaded
  // expert when no sets were measured).
  double Expert(double rows, double working_set_bytes) const;
  // One expert's cost from memory (expert_cold_s; Expert(rows) when not measured).
  double ExpertCold(double rows) const;
  double Head(double rows) const;
  // One sequence chunk of `tokens` rows from position `start_pos` (0 for no tokens).
  double Attention(double tokens, double start_pos) const;
};

struct OperationBenchOptions {
  int max_rows = 512;        // the step limit: largest row count sampled
  int max_context = 1024;    // longest context the attention fit covers
  double call_budget_s = 0.05;  // stop sampling larger rows once one call takes longer
  int repeats = 7;           // timed calls per point (the median is kept), after one untimed
  int sweeps = 3;            // passes over every point; each figure is the median of its passes
  uint64_t max_weight_bytes = uint64_t{2} << 30;  // of layers loaded (see LoadForOperations)
};

// The layers of a checkpoint that fit options.max_weight_bytes (at least one, every expert,
// the embedding and the head), for MeasureOperations; the weights point into the checkpoint's
// mapped files, which it keeps open. Errors name the file and tensor.
struct OperationModel {
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;
  std::unique_ptr<ModelWeights> weights;
};
absl::StatusOr<OperationModel> LoadForOperations(const std::string& model_dir,
                                                 const OperationBenchOptions& options);

// Times the operations over `weights` (which must hold the head and every expert of its
// layers) with the calling process's OpenMP threads.
absl::StatusOr<OperationCosts> MeasureOperations(const ModelWeights& weights,
                                                 const OperationBenchOptions& options);

// {"shape": {...}, "layers", "rows", "dense_s", "expert_s", "head_s",
//  "attention": {"call_s", "token_s", "pair_s"},
//  "expert_sets": [{"bytes", "expert_s"}, ...], "expert_cold_s", "cache_bytes", "threads",
//  "cpus"}
nlohmann::json OperationCostsJson(const OperationCosts& c);
// Errors name `where` and the field.
absl::StatusOr<OperationCosts> ParseOperationCosts(const nlohmann::json& j,
                                                   const std::string& where);

// The least-squares fit y ~ sum_j coef[j] x[j] with every coefficient >= 0, each point's
// error taken relative to its y (so short calls count as much as long ones): the best fit over
// the subsets of terms whose unconstrained coefficients all come out non-negative (the
// attention fit: call, per token, per pair).
std::array<double, 3> FitNonNegativeLeastSquares(const std::vector<std::array<double, 3>>& x,
                                                 const std::vector<double>& y);

// y at `at` by linear interpolation over increasing xs: below the first point its value (a
// call's fixed part), beyond the last the last segment extended (a single point:
// proportionally). xs and ys have the same non-zero size.
double Interpolate(const std::vector<double>& xs, const std::vector<double>& ys, double at);

// The size of the largest cache of CPU 0 (sysfs: /sys/devices/system/cpu/cpu0/cache), or 0
// when unknown.
double LastLevelCacheBytes();

}  // namespace switchyard
