// The cluster simulator's cost model: what one Switchyard step costs on a described cluster,
// operation by operation, following what the runtime does (worker/distributed_executor.h,
// comm/expert_dispatcher.h), not a generic roofline of the whole model.
//
//   ASSIGN_OR_RETURN(ClusterModel cluster, HardwarePreset("h100", /*ranks_per_node=*/8));
//   ASSIGN_OR_RETURN(PlacementPlan plan, PlanPlacement(cfg, /*ep=*/8, /*pp=*/2));
//   CostModel model(cfg, plan, cluster, RoutingModel::Uniform(cfg));
//   StepCost c = model.Step(DecodeStep(/*batch=*/64, /*context=*/512, plan.ep));
//   // c.seconds, c.breakdown.dispatch_s, c.ranks[r].busy_s, c.pair_bytes[i][j], ...
//
// One step, as the runtime runs it:
// - control: rank 0 broadcasts the plan (a tree: ceil(log2 world) latencies plus its bytes);
//   the last stage's ranks send their results to rank 0;
// - each EP rank takes its data-parallel index's sequences and splits them into pp
//   micro-batches of about equal tokens (SplitMicroBatches); stage s runs micro-batch m when
//   it has finished m - 1 and stage s - 1's activations for m have arrived over the stage
//   link (the pipeline recurrence); an empty micro-batch still runs every layer's collectives;
// - per layer, within a stage (the EP group works in lock step, so the slowest rank sets
//   each phase): attention (q/k/v/o and router multiplies, the KV reads and score math of its
//   own sequences), dispatch (a count exchange, then the rows: packing plus an all-to-all-v
//   of hidden + 2 top_k words per (token, destination rank)), the experts (each held expert
//   over the rows routed to it: w1, w3, w2), combine (hidden words per row back);
// - the last stage runs lm_head and sampling over its head rows.
// A matrix multiply of m rows over an n x k weight costs
//   launch + max(n k weight_bytes / weight_read_rate, 2 m n k / matmul_flops),
// where the two rates are what preflight measures (the one-row and the many-row multiply).
// With operation costs measured at the model's own shapes (preflight --model: DeviceModel::
// operations), a layer's dense work, each sequence's attention, an expert over its rows and
// the head are read from them instead: the runtime's own code, its small-shape kernels,
// thread start-ups and sampling included.
// A transfer of b bytes over a link costs latency + b / bandwidth; a rank's all-to-all costs
// its largest latency plus the sum of its bytes over each peer's bandwidth (one rank's sends
// share its memory bus or NIC), the larger of its send and receive sides, and the exchange
// ends when its slowest rank does.
// An expert's measured cost depends on its rank's working set (its experts, layers' dense
// weights, the head): read between the working sets preflight measured, or from memory (the
// cold figure) where the node's ranks' working sets and the KV a step reads exceed its
// last-level cache (cycled through, an LRU-like cache then keeps nothing between uses).
// A node whose ranks run more threads than it has CPUs (several CPU ranks on a small host;
// known from operation costs, which carry each rank's threads and CPUs) gives them turns,
// the time lost being the breakdown's cores_s: every rank's threads are runnable during a
// step (waiting ranks poll), the scheduler spreads them evenly over the cores, so a stage's
// computing threads may share one (its compute takes the expected busiest core's share,
// ExpectedBusiestCore; where the launcher bound the ranks, which the operation costs' CPU
// lists show, the share of the busiest CPU their masks give, BoundBusiestCpu); pipeline
// stages running at once share the CPUs they have in common (the pipeline is followed event by
// event, each running stage at the rate its busiest CPU allows, SharingRate); and the step
// lasts at least the node's work (each rank's busy time times its threads) over its CPUs.
// A step runs an expert only when some token picks it: the experts' phase of a layer is the
// expected time of its slowest rank, each rank's time the sum over its experts of their cost
// when picked, with the chance they are (ranks taken as independent).
// Routing is a distribution of the routed choices over each layer's experts (uniform, a skew,
// or measured counts): expected rows per expert, per rank pair, and the chance an expert is
// used at all by a step (its weights are read only then) follow from it in closed form.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/placement.h"
#include "model/config.h"
#include "study/preflight.h"
#include "worker/kv_cache.h"

