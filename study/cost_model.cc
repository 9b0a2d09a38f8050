#include "study/cost_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/stats.h"
#include "worker/distributed_executor.h"

namespace switchyard {
namespace {

double Mean(const std::vector<double>& v) {
  return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

double Max(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}

double Transfer(const LinkModel& l, double bytes) {
  return bytes <= 0 ? 0 : l.latency_s + bytes / l.bandwidth_bytes_per_s;
}

// A rank's expert time in one layer: the sum over its experts of their cost when a token
// picks them (with that chance, each independently), as a distribution of (time,
// probability) sorted by time, at most kMaxSupport points (neighbours merged).
using Distribution = std::vector<std::pair<double, double>>;
constexpr size_t kMaxSupport = 64;

Distribution SumOfChances(const std::vector<std::pair<double, double>>& chances) {
  Distribution d{{0.0, 1.0}};
  for (const auto& [p, cost] : chances) {
    Distribution next;
    next.reserve(d.size() * 2);
    for (const auto& [v, q] : d) {
      if (p < 1) next.push_back({v, q * (1 - p)});
      if (p > 0) next.push_back({v + cost, q * p});
    }
    std::sort(next.begin(), next.end());
    d.clear();
    for (const auto& point : next) {  // equal times merge
      if (!d.empty() && point.first <= d.back().first * (1 + 1e-12)) {
        d.back().second += point.second;
      } else {
        d.push_back(point);
      }
    }
    while (d.size() > kMaxSupport) {  // merge neighbours pairwise at their mean
      Distribution merged;
      for (size_t i = 0; i < d.size(); i += 2) {
        if (i + 1 == d.size()) {
          merged.push_back(d[i]);
          break;
        }
        const double q = d[i].second + d[i + 1].second;
        const double v = q > 0 ? (d[i].first * d[i].second + d[i + 1].first * d[i + 1].second) / q
                               : d[i].first;
        merged.push_back({v, q});
      }
      d = std::move(merged);
    }
  }
  return d;
}

// E[max over ranks], the ranks' times taken as independent.
double ExpectedMax(const std::vector<Distribution>& ranks) {
  std::vector<double> values;
  for (const Distribution& d : ranks) {
    for (const auto& point : d) values.push_back(point.first);
  }
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  std::vector<size_t> at(ranks.size(), 0);
  std::vector<double> cdf(ranks.size(), 0);
  double expected = 0, below = 0;
  for (double v : values) {
    double p = 1;
    for (size_t j = 0; j < ranks.size(); ++j) {
      while (at[j] < ranks[j].size() && ranks[j][at[j]].first <= v) cdf[j] += ranks[j][at[j]++].second;
      p *= std::min(1.0, cdf[j]);
    }
    expected += v * (p - below);
    below = p;
  }
  return expected;
}

double LogChoose(int n, int r) {
  return std::lgamma(n + 1.0) - std::lgamma(r + 1.0) - std::lgamma(n - r + 1.0);
}

}  // namespace

double BoundBusiestCpu(const std::vector<std::pair<int, std::vector<int>>>& ranks) {
  std::map<int, double> load;  // CPU: the computing threads it runs
  for (const auto& [threads, cpus] : ranks) {
    for (int c : cpus) load[c] += static_cast<double>(threads) / cpus.size();
  }
  double busiest = 1;
  for (const auto& [c, l] : load) busiest = std::max(busiest, l);
  return busiest;
}

double ExpectedBusiestCore(int threads, int cpus, int computing) {
  if (computing <= 0) return 0;
  if (cpus < 1 || threads <= cpus) return 1;
  computing = std::min(computing, threads);
  std::vector<int> group(cpus, threads / cpus);
  for (int i = 0; i < threads % cpus; ++i) ++group[i];
  // P(no core holds more than m computing threads): the computing threads are a uniform
  // choice among all, placed group by group (a hypergeometric split at each step).
  auto at_most = [&](int m) {
    std::vector<double> p(computing + 1, 0.0);  // p[j]: j placed so far, none over m
    p[0] = 1;
    int seen = 0;
    for (int g : group) {
      std::vector<double> next(computing + 1, 0.0);
      for (int j = 0; j <= computing; ++j) {
        if (p[j] == 0) continue;
        for (int x = 0; x <= std::min({m, g, computing - j}); ++x) {
          // Of the seen + g threads, j + x computing: j among the seen, x among this group's.
          next[j + x] += p[j] * std::exp(LogChoose(seen, j) + LogChoose(g, x) -
                                         LogChoose(seen + g, j + x));
        }
      }
      seen += g;
      p = std::move(next);
    }
    // p[computing] is P(none over m | computing among seen) weighted by the chance of that
    // split; the splits were conditioned on the totals, so it is the probability itself.
    return p[computing];
  };
  double expected = 0;
  for (int m = 0; m < computing; ++m) expected += 1 - at_most(m);
  return expected;
}

const DeviceModel& ClusterModel::Device(int rank) const {
  if (rank >= 0 && rank < static_cast<int>(rank_devices.size())) return rank_devices[rank];
  return device;
}

LinkModel ClusterModel::Link(int src, int dst) const {
  if (src >= 0 && dst >= 0 && src < static_cast<int>(pair_links.size()) &&
      dst < static_cast<int>(pair_links[src].size()) && src != dst) {
    return pair_links[src][dst];
  }
  const int per = std::max(1, ranks_per_node);
  return src / per == dst / per ? within_node : between_nodes;
}

void ClusterModel::FitTo(int world) {
  if (static_cast<int>(rank_devices.size()) != world) rank_devices.clear();
  if (static_cast<int>(pair_links.size()) != world) pair_links.clear();
}

absl::StatusOr<ClusterModel> HardwarePreset(std::string_view name, int ranks_per_node) {
  if (ranks_per_node < 1) return absl::InvalidArgumentError("ranks per node must be at least 1");
  ClusterModel c;
  c.source = absl::StrCat("preset ", std::string(name));
  c.ranks_per_node = ranks_per_node;
  DeviceModel& d = c.device;
  d.weight_bytes = 2;
  d.kv_dtype = kCudaKvDType;
  d.wire_bytes = 2;
  d.peak_flops = 989e12;  // bf16 dense tensor cores
  d.launch_s = 2e-6;      // a kernel within a CUDA graph, with its gaps
  d.step_overhead_s = 150e-6;
  if (name == "h100") {
    d.name = "H100 SXM 80GB";
    d.peak_bytes_per_s = 3.35e12;
    d.memory_bytes_per_s = 3.0e12;  // measured device-to-device copy
    d.memory_bytes = static_cast<uint64_t>(0.9 * 80.0 * (1ull << 30));
  } else if (name == "h200") {
    d.name = "H200 141GB";
    d.peak_bytes_per_s = 4.8e12;
    d.memory_bytes_per_s = 4.3e12;
    d.memory_bytes = static_cast<uint64_t>(0.9 * 141e9);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--hardware: ", std::string(name), " is not a known device (h100, h200), nor a file"));
  }
  // The bars the kernels are held to: weight streaming at 0.85 of the copy bandwidth, grouped
  // expert GEMMs at 0.75 of a dense cuBLAS GEMM (about 790 TFLOP/s measured).
  d.weight_read_bytes_per_s = 0.85 * d.memory_bytes_per_s;
  d.matmul_flops = 0.75 * 790e12;
  c.within_node = {.latency_s = 10e-6, .bandwidth_bytes_per_s = 370e9};  // NVLink 4, NCCL
  c.between_nodes = {.latency_s = 20e-6, .bandwidth_bytes_per_s = 46e9};  // NDR 400 Gbit/s
  return c;
}

absl::StatusOr<ClusterModel> ClusterFromCalibration(const PreflightReport& cal,
                                                    const std::string& source) {
  const int n = cal.world;
  if (n < 1 || static_cast<int>(cal.ranks.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ranks: ", cal.ranks.size(),
                                                   " entries for a world of ", n));
  }
  ClusterModel c;
  c.source = absl::StrCat("calibration ", source);
  std::map<std::string, int> per_host;
  for (const RankFigures& r : cal.ranks) ++per_host[r.host];
  c.ranks_per_node = per_host[cal.ranks[0].host];
  std::vector<double> copy, read, flops;
  for (int r = 0; r < n; ++r) {
    const RankFigures& f = cal.ranks[r];
    if (f.copy_bytes_per_s <= 0 || f.decode_weight_bytes_per_s <= 0 || f.prefill_flops <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": ranks[", r, "]: copy, decode and prefill rates must be > 0"));
    }
    DeviceModel d;
    d.name = absl::StrCat(cal.device, " (measured)");
    d.weight_read_bytes_per_s = f.decode_weight_bytes_per_s;
    d.matmul_flops = f.prefill_flops;
    d.memory_bytes_per_s = f.copy_bytes_per_s;
    d.peak_bytes_per_s = f.copy_bytes_per_s;
    d.peak_flops = f.prefill_flops;
    d.weight_bytes = 2;
    const bool gpu = cal.device != "cpu";
    d.kv_dtype = gpu ? kCudaKvDType : kCpuKvDType;
    d.wire_bytes = gpu ? 2 : 4;
    d.launch_s = gpu ? 2e-6 : 1e-6;
    d.step_overhead_s = gpu ? 150e-6 : 50e-6;
    d.operations = f.operations;
    c.rank_devices.push_back(d);
    copy.push_back(f.copy_bytes_per_s);
    read.push_back(f.decode_weight_bytes_per_s);
    flops.push_back(f.prefill_flops);
  }
  c.device = c.rank_devices[0];
  // The figures for a rank the calibration lacks (a projection to another world): rank 0's,
  // on a node with the CPUs its host's ranks covered together, its placement unknown.
  if (c.device.operations && !c.device.operations->cpu_list.empty()) {
    std::set<int> node_cpus;
    for (const RankFigures& f : cal.ranks) {
      if (f.host == cal.ranks[0].host && f.operations) {
        node_cpus.insert(f.operations->cpu_list.begin(), f.operations->cpu_list.end());
      }
    }
    c.device.operations->cpus = static_cast<int>(node_cpus.size());
    c.device.operations->cpu_list.clear();
  }
  c.shared_memory_exchange = cal.device == "cpu";  // the CPU dispatcher's default on one host
  c.device.memory_bytes_per_s = c.device.peak_bytes_per_s = Median(copy);
  c.device.weight_read_bytes_per_s = Median(read);
  c.device.matmul_flops = c.device.peak_flops = Median(flops);
  std::vector<double> lat[3], bw[3];
  c.pair_links.assign(n, std::vector<LinkModel>(n));
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      if (i == j) continue;
      const double l = cal.latency_s.at(i).at(j), b = cal.bandwidth_bytes_per_s.at(i).at(j);
      if (l <= 0 || b <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": matrix: rank ", i, " -> rank ", j, " has no latency or bandwidth"));
      }
      c.pair_links[i][j] = {.latency_s = l, .bandwidth_bytes_per_s = b};
      const int cls = static_cast<int>(cal.ClassOf(i, j));
      lat[cls].push_back(l);
      bw[cls].push_back(b);
    }
  }
  auto link = [&](LinkClass k) {
    const int i = static_cast<int>(k);
    return LinkModel{.latency_s = Median(lat[i]), .bandwidth_bytes_per_s = Median(bw[i])};
  };
  c.within_node = link(LinkClass::kWithinNode);
  c.between_nodes = link(LinkClass::kBetweenNodes);
  // A calibration of one host (or of one rank per host) lacks a class: the other stands in,
  // and a single rank has neither (nothing travels then but a projection's traffic).
  if (c.between_nodes.bandwidth_bytes_per_s <= 0) c.between_nodes = c.within_node;
  if (c.within_node.bandwidth_bytes_per_s <= 0) c.within_node = c.between_nodes;
  if (c.within_node.bandwidth_bytes_per_s <= 0) {
    c.within_node = c.between_nodes = {.latency_s = 1e-6, .bandwidth_bytes_per_s = Median(copy)};
  }
  return c;
}

