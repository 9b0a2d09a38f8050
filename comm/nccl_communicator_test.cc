// NcclCommunicator on device buffers. Built twice: as a one-rank GoogleTest binary (bootstrap:
// an in-process loopback communicator) and as an mpirun binary (bootstrap: MPI world), see
// comm/CMakeLists.txt. Every test skips with "no CUDA device" where there is none; under
// mpirun the ranks agree on skipping. NCCL rejects two ranks on one GPU ("Duplicate GPU
// detected"), and the NCCL 2.28 shipped with CUDA 13 has no switch to allow it (no
// NCCL_MULTI_RANK_GPU_ENABLE), so the multi-rank run also skips unless every rank on a node
// gets its own device.
#include "comm/nccl_communicator.h"

#include <mpi.h>

#include <memory>
#include <numeric>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/self_communicator.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

bool UnderMpi() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  return initialized != 0;
}

// Whether this process can run the tests: a CUDA device, and (under MPI) one per rank on the
// node. Under MPI all ranks agree.
bool CanRun(std::string* why) {
  int count = 0;
  bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  cudaGetLastError();
  *why = "no CUDA device";
  if (ok && UnderMpi()) {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int node_ranks = 1;
    MPI_Comm_size(node, &node_ranks);
    MPI_Comm_free(&node);
    if (node_ranks > count) {
      ok = false;
      *why = "fewer CUDA devices than ranks on this node (NCCL needs one GPU per rank)";
    }
  }
  if (UnderMpi()) {
    int mine = ok ? 1 : 0, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (ok && !all) *why = "another rank has no usable CUDA device";
    ok = all != 0;
  }
  return ok;
}

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n_, 1) * sizeof(T)),
              cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(p_); }
  T* get() const { return p_; }
  void Upload(const std::vector<T>& h) {
    ASSERT_EQ(cudaMemcpy(p_, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    // A pageable host-to-device cudaMemcpy may return before the DMA lands, and the
    // communicator's non-blocking stream does not wait for the legacy stream.
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  std::vector<T> Download() const {
    std::vector<T> h(n_);
    EXPECT_EQ(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  size_t n_;
  T* p_ = nullptr;
};

class NcclCommunicatorTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!CanRun(&why)) GTEST_SKIP() << why;
    ASSERT_TRUE(SelectCudaDevice().ok());
    if (UnderMpi()) {
      bootstrap_ = MpiCommunicator::World({.timeout = absl::Seconds(30)});
    } else {
      bootstrap_ = std::make_unique<SelfCommunicator>("loopback");  // single process
    }
    auto c = NcclCommunicator::Create(bootstrap_.get(),
                                      {.name = "test", .comm = {.timeout = absl::Seconds(30)}});
    ASSERT_TRUE(c.ok()) << c.status();
    comm_ = std::move(c).value();
    ASSERT_EQ(comm_->rank(), bootstrap_->rank());
    ASSERT_EQ(comm_->size(), bootstrap_->size());
  }

  std::unique_ptr<Communicator> bootstrap_;
  std::unique_ptr<NcclCommunicator> comm_;
};

TEST_F(NcclCommunicatorTest, AllToAllVMovesVariableBlocks) {
  const int n = comm_->size(), me = comm_->rank();
  // Rank r sends (r + p + 1) * 3 bytes to rank p, each byte = 16 * r + p (mod 256).
  auto bytes = [](int from, int to) { return static_cast<size_t>((from + to + 1) * 3); };
  std::vector<size_t> sc(n), so(n), rc(n), ro(n);
  size_t st = 0, rt = 0;
  for (int p = 0; p < n; ++p) {
    sc[p] = bytes(me, p);
    so[p] = st;
    st += sc[p];
    rc[p] = bytes(p, me);
    ro[p] = rt;
    rt += rc[p];
  }
  std::vector<uint8_t> send(st);
  for (int p = 0; p < n; ++p) std::fill_n(&send[so[p]], sc[p], uint8_t(16 * me + p));
  DeviceBuffer<uint8_t> d_send(st), d_recv(rt);
  d_send.Upload(send);
  ASSERT_TRUE(comm_->AllToAllV(d_send.get(), sc, so, d_recv.get(), rc, ro).ok());
  std::vector<uint8_t> recv = d_recv.Download();
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < rc[p]; ++i) ASSERT_EQ(recv[ro[p] + i], uint8_t(16 * p + me));
  }
}

