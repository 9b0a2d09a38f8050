// bench_dispatch_cuda: latency of one expert-parallel dispatch + combine over a device
// communicator (NCCL, or staged through pinned host memory over MPI) at 1, 8, 128 and 4096
// tokens.
//
//   bench_dispatch_cuda [--tokens 1,8,128,4096] [--hidden 4096] [--experts 8] [--top-k 2]
//                       [--comm nccl|staged]
//   mpirun -np 4 bench_dispatch_cuda ...          # one GPU per rank (staged: may share one)
//
// One iteration is what ExpertDispatcher::Forward does on the wire, on device buffers:
//   1. AllToAll of the per-destination row counts (8 bytes per rank);
//   2. dispatch AllToAllV: each token once to each rank holding one of its experts, a row being
//      hidden bf16 activations + top_k expert ids (int32) + top_k weights (fp32);
//   3. combine AllToAllV: one bf16 partial sum of `hidden` values back per received row.
// Experts are spread round-robin over the ranks (expert e on rank e % ranks); routing is uniform
// at random. Without mpirun the group is this one process on one GPU (NCCL copies to itself):
// the figure is then the fixed cost of the three NCCL calls and their host-polled waits.
// Prints the median and 90th percentile over --iters iterations after 5 warm-ups.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "CLI/CLI.hpp"
#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "comm/self_communicator.h"
#include "comm/staged_communicator.h"