RoutingModel RoutingModel::Uniform(const ModelConfig& cfg) {
  return Skewed(cfg, 0);
}

RoutingModel RoutingModel::Skewed(const ModelConfig& cfg, double skew) {
  const int E = cfg.num_local_experts;
  RoutingModel m;
  m.share.assign(cfg.num_hidden_layers, std::vector<double>(E));
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += m.share[l][e] = std::pow(1.0 + (e + l) % E, -skew);
    for (double& s : m.share[l]) s /= sum;
  }
  return m;
}

absl::StatusOr<RoutingModel> RoutingModel::FromCounts(
    const ModelConfig& cfg, const std::vector<std::vector<double>>& counts) {
  if (static_cast<int>(counts.size()) != cfg.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("expert load: ", counts.size(),
                                                   " layers, the model has ",
                                                   cfg.num_hidden_layers));
  }
  RoutingModel m;
  for (size_t l = 0; l < counts.size(); ++l) {
    if (static_cast<int>(counts[l].size()) != cfg.num_local_experts) {
      return absl::InvalidArgumentError(absl::StrCat("expert load: layer ", l, ": ",
                                                     counts[l].size(), " experts, the model has ",
                                                     cfg.num_local_experts));
    }
    double sum = 0;
    for (double c : counts[l]) {
      if (!(c >= 0)) return absl::InvalidArgumentError(absl::StrCat("expert load: layer ", l, ": a negative count"));
      sum += c;
    }
    if (sum <= 0) return absl::InvalidArgumentError(absl::StrCat("expert load: layer ", l, " routed no token"));
    std::vector<double> share;
    for (double c : counts[l]) share.push_back(c / sum);
    m.share.push_back(std::move(share));
  }
  return m;
}