namespace switchyard {

// What one rank's device does. Rates per second.
struct DeviceModel {
  std::string name;
  double weight_read_bytes_per_s = 0;  // a one-row multiply's weight bytes (decode)
  double matmul_flops = 0;             // a many-row multiply (prefill)
  double memory_bytes_per_s = 0;       // other memory traffic (KV reads, copies)
  uint64_t memory_bytes = 0;           // capacity; 0: unknown (no fit check)
  // The datasheet peaks S-MBU and S-MFU divide by (the measured rates where none is known).
  double peak_bytes_per_s = 0;
  double peak_flops = 0;
  int weight_bytes = 2;  // per parameter (bf16)
  KvDType kv_dtype = kCpuKvDType;  // as the backend's cache holds it (worker/kv_cache.h)
  int wire_bytes = 4;    // per activation element on the wire and in hidden buffers
  double launch_s = 0;   // fixed cost of one operation (a kernel launch, a parallel region)
  double step_overhead_s = 0;  // fixed cost of one step on rank 0 (scheduling, sampling setup)
  // The runtime's own operations timed at one model's shapes (preflight --model). When they
  // match the model, the cost model reads the dense layer work, attention, experts and head
  // from them instead of the multiply rates above.
  std::optional<OperationCosts> operations;
};

struct LinkModel {
  double latency_s = 0;
  double bandwidth_bytes_per_s = 0;
};

// The cluster: ranks_per_node ranks to a node (world rank r on node r / ranks_per_node), one
// device model for every rank unless per-rank figures are given, links by class unless a
// whole matrix is given (a calibration of this very job).
struct ClusterModel {
  std::string source;  // "preset h100", "calibration FILE"
  DeviceModel device;
  int ranks_per_node = 1;
  LinkModel within_node, between_nodes;
  // An EP group whose ranks all sit on one node exchanges through shared memory, as CPU ranks
  // do by default (comm/expert_dispatcher.h): no transfer; dispatch is one flag wait (a
  // within-node latency) and one copy of each token that leaves its rank, combine one flag
  // wait and the final sum. Off: the all-to-alls (GPUs; `--no-shared-memory`).
  bool shared_memory_exchange = false;
  std::vector<DeviceModel> rank_devices;           // empty, or one per world rank
  std::vector<std::vector<LinkModel>> pair_links;  // empty, or [world][world]

  const DeviceModel& Device(int rank) const;
  LinkModel Link(int src, int dst) const;
  // Drops per-rank and per-pair figures that do not describe a job of `world` ranks (a
  // calibration projected to another size keeps its class medians).
  void FitTo(int world);
};

// `threads` runnable threads spread evenly over `cpus` cores (as even as counts allow), of
// which `computing` (a uniform choice among them) have work: the expected largest number of
// those sharing one core, the factor by which their work takes longer. 1 when every thread
// has a core of its own; 0 when none computes.
double ExpectedBusiestCore(int threads, int cpus, int computing);

// Computing ranks bound to CPUs, each as (threads, the CPUs its mask holds): each rank's
// threads spread evenly over its CPUs; the largest number of threads one CPU runs, at least 1.
double BoundBusiestCpu(const std::vector<std::pair<int, std::vector<int>>>& ranks);

// Published figures for one GPU per rank, NVLink 4 within a node and one 400 Gbit/s NDR
// InfiniBand NIC per GPU between nodes, bf16 weights and KV (docs/scaling.md lists them and
// their sources): "h100" (H100 SXM 80 GB) or "h200" (141 GB). kInvalidArgument otherwise.
absl::StatusOr<ClusterModel> HardwarePreset(std::string_view name, int ranks_per_node);

// The figures of a preflight calibration (study/preflight.h): per rank its copy bandwidth,
// one-row and many-row multiply rates; the link classes' medians, and the whole matrix.
// `step_overhead_s` and `launch_s` are not measured by preflight: given here.
// kInvalidArgument when a rank lacks its figures.
absl::StatusOr<ClusterModel> ClusterFromCalibration(const PreflightReport& calibration,
                                                    const std::string& source);

// The share of each layer's routed choices that goes to each expert: share[layer][expert],
// every layer summing to 1.
struct RoutingModel {
  std::vector<std::vector<double>> share;

