// `switchyard bench dispatch`: expert-parallel dispatch + combine latency and bandwidth per
// rank, beside its bound: the collectives the dispatcher needs, timed by the same command
// with the same routing (count exchange + all-to-all-v of the rows with their real per-peer
// counts + all-to-all-v back), and the machine's memory-copy bandwidth. Run under mpirun with
// --ep ranks. The experts do nothing (or, with --expert-work, write weight * row per pair)
// and their time is reported apart, so the figure is the dispatcher's own cost (routing,
// packing, exchanges, the final sum). --transport picks the dispatcher's transport: shared
// memory (ranks on one host; the default when possible) or the all-to-alls.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>

#include "cli/commands.h"
#include "cli/run_flags.h"
#include "comm/expert_dispatcher.h"
#include "comm/mpi_communicator.h"
#include "common/memory_bandwidth.h"
#include "common/status_macros.h"
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
  bool expert_work = false;
  bool json = false;
  std::string transport = "auto";  // auto | shm | mpi
};

// With `work`, y = weight * x (overwriting or adding, as the batch says): the experts'
// contract at the cost of one pass over the pairs. Without, nothing: the baseline has no
// compute either, and on oversubscribed cores other ranks' expert work would otherwise land in
// this rank's waits.
class IdentityExperts : public LocalExperts {
 public:
  IdentityExperts(int hidden, bool work) : hidden_(hidden), work_(work) {}
  void Run(int, const ExpertBatch& b) override {
    if (!work_) return;
    for (int64_t p = 0; p < b.pairs; ++p) {
      const float* x = b.x[p];
      float* y = b.y[p];
      const float w = b.scale[p];
      if (b.accumulate[p]) {
        for (int h = 0; h < hidden_; ++h) y[h] += w * x[h];
      } else {
        for (int h = 0; h < hidden_; ++h) y[h] = w * x[h];
      }
    }
  }

 private:
  int hidden_;
  bool work_;
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
  auto world = MpiCommunicator::World(CommOptions{.shared_memory = a.transport != "mpi"});
  const int P = world->size();
  if (a.ep != 0 && a.ep != P) return Fail(CheckWorldSize(P, a.ep, 1));
  const int rank = world->rank();
  DispatchLayout layout{.hidden = a.hidden, .top_k = a.topk, .num_experts = a.experts, .ep = P,
                        .max_tokens = a.tokens};
  ExpertRanks routing(1, std::vector<std::vector<int>>(a.experts));
  for (int e = 0; e < a.experts; ++e) routing[0][e] = {e % P};
  IdentityExperts experts(a.hidden, a.expert_work);
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
  // The baseline's buffers: the same rows per peer (own included, as a plain all-to-all-v
  // carries them), row_words() words out and hidden words back.
  if (absl::Status st = d.Forward(0, x.data(), a.tokens, ids.data(), w.data(), out.data());
      !st.ok()) {
    return Fail(st);
  }
  if (a.transport == "shm" && P > 1 && !d.shared_memory()) {
    return Fail(absl::FailedPreconditionError(
        "--transport shm: the ranks do not share a host, or its shared memory is too small"));
  }
  const char* transport = P == 1 ? "none" : d.shared_memory() ? "shared memory" : "mpi";
  const std::vector<int64_t> send_rows = d.last_send_rows();
  const size_t W = layout.row_words() * 4, Hb = static_cast<size_t>(a.hidden) * 4;
  int64_t total_send = 0;
  for (int64_t r : send_rows) total_send += r;
  std::vector<int64_t> recv_rows(P);
  std::vector<char> rows_out(total_send * W), rows_in(layout.recv_bytes() + W);
  std::vector<char> back_out(layout.combine_send_bytes() + Hb), back_in(total_send * Hb + Hb);
  std::vector<size_t> sc(P), so(P), rc(P), ro(P);
  auto baseline = [&]() -> absl::Status {
    RETURN_IF_ERROR(world->AllToAll(send_rows.data(), recv_rows.data(), sizeof(int64_t)));
    size_t s_off = 0, r_off = 0;
    for (int r = 0; r < P; ++r) {
      sc[r] = send_rows[r] * W, so[r] = s_off, s_off += sc[r];
      rc[r] = recv_rows[r] * W, ro[r] = r_off, r_off += rc[r];
    }
    RETURN_IF_ERROR(world->AllToAllV(rows_out.data(), sc, so, rows_in.data(), rc, ro));
    s_off = r_off = 0;
    for (int r = 0; r < P; ++r) {
      sc[r] = recv_rows[r] * Hb, so[r] = s_off, s_off += sc[r];
      rc[r] = send_rows[r] * Hb, ro[r] = r_off, r_off += rc[r];
    }
    return world->AllToAllV(back_out.data(), sc, so, back_in.data(), rc, ro);
  };