StepShape DecodeStep(int batch, int context, int dp) {
  StepShape s;
  for (int i = 0; i < batch; ++i) {
    s.seqs.push_back({.dp_rank = i % std::max(1, dp), .tokens = 1,
                      .start_pos = std::max(0, context - 1), .head_rows = 1});
  }
  return s;
}

std::vector<StepShape> PrefillSteps(int tokens, int chunk) {
  std::vector<StepShape> steps;
  chunk = std::max(1, chunk);
  for (int at = 0; at < tokens; at += chunk) {
    const int n = std::min(chunk, tokens - at);
    StepShape s;
    s.seqs.push_back({.dp_rank = 0, .tokens = n, .start_pos = at,
                      .head_rows = at + n == tokens ? 1 : 0});
    steps.push_back(std::move(s));
  }
  return steps;
}

double StepBreakdown::Sum() const {
  return weights_s + attention_s + dispatch_s + combine_s + head_s + control_s + bubble_s +
         cores_s;
}

CostModel::CostModel(const ModelConfig& cfg, const PlacementPlan& plan, ClusterModel cluster,
                     RoutingModel routing, int max_step_tokens)
    : cfg_(cfg),
      plan_(plan),
      cluster_(std::move(cluster)),
      routing_(std::move(routing)),
      max_step_tokens_(max_step_tokens) {
  cluster_.FitTo(plan_.world_size());
  // Operation costs describe the model they were measured at only.
  auto keep = [&](DeviceModel& d) {
    if (d.operations && !d.operations->Matches(cfg_)) d.operations.reset();
    return d.operations.has_value();
  };
  measured_operations_ = keep(cluster_.device);
  for (DeviceModel& d : cluster_.rank_devices) measured_operations_ &= keep(d);

  // What the plan fixes for every step. Each rank's working set, the weights its steps read:
  // its experts, its layers' attention and router, the head on the last stage.
  const int W = world(), ep = plan_.ep, pp = plan_.pp;
  const double H = cfg_.hidden_size, E = cfg_.num_local_experts, V = cfg_.vocab_size;
  working_set_.assign(W, 0);
  // Where every rank of a node says which CPUs it may run on (its CPU list), the node's CPUs
  // are those the ranks' masks cover together, and the node is bound when each rank's mask is
  // a part of them (the launcher pinned the ranks).
  std::map<int, std::set<int>> listed;  // node: the CPUs its ranks' masks cover
  std::set<int> unlisted;               // nodes with a rank that does not say
  for (int w = 0; w < W; ++w) {
    const int s = w / ep, j = w % ep;
    const auto [lb, le] = plan_.stage_layers[s];
    const DeviceModel& d = cluster_.Device(w);
    double params = (le - lb) * (static_cast<double>(cfg_.AttentionParamsPerLayer()) + E * H);
    for (int l = lb; l < le; ++l) {
      for (const auto& holders : plan_.expert_ranks[l]) {
        if (std::find(holders.begin(), holders.end(), j) != holders.end()) {
          params += static_cast<double>(cfg_.ExpertParams());
        }
      }
    }
    if (s == pp - 1) params += V * H;
    working_set_[w] = params * d.weight_bytes;
    Node& node = nodes_[NodeOf(w)];
    if (d.operations) node.cache_bytes = std::max(node.cache_bytes, d.operations->cache_bytes);
    if (ThreadsOf(w) > 0) {
      node.threads += ThreadsOf(w);
      node.cpus = std::max(node.cpus, d.operations->cpus);
      const std::vector<int>& cpus = d.operations->cpu_list;
      if (cpus.empty()) unlisted.insert(NodeOf(w));
      listed[NodeOf(w)].insert(cpus.begin(), cpus.end());
    }
  }
  std::set<int> bound;  // nodes
  for (const auto& [n, cpus] : listed) {
    if (unlisted.count(n) > 0 || cpus.empty()) continue;
    nodes_[n].cpus = static_cast<int>(cpus.size());
    bound.insert(n);
  }
  for (int w = 0; w < W; ++w) {
    if (ThreadsOf(w) > 0 && static_cast<int>(cluster_.Device(w).operations->cpu_list.size()) >=
                                nodes_[NodeOf(w)].cpus) {
      bound.erase(NodeOf(w));
    }
  }
  // The nodes' CPUs, where operation costs say how many threads each rank runs: during a step
  // every rank's threads are runnable (a rank waiting on a peer polls, yielding its core,
  // before it sleeps). Where they outnumber the CPUs, a stage's computing ranks may find
  // themselves on one core, and take turns; the excess is the breakdown's cores_s.
  // - Ranks that may run anywhere on their node: the scheduler spreads the threads evenly and
  //   leaves them there, so each stage's compute takes the expected busiest core's share
  //   (ExpectedBusiestCore).
  // - Bound ranks: each rank's threads spread over its own CPUs, so the stage's compute takes
  //   the share of its busiest CPU, known (BoundBusiestCpu).
  turns_.assign(pp, 1.0);
  for (int s = 0; s < pp; ++s) {
    std::map<int, int> computing;  // node: the stage's threads there
    for (int w = s * ep; w < (s + 1) * ep; ++w) computing[NodeOf(w)] += ThreadsOf(w);
    for (const auto& [n, k] : computing) {
      const Node& node = nodes_[n];
      if (k <= 0) continue;
      if (bound.count(n) > 0) {
        std::vector<std::pair<int, std::vector<int>>> stage;  // threads, CPUs
        for (int w = s * ep; w < (s + 1) * ep; ++w) {
          if (NodeOf(w) == n && ThreadsOf(w) > 0) {
            stage.emplace_back(ThreadsOf(w), cluster_.Device(w).operations->cpu_list);
          }
        }
        turns_[s] = std::max(turns_[s], BoundBusiestCpu(stage));
      } else {
        turns_[s] = std::max(turns_[s], ExpectedBusiestCore(node.threads, node.cpus, k));
      }
    }
  }
  // Each stage's computing threads per CPU, for stages that run at once (SharingRate): a bound
  // rank's threads over its own CPUs; an unbound rank's over all its node's (-1 stands for
  // them), at its node's threads per CPU.
  stage_load_.assign(pp, {});
  for (int w = 0; w < W; ++w) {
    const int n = NodeOf(w), threads = ThreadsOf(w);
    const Node& node = nodes_[n];
    if (threads <= 0 || node.cpus <= 0) continue;
    std::map<std::pair<int, int>, double>& load = stage_load_[w / ep];
    if (bound.count(n) > 0) {
      const std::vector<int>& cpus = cluster_.Device(w).operations->cpu_list;
      for (int c : cpus) load[{n, c}] += static_cast<double>(threads) / cpus.size();
    } else {
      load[{n, -1}] += static_cast<double>(threads) / node.cpus;
    }
  }
}