  static RoutingModel Uniform(const ModelConfig& cfg);
  // Expert e of layer l gets a share proportional to (1 + ((e + l) mod E))^-skew: 0 is
  // uniform; 1 gives 8 experts shares from 0.37 down to 0.05 (each layer's favourite differs).
  static RoutingModel Skewed(const ModelConfig& cfg, double skew);
  // Measured loads ([layer][expert] routed tokens: LoadExpertLoads, coordinator/expert_balance.h).
  // kInvalidArgument when the shape does not match or a layer has no tokens.
  static absl::StatusOr<RoutingModel> FromCounts(const ModelConfig& cfg,
                                                 const std::vector<std::vector<double>>& counts);
};

// One sequence's chunk in a step: the data-parallel index holding it, its tokens, the
// position of its first token, and the rows the head computes (1 for a sampled or last-row
// chunk, num_tokens for all rows, 0 for none).
struct SeqWork {
  int dp_rank = 0;
  int tokens = 1;
  int start_pos = 0;
  int head_rows = 1;
};
struct StepShape {
  std::vector<SeqWork> seqs;
};
// `batch` decode tokens at `context` positions each, spread over `dp` indices round-robin
// (as the scheduler's admission by free KV blocks does for equal requests).
StepShape DecodeStep(int batch, int context, int dp);
// One prompt of `tokens` tokens prefilled from position 0 in chunks of at most `chunk`, as
// a sequence of steps (one chunk each) on data-parallel index 0.
std::vector<StepShape> PrefillSteps(int tokens, int chunk);

// Where a step's time goes, on the mean stage's clock: along each stage's critical path (the
// slowest EP rank of each phase), the parts add up to the step time (Sum).
struct StepBreakdown {
  double weights_s = 0;    // dense and expert multiplies (weight reads or math), norms
  double attention_s = 0;  // KV reads and score math
  double dispatch_s = 0;   // count exchange, packing, rows out
  double combine_s = 0;    // rows back and the final sum
  double head_s = 0;       // lm_head and sampling
  double control_s = 0;    // plan broadcast, stage links, results, step overhead
  double bubble_s = 0;     // a stage idle, waiting for another stage
  // Ranks waiting for a core: a node whose ranks' threads outnumber its CPUs runs their
  // work in turns, so a step lasts at least the node's core time over its CPUs.
  double cores_s = 0;
  // Not a part of the sum: how much of weights and attention is the slowest EP rank's excess
  // over the group's mean (skewed routing, or sequences on few data-parallel indices).
  double imbalance_s = 0;
  double Sum() const;  // every part but imbalance_s
};

struct RankCost {
  double busy_s = 0;  // computing (not waiting on others or the wire)
  double weight_bytes_read = 0;
  double kv_bytes_read = 0;
  double flops = 0;
};

struct StepCost {
  double seconds = 0;
  StepBreakdown breakdown;
  std::vector<RankCost> ranks;               // per world rank
  std::vector<std::vector<double>> pair_bytes;  // [src][dst] dispatch + combine bytes
  double weight_bytes_read = 0;  // every rank, weights actually read (used experts only)
  double kv_bytes_read = 0;
  double flops = 0;              // the math the step needs (2 per multiply-add)
  int tokens = 0;                // rows the step runs
};

// Memory one rank holds, and whether it fits its device.
struct RankMemory {
  uint64_t weight_bytes = 0;
  uint64_t kv_bytes = 0;
  uint64_t buffer_bytes = 0;  // dispatch buffers, hidden rows
  uint64_t capacity = 0;      // 0: unknown
  bool fits() const { return capacity == 0 || weight_bytes + kv_bytes + buffer_bytes <= capacity; }
};

class CostModel {
 public:
  // Borrows nothing. `plan` must be valid for `cfg`; `cluster` describes plan.world_size()
  // ranks (FitTo is applied).
  CostModel(const ModelConfig& cfg, const PlacementPlan& plan, ClusterModel cluster,
            RoutingModel routing, int max_step_tokens = 512);

