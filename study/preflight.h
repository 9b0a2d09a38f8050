// `switchyard preflight`: measures a job's fabric and devices before it serves, and writes the
// calibration file that scaling studies read.
//
//   ASSIGN_OR_RETURN(PreflightReport r, RunPreflight(*world, PreflightOptions{}, progress));
//   if (world->rank() == 0) {
//     std::cout << FormatReport(r);
//     WriteFile(path, CalibrationJson(r).dump(2));
//   }
//
// What is measured, all with the transport the job itself uses (the Communicator given):
// - every rank pair, in rounds (a round-robin schedule: each pair meets once, all pairs of a
//   round at the same time, as an all-to-all's traffic does, with a barrier between rounds):
//   the one-way latency of a small message (half the median round trip of a ping-pong) and
//   the bandwidth of large messages in each direction (a stream of them, then a small
//   acknowledgement, timed by the sender less one latency; the best of three streams);
// - every rank, all at once (as they run while serving): the memory-copy bandwidth, and the
//   CPU matrix multiply on bf16 weights twice: one row (decode: the weight bytes it reads per
//   second) and many rows (prefill: floating-point operations per second).
// Findings name outliers against the median of their class: a rank pair's bandwidth below,
// or latency above, `outlier_factor` times the median of its link class (same host, or
// different hosts), and a rank's copy or multiply rate below the median of all ranks by the
// same factor, each with what to check.
//
// Every wait is bounded by the communicator's deadline: a peer that stops answering is an
// error naming it (communicator.h), never a hang.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "nlohmann/json.hpp"
#include "study/operation_costs.h"

namespace switchyard {

struct PreflightOptions {
  size_t small_bytes = 8;               // the latency message
  int latency_iters = 50;               // ping-pong round trips per pair (after 3 untimed)
  size_t large_bytes = size_t{4} << 20;  // one bandwidth message
  int bandwidth_iters = 4;              // large messages per direction (after 1 untimed)
  size_t copy_bytes = size_t{256} << 20;  // the memory-copy buffer
  int matmul_k = 4096, matmul_n = 14336;  // the weight matrix, N x K in bf16 (a Mixtral w1)
  int prefill_rows = 64;                 // rows of the prefill-shaped multiply
  double outlier_factor = 3.0;
  // When set (preflight --model), every rank also times the runtime's operations at this
  // model's shapes (study/operation_costs.h), all ranks at once. Borrowed.
  const ModelWeights* operations_model = nullptr;
  OperationBenchOptions operations;
};

// Per rank figures (rates in bytes or operations per second).
struct RankFigures {
  std::string host;
  double copy_bytes_per_s = 0;    // STREAM-style: read + written
  double decode_weight_bytes_per_s = 0;  // one-row multiply: weight bytes read per second
  double prefill_flops = 0;              // prefill_rows-row multiply: 2*rows*N*K per second
  std::optional<OperationCosts> operations;  // with PreflightOptions::operations_model
};

enum class LinkClass { kSelf, kWithinNode, kBetweenNodes };
const char* LinkClassName(LinkClass c);  // "within_node", "between_nodes"

struct PreflightFinding {
  std::string kind;  // "bandwidth", "latency", "copy", "matmul"
  int src = -1, dst = -1;  // the rank pair, or the rank (src) and -1
  std::string message;     // actionable, e.g. "rank 5 -> rank 12: 3.1 GB/s, 8.0x below ..."
};

struct PreflightReport {
  std::string transport;  // "mpi"
  std::string device;     // "cpu"
  int world = 0;
  PreflightOptions options;
  std::vector<RankFigures> ranks;
  // [src][dst]; 0 on the diagonal.
  std::vector<std::vector<double>> latency_s;
  std::vector<std::vector<double>> bandwidth_bytes_per_s;
  double seconds = 0;  // the whole preflight's wall time
  std::vector<PreflightFinding> findings;

  LinkClass ClassOf(int src, int dst) const;
};

// The round-robin schedule: rank `rank`'s partner in round `round` of RoundCount(n), or -1
// when it sits that round out (odd n). Every pair meets exactly once.
int RoundCount(int n);
int PartnerInRound(int rank, int round, int n);

// Collective over `world`. The report is whole on rank 0; other ranks get their own figures
// only. `progress(round, rounds)` is called on rank 0 as each round starts (may be empty).
absl::StatusOr<PreflightReport> RunPreflight(
    Communicator& world, const PreflightOptions& options,
    const std::function<void(int round, int rounds)>& progress = {});

// The outliers of `report` (its options' outlier_factor); pure, used by RunPreflight.
std::vector<PreflightFinding> FindOutliers(const PreflightReport& report);

// The rank x rank matrices, the per-rank figures, and the findings, as text.
std::string FormatReport(const PreflightReport& report);

// The calibration file: {"kind": "switchyard-calibration", "version": 1, "transport",
// "device", "world", "hosts", "links": {class: {"pairs", "latency_s", "bandwidth_bytes_per_s"
// (medians)}}, "ranks": [...] (each with "operations" when measured: OperationCostsJson),
// "matrix": {"latency_s", "bandwidth_bytes_per_s"}, "findings", "options", "seconds"}.
nlohmann::json CalibrationJson(const PreflightReport& report);
// Reads one back (the figures, not the options). Errors name the field.
absl::StatusOr<PreflightReport> ParseCalibration(const nlohmann::json& j);

}  // namespace switchyard
