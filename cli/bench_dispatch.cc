// `switchyard bench dispatch`: expert-parallel dispatch + combine latency and bandwidth per
// rank, beside a raw all-to-all of the same bytes and the machine's memory-copy bandwidth.
// Run under mpirun with --ep ranks. The experts are an identity, so the figure is the
// exchange alone (counts, dispatch, grouping, combine).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>

#include "cli/commands.h"
#include "cli/run_flags.h"
#include "comm/expert_dispatcher.h"
#include "comm/mpi_communicator.h"
#include "common/memory_bandwidth.h"
#include "coordinator/model_session.h"
#include "nlohmann/json.hpp"

namespace switchyard::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct DispatchArgs {
  int ep = 0;  // 0: the world size
  int tokens = 128;
  int hidden = 4096;
  int topk = 2;
  int experts = 8;
  int iters = 20;
  bool json = false;
};

class IdentityExperts : public LocalExperts {
 public:
  explicit IdentityExperts(int hidden) : hidden_(hidden) {}
  void Run(int, const float* rows, const int32_t* counts, float* y) override {
    size_t n = 0;
    for (int e = 0; e < num_experts; ++e) n += counts[e];
    std::copy(rows, rows + n * hidden_, y);
  }
  int num_experts = 0;

 private:
  int hidden_;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int RunDispatchBench(const DispatchArgs& a) {
  if (!LaunchedUnderMpi()) {
    return Fail(absl::FailedPreconditionError(
        "bench dispatch runs under mpirun: mpirun -np E switchyard bench dispatch --ep E ..."));
  }
  auto world = MpiCommunicator::World(CommOptions{});
  const int P = world->size();
  if (a.ep != 0 && a.ep != P) return Fail(CheckWorldSize(P, a.ep, 1));
  const int rank = world->rank();
  DispatchLayout layout{.hidden = a.hidden, .top_k = a.topk, .num_experts = a.experts, .ep = P,
                        .max_tokens = a.tokens};
  ExpertRanks routing(1, std::vector<std::vector<int>>(a.experts));
  for (int e = 0; e < a.experts; ++e) routing[0][e] = {e % P};
  IdentityExperts experts(a.hidden);
  experts.num_experts = a.experts;
  ExpertDispatcher d(world.get(), layout, routing, &experts);

  // Uniformly random top-k routing, seeded per rank.
  std::mt19937 rng(17 + rank);
  std::vector<int32_t> ids(static_cast<size_t>(a.tokens) * a.topk);
  std::vector<float> w(ids.size(), 1.0f / a.topk);
  for (int t = 0; t < a.tokens; ++t) {
    std::vector<int> pool(a.experts);
    for (int e = 0; e < a.experts; ++e) pool[e] = e;
    std::shuffle(pool.begin(), pool.end(), rng);
    for (int k = 0; k < a.topk; ++k) ids[t * a.topk + k] = pool[k];
  }
  std::vector<float> x(static_cast<size_t>(a.tokens) * a.hidden, 1.0f), out(x.size());
  std::vector<double> lat, dispatch, combine;
  int64_t bytes = 0;
  for (int i = 0; i < a.iters + 3; ++i) {
    absl::Status st = world->Barrier();
    auto t0 = Clock::now();
    if (st.ok()) st = d.Forward(0, x.data(), a.tokens, ids.data(), w.data(), out.data());
    if (!st.ok()) return Fail(st);
    if (i >= 3) {
      lat.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      dispatch.push_back(d.last_stats().dispatch_seconds);
      combine.push_back(d.last_stats().combine_seconds);
    }
    bytes = d.last_stats().bytes_sent;
  }
  // Raw all-to-all of the same payload: each rank sends bytes/P to every rank, twice
  // (dispatch and combine). Ranks' payloads differ a little; rank 0's sets the size.
  uint64_t per_peer = std::max<int64_t>(1, bytes / 2 / P);
  if (absl::Status st = world->Broadcast(&per_peer, sizeof(per_peer), 0); !st.ok()) {
    return Fail(st);
  }
  std::vector<char> sb(per_peer * P), rb(per_peer * P);
  std::vector<double> raw;
  for (int i = 0; i < a.iters + 3; ++i) {
    absl::Status st = world->Barrier();
    auto t0 = Clock::now();
    if (st.ok()) st = world->AllToAll(sb.data(), rb.data(), per_peer);
    if (st.ok()) st = world->AllToAll(sb.data(), rb.data(), per_peer);
    if (!st.ok()) return Fail(st);
    if (i >= 3) raw.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const double copy_bw = rank == 0 ? MeasureCopyBandwidth(size_t{256} << 20, 3) : 0;
  if (absl::Status st = world->Barrier(); !st.ok()) return Fail(st);
  if (rank != 0) return 0;
  const double t = Median(lat), tr = Median(raw);
  nlohmann::json j = {{"benchmark", "dispatch"},     {"ep", P},
                      {"tokens", a.tokens},          {"hidden", a.hidden},
                      {"topk", a.topk},              {"experts", a.experts},
                      {"latency_s_median", t},       {"dispatch_s_median", Median(dispatch)},
                      {"combine_s_median", Median(combine)},
                      {"bytes_per_rank", bytes},     {"gbps_per_rank", bytes / t / 1e9},
                      {"raw_alltoall_s_median", tr}, {"raw_gbps_per_rank", bytes / tr / 1e9},
                      {"ratio_to_raw_alltoall", tr / t},
                      {"memory_copy_gbps", copy_bw / 1e9},
                      {"ratio_to_memory_copy", bytes / t / copy_bw}};
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("bench dispatch: ep %d, %d tokens/rank, hidden %d, top-%d of %d experts\n", P,
              a.tokens, a.hidden, a.topk, a.experts);
  std::printf("  dispatch+combine       %8.1f us (dispatch %.1f, combine %.1f)\n", t * 1e6,
              Median(dispatch) * 1e6, Median(combine) * 1e6);
  std::printf("  payload per rank       %8.2f MB -> %.2f GB/s\n", bytes / 1e6, bytes / t / 1e9);
  std::printf("  raw MPI all-to-all     %8.1f us -> %.2f GB/s   ratio %.2f\n", tr * 1e6,
              bytes / tr / 1e9, tr / t);
  std::printf("  memory-copy bandwidth  %8.2f GB/s              ratio %.3f\n", copy_bw / 1e9,
              bytes / t / copy_bw);
  return 0;
}

}  // namespace

void RegisterBenchDispatch(CLI::App& bench, Action* action) {
  static DispatchArgs a;
  CLI::App* cmd = bench.add_subcommand(
      "dispatch", "Expert-parallel dispatch+combine latency and GB/s per rank (under mpirun)");
  cmd->add_option("--ep", a.ep, "Expert-parallel ranks (must equal the world size)");
  cmd->add_option("--tokens", a.tokens, "Tokens per rank")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--hidden", a.hidden, "Hidden size")->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--topk", a.topk, "Experts per token")->check(CLI::Range(1, 64));
  cmd->add_option("--experts", a.experts, "Experts per layer")->check(CLI::Range(1, 256));
  cmd->add_option("--iters", a.iters, "Timed iterations")->check(CLI::Range(1, 100000));
  cmd->add_flag("--json", a.json, "Print JSON");
  cmd->callback([action] { *action = [] { return RunDispatchBench(a); }; });
}

}  // namespace switchyard::cli