  StepCost Step(const StepShape& step) const;
  // Per world rank: weights (bf16 at the device's weight_bytes), the KV of `kv_tokens`
  // positions per data-parallel index, the dispatch buffers for max_step_tokens.
  std::vector<RankMemory> Memory(int64_t kv_tokens) const;
  // KV positions a data-parallel index can hold in what its tightest rank has left after
  // weights and buffers (0 when unknown capacity or nothing is left).
  int64_t KvTokensThatFit() const;
  // KV positions a data-parallel index can hold in `bytes` of KV on each rank.
  int64_t KvTokensIn(uint64_t bytes) const;

  // MoE-CAP's sparsity-aware utilisation of a step: bytes (weights read + KV read) and FLOPs
  // per second over the GPUs' peaks (ranks x device peak).
  double SparseMbu(const StepCost& c) const;
  double SparseMfu(const StepCost& c) const;

  // The CPU work of rank `rank`'s node in step `c` (its ranks' busy time times their
  // threads), its ranks' threads and its CPUs (0 when the operation costs do not say).
  struct NodeWork {
    double core_s = 0;
    int threads = 0, cpus = 0;
  };
  NodeWork NodeWorkOf(const StepCost& c, int rank) const;

  const ModelConfig& config() const { return cfg_; }
  const PlacementPlan& plan() const { return plan_; }
  const ClusterModel& cluster() const { return cluster_; }
  int world() const { return plan_.world_size(); }
  // Whether every rank's costs come from measured operations at this model's shapes (others
  // were dropped at construction: measured at another shape).
  bool measured_operations() const { return measured_operations_; }

 private:
  double MatMul(const DeviceModel& d, double rows, double k, double n, double p_used = 1) const;
  // The fewest KV positions any rank holds in budget(its memory for one position), or 0 when
  // a rank has none.
  int64_t FewestKvTokens(const std::function<int64_t(const RankMemory&)>& positions) const;

  int NodeOf(int rank) const;
  // The OpenMP threads a rank's operation costs were timed with (0 when unknown).
  int ThreadsOf(int rank) const;
  // The core time (busy time times threads) of `node`'s ranks in step `c`.
  double CoreSeconds(const StepCost& c, int node) const;

  ModelConfig cfg_;
  PlacementPlan plan_;
  ClusterModel cluster_;
  RoutingModel routing_;
  int max_step_tokens_;
  bool measured_operations_ = false;
  // Fixed by the plan: per world rank the bytes of weights its steps read; per node its last-
  // level cache and its ranks' threads and CPUs (where operation costs give them); per stage
  // its compute's slowdown from sharing cores (ExpectedBusiestCore, BoundBusiestCpu).
  std::vector<double> working_set_;
  struct Node {
    double cache_bytes = 0;
    int threads = 0, cpus = 0;
  };
  std::map<int, Node> nodes_;
  std::vector<double> turns_;
  // Per stage, its computing threads per CPU: key (node, CPU), the CPU -1 for an unbound
  // rank's share of all its node's CPUs.
  std::vector<std::map<std::pair<int, int>, double>> stage_load_;
  // The rate, against its own, at which stage s computes while the stages `running` run too:
  // its slowdown alone (turns_) over the busiest CPU's load of all of them, where that is more.
  double SharingRate(int s, const std::vector<bool>& running) const;
};

}  // namespace switchyard