TEST_F(NcclCommunicatorTest, AllToAllAndGatherAndBroadcast) {
  const int n = comm_->size(), me = comm_->rank();
  const size_t block = 40;
  std::vector<int32_t> send(n * block / 4);
  for (int p = 0; p < n; ++p) std::fill_n(&send[p * block / 4], block / 4, 100 * me + p);
  DeviceBuffer<int32_t> d_send(send.size()), d_recv(send.size());
  d_send.Upload(send);
  ASSERT_TRUE(comm_->AllToAll(d_send.get(), d_recv.get(), block).ok());
  std::vector<int32_t> recv = d_recv.Download();
  for (int p = 0; p < n; ++p) EXPECT_EQ(recv[p * block / 4], 100 * p + me);

  for (int root = 0; root < n; ++root) {
    DeviceBuffer<int32_t> d_mine(4), d_all(4 * n);
    d_mine.Upload({me, me, me, 7});
    ASSERT_TRUE(comm_->Gather(d_mine.get(), 16, d_all.get(), root).ok());
    if (me == root) {
      std::vector<int32_t> all = d_all.Download();
      for (int p = 0; p < n; ++p) EXPECT_EQ(all[4 * p], p);
    }
    DeviceBuffer<int32_t> d_b(3);
    d_b.Upload({me == root ? 11 : -1, root, me == root ? 13 : -1});
    ASSERT_TRUE(comm_->Broadcast(d_b.get(), 12, root).ok());
    EXPECT_EQ(d_b.Download(), (std::vector<int32_t>{11, root, 13}));
  }
  EXPECT_TRUE(comm_->Barrier().ok());
}

TEST_F(NcclCommunicatorTest, SplitOrdersByKeyAndNoColorGivesNull) {
  const int n = comm_->size(), me = comm_->rank();
  auto child = comm_->Split(me % 2, -me, "odd-even");  // reversed order within each color
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_NE(*child, nullptr);
  const int members = (n - me % 2 + 1) / 2;
  EXPECT_EQ((*child)->size(), members);
  EXPECT_EQ((*child)->rank(), members - 1 - me / 2);
  EXPECT_EQ((*child)->name(), "odd-even");
  EXPECT_TRUE((*child)->Barrier().ok());

  auto none = comm_->Split(me == 0 ? -1 : 0, me, "all-but-0");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none == nullptr, me == 0);
  if (*none != nullptr) {
    EXPECT_TRUE((*none)->Barrier().ok());
  }
}

TEST_F(NcclCommunicatorTest, InvalidArgumentsLeaveItUsable) {
  std::vector<size_t> wrong(comm_->size() + 1, 0);
  EXPECT_EQ(comm_->AllToAllV(nullptr, wrong, wrong, nullptr, wrong, wrong).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm_->Broadcast(nullptr, 4, comm_->size()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm_->Send(nullptr, 4, -1, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(comm_->Barrier().ok());
}

TEST_F(NcclCommunicatorTest, SendRecvBetweenPairs) {
  if (comm_->size() < 2) GTEST_SKIP() << "needs two ranks";
  const int me = comm_->rank();
  DeviceBuffer<int32_t> d(8);
  if (me == 0) {
    d.Upload({1, 2, 3, 4, 5, 6, 7, 8});
    EXPECT_TRUE(comm_->Send(d.get(), 32, 1, 0).ok());
  } else if (me == 1) {
    ASSERT_TRUE(comm_->Recv(d.get(), 32, 0, 0).ok());
    EXPECT_EQ(d.Download(), (std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  }
  EXPECT_TRUE(comm_->Barrier().ok());
}

TEST_F(NcclCommunicatorTest, MissingPeerTimesOutNamingOperationAndGroup) {
  if (comm_->size() < 2) GTEST_SKIP() << "needs two ranks";
  auto c = NcclCommunicator::Create(bootstrap_.get(),
                                    {.name = "short", .comm = {.timeout = absl::Seconds(2)}});
  ASSERT_TRUE(c.ok()) << c.status();
  if (comm_->rank() == 0) {  // rank 1 never joins this barrier
    absl::Status st = (*c)->Barrier();
    EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
    EXPECT_NE(st.message().find("Barrier"), std::string::npos) << st;
    EXPECT_NE(st.message().find("'short'"), std::string::npos) << st;
    EXPECT_TRUE((*c)->broken());
    EXPECT_EQ((*c)->Barrier().code(), absl::StatusCode::kFailedPrecondition);
  }
  c->reset();
  EXPECT_TRUE(bootstrap_->Barrier().ok());
}

}  // namespace
}  // namespace switchyard