int CostModel::NodeOf(int rank) const { return rank / std::max(1, cluster_.ranks_per_node); }

int CostModel::ThreadsOf(int rank) const {
  const DeviceModel& d = cluster_.Device(rank);
  return d.operations && d.operations->cpus > 0 ? d.operations->threads : 0;
}

double CostModel::MatMul(const DeviceModel& d, double rows, double k, double n,
                         double p_used) const {
  if (rows <= 0 || p_used <= 0) return 0;
  const double read = p_used * n * k * d.weight_bytes / d.weight_read_bytes_per_s;
  const double math = 2.0 * rows * n * k / d.matmul_flops;
  return p_used * d.launch_s + std::max(read, math);
}

StepCost CostModel::Step(const StepShape& step) const {
  const int ep = plan_.ep, pp = plan_.pp, W = world();
  const double H = cfg_.hidden_size, I = cfg_.intermediate_size, E = cfg_.num_local_experts;
  const double K = cfg_.num_experts_per_tok, V = cfg_.vocab_size;
  const double q = cfg_.q_dim(), kv = cfg_.kv_dim();
  StepCost c;
  c.ranks.assign(W, {});
  c.pair_bytes.assign(W, std::vector<double>(W, 0));

  // Each data-parallel index's local plan, split into pp micro-batches (the runtime's split).
  std::vector<std::vector<SeqWork>> local(ep);
  for (const SeqWork& s : step.seqs) {
    local[std::clamp(s.dp_rank, 0, ep - 1)].push_back(s);
    c.tokens += s.tokens;
  }
  // mb[r][m]: the sequences of micro-batch m on ep rank r; mb_rows[m][r] their rows.
  std::vector<std::vector<std::vector<SeqWork>>> mb(ep, std::vector<std::vector<SeqWork>>(pp));
  std::vector<std::vector<double>> mb_rows(pp, std::vector<double>(ep, 0));
  std::vector<int> head_rows(ep, 0);
  for (int r = 0; r < ep; ++r) {
    std::vector<SeqEntry> entries;
    int offset = 0;
    for (const SeqWork& s : local[r]) {
      SeqEntry e;
      e.num_tokens = s.tokens;
      e.token_offset = offset;
      offset += s.tokens;
      entries.push_back(e);
      head_rows[r] += s.head_rows;
    }
    std::vector<MicroBatch> split;
    SplitMicroBatches(entries, pp, &split);
    for (int m = 0; m < pp; ++m) {
      for (int i = split[m].seq_begin; i < split[m].seq_end; ++i) mb[r][m].push_back(local[r][i]);
      mb_rows[m][r] = split[m].rows;
    }
  }

  // Control: the plan's broadcast down a tree from rank 0.
  double plan_bytes = 0;
  for (const SeqWork& s : step.seqs) plan_bytes += sizeof(SeqEntry) + 4.0 * s.tokens + 4.0 * (1 + (s.start_pos + s.tokens) / 16);
  double bcast = 0;
  if (W > 1) {
    double worst = 0;
    for (int w = 1; w < W; ++w) worst = std::max(worst, Transfer(cluster_.Link(0, w), plan_bytes + 64));
    bcast = std::ceil(std::log2(static_cast<double>(W))) * worst;
  }
  const double overhead = cluster_.Device(0).step_overhead_s;

  // Where the node's ranks' working sets and the KV this step reads exceed its last-level
  // cache, experts come from memory between their uses (ExpertCold); otherwise each costs
  // what it costs at its rank's working set (OperationCosts::Expert).
  std::map<int, double> footprint;  // node: weights and KV
  for (int w = 0; w < W; ++w) {
    const auto [lb, le] = plan_.stage_layers[w / ep];
    double kv_read = 0;
    for (const SeqWork& x : local[w % ep]) {
      kv_read += (x.start_pos + x.tokens) * static_cast<double>(KvBytesPerToken(
                                                le - lb, cfg_.kv_dim(), cluster_.Device(w).kv_dtype));
    }
    footprint[NodeOf(w)] += working_set_[w] + kv_read;
  }
  auto cold_node = [&](int w) {
    const double cache = nodes_.at(NodeOf(w)).cache_bytes;
    return cache > 0 && footprint.at(NodeOf(w)) > cache;
  };

  // Per stage and micro-batch: the stage's time, and its parts along the critical path (the
  // slowest rank of each phase; its excess over the group's mean is the imbalance).
  std::vector<std::vector<double>> T(pp, std::vector<double>(pp, 0));
  std::vector<StepBreakdown> stage_parts(pp);
  const size_t wire_row = static_cast<size_t>(H) * cluster_.device.wire_bytes;
  for (int s = 0; s < pp; ++s) {
    const auto [lb, le] = plan_.stage_layers[s];
    // The stage's EP group (world ranks s * ep .. s * ep + ep - 1) within one node.
    const bool shared_exchange =
        ep > 1 && cluster_.shared_memory_exchange && NodeOf(s * ep) == NodeOf(s * ep + ep - 1);
    for (int m = 0; m < pp; ++m) {
      const std::vector<double>& rows = mb_rows[m];
      const double group_rows = std::accumulate(rows.begin(), rows.end(), 0.0);
      double t = 0;
      for (int l = lb; l < le; ++l) {
        // Attention block on each rank: norms, q/k/v, scores, o, router.
        std::vector<double> attn_w(ep), attn_kv(ep), attn(ep);
        for (int r = 0; r < ep; ++r) {
          const int w = s * ep + r;
          const DeviceModel& d = cluster_.Device(w);
          const double n = rows[r];
          const OperationCosts* ops = d.operations ? &*d.operations : nullptr;
          double tw = 0;
          if (ops != nullptr) {
            tw = ops->Dense(n);
          } else {
            tw = MatMul(d, n, H, q + 2 * kv) + MatMul(d, n, q, H) + MatMul(d, n, H, E);
            tw += n > 0 ? 2 * (n * H * 4 * 2) / d.memory_bytes_per_s : 0;  // two RMS norms
          }
          double bytes = 0, flops = 0, measured_kv = 0;
          for (const SeqWork& x : mb[r][m]) {
            const double positions = x.tokens * static_cast<double>(x.start_pos) +
                                     0.5 * x.tokens * (x.tokens + 1.0);
            // Read every position, write the new ones.
            bytes += (x.start_pos + 2.0 * x.tokens) * KvBytesPerToken(1, cfg_.kv_dim(), d.kv_dtype);
            flops += 4.0 * q * positions;
            if (ops != nullptr) measured_kv += ops->Attention(x.tokens, x.start_pos);
          }
          const double tkv = n <= 0         ? 0
                             : ops != nullptr ? measured_kv
                                              : d.launch_s + std::max(bytes / d.memory_bytes_per_s,
                                                                      flops / d.matmul_flops);
          attn_w[r] = tw;
          attn_kv[r] = tkv;
          attn[r] = tw + tkv;
          RankCost& rc = c.ranks[w];
          rc.busy_s += attn[r];
          if (n > 0) rc.weight_bytes_read += (H * (q + 2 * kv) + q * H + H * E) * d.weight_bytes;
          rc.kv_bytes_read += bytes;
          rc.flops += 2 * n * (H * (q + 2 * kv) + q * H + H * E) + flops;
        }
        // Routing: expected rows per (source, destination) and per (expert, holder).
        const std::vector<double>& share = routing_.share[l];
        const auto& holders = plan_.expert_ranks[l];
        std::vector<double> dest_share(ep, 0);  // share of a choice landing on each rank
        for (int e = 0; e < E; ++e) {
          for (int j : holders[e]) dest_share[j] += share[e] / holders[e].size();
        }
        std::vector<std::vector<double>> rows_to(ep, std::vector<double>(ep, 0));
        for (int r = 0; r < ep; ++r) {
          for (int j = 0; j < ep; ++j) {
            // A token travels once to each rank holding any of its choices.
            rows_to[r][j] = rows[r] * (1 - std::pow(1 - std::min(1.0, dest_share[j]), K));
          }
        }
        // Dispatch and combine, when the group has peers.
        double t_dispatch = 0, t_combine = 0;
        if (shared_exchange) {
          std::vector<double> out(ep), back(ep);
          for (int r = 0; r < ep; ++r) {
            const int w = s * ep + r;
            const DeviceModel& d = cluster_.Device(w);
            const double lat = cluster_.within_node.latency_s;
            // A token leaves when any of its K choices lands on another rank; it is copied
            // once into the segment whatever its fan-out. Peers read rows and partial sums in
            // place (their reads are the experts' and the sum's own).
            const double leaving =
                rows[r] * (1 - std::pow(std::min(1.0, dest_share[r]), K));
            double summed = 0;
            for (int j = 0; j < ep; ++j) {
              if (j == r) continue;
              summed += rows_to[r][j] * H * 4;
              c.pair_bytes[w][s * ep + j] += rows_to[r][j] * wire_row + rows_to[j][r] * wire_row;
            }
            out[r] = lat + leaving * wire_row / d.memory_bytes_per_s;
            back[r] = lat + summed / d.memory_bytes_per_s;
          }
          t_dispatch = Max(out);
          t_combine = Max(back);
        } else if (ep > 1) {
          const double row_out = wire_row + 2 * K * 4, row_back = static_cast<double>(wire_row);
          std::vector<double> counts(ep), out(ep), back(ep);
          for (int r = 0; r < ep; ++r) {
            const int w = s * ep + r;
            const DeviceModel& d = cluster_.Device(w);
            double lat = 0, send_t = 0, recv_t = 0, send_back_t = 0, recv_back_t = 0, packed = 0,
                   summed = 0;
            for (int j = 0; j < ep; ++j) {
              if (j == r) continue;
              const int v = s * ep + j;
              const LinkModel to = cluster_.Link(w, v), from = cluster_.Link(v, w);
              lat = std::max(lat, std::max(to.latency_s, from.latency_s));
              send_t += rows_to[r][j] * row_out / to.bandwidth_bytes_per_s;
              recv_t += rows_to[j][r] * row_out / from.bandwidth_bytes_per_s;
              send_back_t += rows_to[j][r] * row_back / to.bandwidth_bytes_per_s;
              recv_back_t += rows_to[r][j] * row_back / from.bandwidth_bytes_per_s;
              packed += rows_to[r][j] * row_back;
              summed += rows_to[r][j] * H * 4;
              c.pair_bytes[w][v] += rows_to[r][j] * row_out + rows_to[j][r] * row_back;
            }
            counts[r] = lat;
            out[r] = lat + packed / d.memory_bytes_per_s + std::max(send_t, recv_t);
            back[r] = lat + std::max(send_back_t, recv_back_t) + summed / d.memory_bytes_per_s;
          }
          t_dispatch = Max(counts) + Max(out);
          t_combine = Max(back);
        }
        // The experts each rank holds, over the rows routed to them. A step runs an expert
        // only when a token picks it: a rank's time is a sum of such chances, and the phase
        // lasts as long as its slowest rank (the expected maximum).
        std::vector<std::vector<std::pair<double, double>>> chances(ep);
        std::vector<double> expert_mean(ep, 0);
        for (int e = 0; e < E; ++e) {
          const double reps = static_cast<double>(holders[e].size());
          // Chance a given token picks this expert (at most once among its K choices); the
          // replicas split the tokens (by source rank and position), group_rows / reps each.
          const double pick = std::min(1.0, K * share[e]);
          const double rows_e = group_rows * pick / reps;
          const double p_used = 1 - std::pow(1 - pick, group_rows / reps);
          if (p_used <= 0) continue;
          const double rows_if_used = rows_e / p_used;
          for (int j : holders[e]) {
            const int w = s * ep + j;
            const DeviceModel& d = cluster_.Device(w);
            const double cost =
                d.operations ? (cold_node(w) ? d.operations->ExpertCold(rows_if_used)
                                             : d.operations->Expert(rows_if_used, working_set_[w]))
                             : 2 * MatMul(d, rows_if_used, H, I) + MatMul(d, rows_if_used, I, H) +
                                   rows_if_used * I * 4 * 3 / d.memory_bytes_per_s;
            chances[j].push_back({p_used, cost});
            expert_mean[j] += p_used * cost;
            RankCost& rc = c.ranks[w];
            rc.busy_s += p_used * cost;
            rc.weight_bytes_read += p_used * 3 * H * I * d.weight_bytes;
            rc.flops += 2 * rows_e * 3 * H * I;
          }
        }
        std::vector<Distribution> dists;
        for (int j = 0; j < ep; ++j) dists.push_back(SumOfChances(chances[j]));
        const double experts = ep == 1 ? expert_mean[0] : ExpectedMax(dists);
        const int slow = static_cast<int>(std::max_element(attn.begin(), attn.end()) - attn.begin());
        const double layer = turns_[s] * (attn[slow] + experts) + t_dispatch + t_combine;
        t += layer;
        StepBreakdown& b = stage_parts[s];
        b.cores_s += (turns_[s] - 1) * (attn[slow] + experts);
        b.weights_s += attn_w[slow] + experts;
        b.attention_s += attn_kv[slow];
        b.imbalance_s += (attn[slow] - Mean(attn)) + std::max(0.0, experts - Mean(expert_mean));
        b.dispatch_s += t_dispatch;
        b.combine_s += t_combine;
      }
      if (s == 0) {  // the embedding rows
        double emb = 0;
        for (int r = 0; r < ep; ++r) emb = std::max(emb, rows[r] * H * 2 * 2 / cluster_.Device(r).memory_bytes_per_s);
        t += emb;
        stage_parts[s].weights_s += emb;
      }
      T[s][m] = t;
    }
  }

  // Stage links: micro-batch m's activations from stage s - 1 to s (each EP rank to the same
  // EP rank of the next stage); the stage starts when its slowest rank has them.
  auto link_time = [&](int s, int m) {
    double worst = 0;
    for (int r = 0; r < ep; ++r) {
      worst = std::max(worst, Transfer(cluster_.Link((s - 1) * ep + r, s * ep + r),
                                       mb_rows[m][r] * static_cast<double>(wire_row)));
    }
    return worst;
  };
  // The pipeline: stage s starts micro-batch m when it has finished m - 1 and m has arrived.
  // Stages that run at once on CPUs they share go at the rate those CPUs allow them
  // (SharingRate), so the pipeline is followed event by event: a stage starting or finishing
  // changes the others' rates.
  std::vector<std::vector<double>> finish(pp, std::vector<double>(pp, -1));
  std::vector<double> links_in(pp, 0);
  std::vector<int> next(pp, 0);        // the micro-batch each stage runs or runs next
  std::vector<double> started(pp, 0);  // when the running one started
  std::vector<double> left(pp, 0);     // its work left, in seconds at the stage's own rate
  std::vector<bool> running(pp, false);
  // When stage s may start its next micro-batch; -1 while that depends on work not done.
  auto ready_at = [&](int s) {
    const int m = next[s];
    if (m >= pp || running[s]) return -1.0;
    const double free_at = m > 0 ? finish[s][m - 1] : bcast;
    if (s == 0) return free_at;
    if (finish[s - 1][m] < 0) return -1.0;
    return std::max(free_at, finish[s - 1][m] + link_time(s, m));
  };
  double now = 0;
  for (int finished = 0; finished < pp * pp;) {
    for (int s = 0; s < pp; ++s) {
      const double at = ready_at(s);
      if (at < 0 || at > now * (1 + 1e-12) + 1e-18) continue;
      const int m = next[s];
      if (s > 0) {
        // The stage waited for the activations: the transfer's share of that wait is the
        // stage link's (control), the rest is the bubble.
        const double free_at = m > 0 ? finish[s][m - 1] : bcast;
        links_in[s] += std::min(link_time(s, m), at - free_at);
      }
      running[s] = true;
      started[s] = at;
      left[s] = T[s][m];
    }
    std::vector<double> rate(pp, 0);
    double step = std::numeric_limits<double>::infinity();
    for (int s = 0; s < pp; ++s) {
      if (running[s]) {
        rate[s] = SharingRate(s, running);
        step = std::min(step, left[s] / rate[s]);
      } else if (const double at = ready_at(s); at >= 0) {
        step = std::min(step, at - now);
      }
    }
    now += step;
    for (int s = 0; s < pp; ++s) {
      if (!running[s]) continue;
      if (left[s] / rate[s] <= step * (1 + 1e-12)) {
        const int m = next[s]++;
        finish[s][m] = now;
        running[s] = false;
        ++finished;
        // The time the stage ran beyond its own: another stage's turns on shared CPUs.
        const double extra = now - started[s] - T[s][m];
        if (extra > 1e-12 * (now - started[s])) stage_parts[s].cores_s += extra;
      } else {
        left[s] -= rate[s] * step;
      }
    }
  }
  // The head on the last stage (over each rank's whole local plan), then results to rank 0.
  double head = 0, results = 0;
  for (int r = 0; r < ep; ++r) {
    const int w = (pp - 1) * ep + r;
    const DeviceModel& d = cluster_.Device(w);
    const double n = head_rows[r];
    const double th = d.operations ? d.operations->Head(n)
                                   : MatMul(d, n, H, V) +
                                         (n > 0 ? n * V * 4 * 3 / d.memory_bytes_per_s : 0);
    head = std::max(head, turns_[pp - 1] * th);
    c.ranks[w].busy_s += th;
    if (n > 0) c.ranks[w].weight_bytes_read += H * V * d.weight_bytes;
    c.ranks[w].flops += 2 * n * H * V;
    if (w != 0 && !local[r].empty()) {
      results = std::max(results, Transfer(cluster_.Link(w, 0), 4.0 * local[r].size()));
    }
  }
  stage_parts[pp - 1].cores_s += head - head / turns_[pp - 1];
  c.seconds = finish[pp - 1][pp - 1] + head + results + overhead;
  // The nodes' cores: where ranks' threads outnumber the CPUs, the step lasts at least the
  // node's core time (busy time times threads) over its CPUs.
  double cores = 0;
  for (const auto& [n, node] : nodes_) {
    if (node.threads > node.cpus) {
      cores = std::max(cores, CoreSeconds(c, n) / node.cpus - c.seconds);
    }
  }
  c.seconds += cores;

  // The breakdown on the mean stage's clock: each stage's own parts, its control, and the
  // rest of the step it sat idle (the pipeline bubble).
  StepBreakdown& b = c.breakdown;
  for (int s = 0; s < pp; ++s) {
    StepBreakdown p = stage_parts[s];
    p.control_s = bcast + overhead + results + links_in[s];
    p.cores_s += cores;
    if (s == pp - 1) p.head_s = head / turns_[pp - 1];
    p.bubble_s = std::max(0.0, c.seconds - p.Sum());  // Sum leaves imbalance out
    b.weights_s += p.weights_s / pp;
    b.attention_s += p.attention_s / pp;
    b.dispatch_s += p.dispatch_s / pp;
    b.combine_s += p.combine_s / pp;
    b.imbalance_s += p.imbalance_s / pp;
    b.head_s += p.head_s / pp;
    b.control_s += p.control_s / pp;
    b.bubble_s += p.bubble_s / pp;
    b.cores_s += p.cores_s / pp;
  }
  for (const RankCost& r : c.ranks) {
    c.weight_bytes_read += r.weight_bytes_read;
    c.kv_bytes_read += r.kv_bytes_read;
    c.flops += r.flops;
  }
  return c;
}