namespace switchyard {
namespace {

using Clock = std::chrono::steady_clock;

int Die(const absl::Status& st) {
  std::fprintf(stderr, "bench_dispatch_cuda: %s\n", st.ToString().c_str());
  return 1;
}

absl::Status CudaOk(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorString(err));
}

struct Args {
  std::vector<int> tokens = {1, 8, 128, 4096};
  int hidden = 4096, experts = 8, top_k = 2, iters = 50;
  std::string comm = "nccl";
};

int Run(const Args& a, Communicator* bootstrap) {
  auto device = SelectCudaDevice();
  if (!device.ok()) return Die(device.status());
  cudaStream_t stream = nullptr;
  if (auto st = CudaOk(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
      !st.ok()) {
    return Die(st);
  }
  std::unique_ptr<Communicator> owned;
  if (a.comm == "staged") {
    owned = std::make_unique<StagedCommunicator>(bootstrap, stream);
  } else {
    auto nccl = NcclCommunicator::Create(bootstrap, {.name = "ep", .comm = {}, .stream = stream});
    if (!nccl.ok()) return Die(nccl.status());
    owned = std::move(nccl).value();
  }
  Communicator& comm = *owned;
  const int ranks = comm.size(), me = comm.rank();
  const size_t row_bytes = size_t{2} * a.hidden + size_t{8} * a.top_k;
  const size_t back_bytes = size_t{2} * a.hidden;
  const int max_t = *std::max_element(a.tokens.begin(), a.tokens.end());
  // Worst case: every rank sends all its tokens to every rank.
  const size_t max_rows = static_cast<size_t>(max_t) * ranks;
  void *d_send, *d_recv, *d_back_send, *d_back_recv, *d_counts_send, *d_counts_recv;
  for (auto [p, bytes] :
       {std::pair{&d_send, static_cast<size_t>(max_t) * std::min(a.top_k, ranks) * row_bytes},
        std::pair{&d_recv, max_rows * row_bytes}, std::pair{&d_back_send, max_rows * back_bytes},
        std::pair{&d_back_recv, static_cast<size_t>(max_t) * std::min(a.top_k, ranks) * back_bytes},
        std::pair{&d_counts_send, size_t{8} * ranks},
        std::pair{&d_counts_recv, size_t{8} * ranks}}) {
    if (auto st = CudaOk(cudaMalloc(p, std::max<size_t>(bytes, 1)), "cudaMalloc"); !st.ok()) {
      return Die(st);
    }
  }
  if (me == 0) {
    std::printf(
        "%s dispatch + combine over %d rank(s): hidden %d, top-%d of %d experts, "
        "row %zu B out / %zu B back\n",
        a.comm.c_str(), ranks, a.hidden, a.top_k, a.experts, row_bytes, back_bytes);
    std::printf("%8s %12s %14s %12s %12s\n", "tokens", "rows sent", "bytes moved", "median us",
                "p90 us");
  }
  std::mt19937 rng(1000 + me);
  std::vector<int> ids(a.experts);
  std::iota(ids.begin(), ids.end(), 0);
  for (int T : a.tokens) {
    // Rows per destination rank: a token travels once to each rank holding one of its experts.
    std::vector<size_t> rows_to(ranks, 0);
    for (int t = 0; t < T; ++t) {
      std::shuffle(ids.begin(), ids.end(), rng);
      std::set<int> dest;
      for (int j = 0; j < a.top_k; ++j) dest.insert(ids[j] % ranks);
      for (int r : dest) ++rows_to[r];
    }
    std::vector<int64_t> counts(rows_to.begin(), rows_to.end()), recv_counts(ranks);
    std::vector<size_t> sc(ranks), so(ranks), rc(ranks), ro(ranks), bsc(ranks), bso(ranks),
        brc(ranks), bro(ranks);
    std::vector<double> us;
    for (int it = 0; it < a.iters + 5; ++it) {
      const auto t0 = Clock::now();
      cudaMemcpy(d_counts_send, counts.data(), 8 * ranks, cudaMemcpyHostToDevice);
      cudaDeviceSynchronize();  // pageable H2D may still be in flight; the stream won't wait
      absl::Status st = comm.AllToAll(d_counts_send, d_counts_recv, 8);
      if (st.ok()) {
        cudaMemcpy(recv_counts.data(), d_counts_recv, 8 * ranks, cudaMemcpyDeviceToHost);
        size_t s = 0, r = 0, bs = 0, br = 0;
        for (int p = 0; p < ranks; ++p) {
          sc[p] = rows_to[p] * row_bytes, so[p] = s, s += sc[p];
          rc[p] = recv_counts[p] * row_bytes, ro[p] = r, r += rc[p];
          bsc[p] = recv_counts[p] * back_bytes, bso[p] = bs, bs += bsc[p];
          brc[p] = rows_to[p] * back_bytes, bro[p] = br, br += brc[p];
        }
        st = comm.AllToAllV(d_send, sc, so, d_recv, rc, ro);
      }
      if (st.ok()) st = comm.AllToAllV(d_back_send, bsc, bso, d_back_recv, brc, bro);
      if (!st.ok()) return Die(st);
      const auto t1 = Clock::now();
      if (it >= 5) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    std::sort(us.begin(), us.end());
    size_t sent = 0, moved = 0;
    for (int p = 0; p < ranks; ++p) {
      sent += rows_to[p];
      moved += sc[p] + bsc[p];
    }
    if (me == 0) {
      std::printf("%8d %12zu %14zu %12.1f %12.1f\n", T, sent, moved, us[us.size() / 2],
                  us[us.size() * 9 / 10]);
      std::printf(
          "BENCH_JSON {\"bench\": \"dispatch\", \"comm\": \"%s\", \"ranks\": %d, \"tokens\": %d, "
          "\"rows_sent\": %zu, \"bytes_moved\": %zu, \"median_us\": %.1f, \"p90_us\": %.1f}\n",
          a.comm.c_str(), ranks, T, sent, moved, us[us.size() / 2], us[us.size() * 9 / 10]);
    }
  }
  owned.reset();
  for (void* p : {d_send, d_recv, d_back_send, d_back_recv, d_counts_send, d_counts_recv}) {
    cudaFree(p);
  }
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace
}  // namespace switchyard

int main(int argc, char** argv) {
  CLI::App app{"Device dispatch + combine latency (see bench/cuda/dispatch.cc)"};
  switchyard::Args a;
  app.add_option("--tokens", a.tokens, "Token counts")->delimiter(',');
  app.add_option("--hidden", a.hidden)->check(CLI::Range(1, 1 << 16));
  app.add_option("--experts", a.experts)->check(CLI::Range(1, 1024));
  app.add_option("--top-k", a.top_k)->check(CLI::Range(1, 64));
  app.add_option("--iters", a.iters)->check(CLI::Range(1, 100000));
  app.add_option("--comm", a.comm, "Device communicator: nccl or staged")
      ->check(CLI::IsMember({"nccl", "staged"}));
  CLI11_PARSE(app, argc, argv);
  if (a.top_k > a.experts) {
    std::fprintf(stderr, "--top-k must not exceed --experts\n");
    return 2;
  }
  // Under mpirun: MPI bootstraps NCCL; otherwise a group of one.
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr) {
    auto mpi = switchyard::MpiRuntime::Init(&argc, &argv);
    if (!mpi.ok()) return switchyard::Die(mpi.status());
    auto world = switchyard::MpiCommunicator::World({});
    return switchyard::Run(a, world.get());
  }
  switchyard::SelfCommunicator self;
  return switchyard::Run(a, &self);
}