  // Dispatcher and baseline alternate, iteration by iteration, so drift hits both alike.
  std::vector<double> own, total, dispatch, combine, compute, raw;
  int64_t bytes = 0;
  for (int i = 0; i < a.iters + 3; ++i) {
    absl::Status st = world->Barrier();
    auto t0 = Clock::now();
    if (st.ok()) st = d.Forward(0, x.data(), a.tokens, ids.data(), w.data(), out.data());
    const double t_fwd = std::chrono::duration<double>(Clock::now() - t0).count();
    if (st.ok()) st = world->Barrier();
    auto t1 = Clock::now();
    if (st.ok()) st = baseline();
    const double t_raw = std::chrono::duration<double>(Clock::now() - t1).count();
    if (!st.ok()) return Fail(st);
    if (i >= 3) {
      const DispatchStats& ds = d.last_stats();
      total.push_back(t_fwd);
      own.push_back(t_fwd - ds.compute_seconds);
      dispatch.push_back(ds.dispatch_seconds);
      combine.push_back(ds.combine_seconds);
      compute.push_back(ds.compute_seconds);
      raw.push_back(t_raw);
    }
    bytes = d.last_stats().bytes_sent;
  }
  const double copy_bw = rank == 0 ? MeasureCopyBandwidth(size_t{256} << 20, 3) : 0;
  if (absl::Status st = world->Barrier(); !st.ok()) return Fail(st);
  if (rank != 0) return 0;
  const double t = Median(own), tr = Median(raw);
  int64_t raw_bytes = 0;  // what the baseline moves for this rank: rows out, partial sums back
  for (int r = 0; r < P; ++r) raw_bytes += send_rows[r] * static_cast<int64_t>(W + Hb);
  nlohmann::json j = {{"benchmark", "dispatch"},
                      {"ep", P},
                      {"tokens", a.tokens},
                      {"hidden", a.hidden},
                      {"topk", a.topk},
                      {"experts", a.experts},
                      {"expert_work", a.expert_work},
                      {"transport", transport},
                      {"latency_s_median", t},
                      {"dispatch_s_median", Median(dispatch)},
                      {"combine_s_median", Median(combine)},
                      {"experts_s_median", Median(compute)},
                      {"forward_s_median", Median(total)},
                      {"bytes_per_rank", bytes},
                      {"gbps_per_rank", bytes / t / 1e9},
                      {"baseline_s_median", tr},
                      {"baseline_bytes_per_rank", raw_bytes},
                      {"ratio_to_baseline", t / tr},
                      {"memory_copy_gbps", copy_bw / 1e9},
                      {"ratio_to_memory_copy", bytes / t / copy_bw}};
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("bench dispatch: ep %d, %d tokens/rank, hidden %d, top-%d of %d experts, over %s\n",
              P, a.tokens, a.hidden, a.topk, a.experts, transport);
  std::printf("  dispatch+combine       %8.1f us (dispatch %.1f, combine %.1f; experts %.1f "
              "apart)\n",
              t * 1e6, Median(dispatch) * 1e6, Median(combine) * 1e6, Median(compute) * 1e6);
  std::printf("  payload per rank       %8.2f MB -> %.2f GB/s\n", bytes / 1e6, bytes / t / 1e9);
  std::printf("  baseline collectives   %8.1f us (%.2f MB: counts + rows + back)  time ratio %.2f\n",
              tr * 1e6, raw_bytes / 1e6, t / tr);
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
  cmd->add_flag("--expert-work", a.expert_work,
                "Experts write weight * row for every pair (default: they do nothing, so the "
                "figure is the dispatcher alone)");
  cmd->add_option("--transport", a.transport,
                  "auto: shared memory when every rank is on this host, else MPI; shm: shared "
                  "memory or fail; mpi: the all-to-alls")
      ->check(CLI::IsMember({"auto", "shm", "mpi"}));
  cmd->add_flag("--json", a.json, "Print JSON");
  cmd->callback([action] { *action = [] { return RunDispatchBench(a); }; });
}

}  // namespace switchyard::cli