double CostModel::SharingRate(int s, const std::vector<bool>& running) const {
  double busiest = 0;
  for (const auto& [cpu, load] : stage_load_[s]) {
    double total = 0;
    for (size_t o = 0; o < stage_load_.size(); ++o) {
      if (!running[o]) continue;
      const auto it = stage_load_[o].find(cpu);
      if (it != stage_load_[o].end()) total += it->second;
    }
    busiest = std::max(busiest, total);
  }
  return turns_[s] / std::max(turns_[s], busiest);
}

double CostModel::CoreSeconds(const StepCost& c, int node) const {
  double core_s = 0;
  for (int w = 0; w < world() && w < static_cast<int>(c.ranks.size()); ++w) {
    if (NodeOf(w) == node) core_s += c.ranks[w].busy_s * ThreadsOf(w);
  }
  return core_s;
}

CostModel::NodeWork CostModel::NodeWorkOf(const StepCost& c, int rank) const {
  const int node = NodeOf(rank);
  NodeWork n{.core_s = CoreSeconds(c, node)};
  const auto it = nodes_.find(node);
  if (it != nodes_.end()) {
    n.threads = it->second.threads;
    n.cpus = it->second.cpus;
  }
  return n;
}

std::vector<RankMemory> CostModel::Memory(int64_t kv_tokens) const {
  const std::vector<RankStatus> f =
      Footprints(plan_, cfg_, static_cast<uint64_t>(cluster_.device.weight_bytes));
  const DispatchLayout layout{.hidden = cfg_.hidden_size, .top_k = cfg_.num_experts_per_tok,
                              .num_experts = cfg_.num_local_experts, .ep = plan_.ep,
                              .max_tokens = max_step_tokens_};
  std::vector<RankMemory> out;
  for (int w = 0; w < world(); ++w) {
    const DeviceModel& d = cluster_.Device(w);
    RankMemory m;
    m.weight_bytes = f[w].weight_bytes;
    m.kv_bytes = KvBytesPerToken(f[w].layer_end - f[w].layer_begin, cfg_.kv_dim(), d.kv_dtype) *
                 static_cast<uint64_t>(std::max<int64_t>(0, kv_tokens));
    // Dispatch buffers (4-byte words, comm/expert_dispatcher.h), the hidden rows and their
    // scratch (four rows of hidden, two of intermediate per token).
    const uint64_t T = static_cast<uint64_t>(max_step_tokens_);
    m.buffer_bytes = (plan_.ep > 1 ? layout.send_bytes() + layout.recv_bytes() +
                                         layout.combine_send_bytes() + layout.combine_recv_bytes()
                                   : 0) +
                     T * (4 * static_cast<uint64_t>(cfg_.hidden_size) +
                          2 * static_cast<uint64_t>(cfg_.intermediate_size)) *
                         4;
    m.capacity = d.memory_bytes;
    out.push_back(m);
  }
  return out;
}

int64_t CostModel::FewestKvTokens(
    const std::function<int64_t(const RankMemory&)>& positions) const {
  int64_t fewest = -1;
  for (const RankMemory& m : Memory(1)) {
    const int64_t n = m.kv_bytes == 0 ? 0 : std::max<int64_t>(0, positions(m));
    fewest = fewest < 0 ? n : std::min(fewest, n);
  }
  return std::max<int64_t>(fewest, 0);
}

int64_t CostModel::KvTokensThatFit() const {
  return FewestKvTokens([](const RankMemory& m) -> int64_t {
    const uint64_t used = m.weight_bytes + m.buffer_bytes;
    if (m.capacity == 0 || used >= m.capacity) return 0;
    return static_cast<int64_t>((m.capacity - used) / m.kv_bytes);
  });
}

int64_t CostModel::KvTokensIn(uint64_t bytes) const {
  return FewestKvTokens(
      [bytes](const RankMemory& m) { return static_cast<int64_t>(bytes / m.kv_bytes); });
}

double CostModel::SparseMbu(const StepCost& c) const {
  double peak = 0;
  for (int w = 0; w < world(); ++w) peak += cluster_.Device(w).peak_bytes_per_s;
  return c.seconds > 0 && peak > 0 ? (c.weight_bytes_read + c.kv_bytes_read) / c.seconds / peak
                                   : 0;
}

double CostModel::SparseMfu(const StepCost& c) const {
  double peak = 0;
  for (int w = 0; w < world(); ++w) peak += cluster_.Device(w).peak_flops;
  return c.seconds > 0 && peak > 0 ? c.flops / c.seconds / peak : 0;
}

}  // namespace switchyard
