// MpiCommunicator under mpirun with 1..4 ranks: every rank runs every test and checks the
// bytes it receives against what each sender must have sent (all ranks derive the same
// random sizes from a shared seed).
#include "comm/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include <string>
#include "gtest/gtest.h"

namespace switchyard {
namespace {

using Bytes = std::vector<uint8_t>;

// The byte at position i of the message from `src` to `dst` in trial `trial`.
uint8_t Pattern(int trial, int src, int dst, size_t i) {
  return static_cast<uint8_t>(trial * 7 + src * 131 + dst * 31 + i * 13 + (i >> 8));
}

constexpr uint8_t kSentinel = 0xEE;

class MpiCommunicatorTest : public testing::Test {
 protected:
  void SetUp() override {
    world_ = MpiCommunicator::World(CommOptions{.timeout = absl::Seconds(60)});
    rank_ = world_->rank();
    P_ = world_->size();
  }

  // Runs AllToAllV on `comm` with sizes drawn from `seed` (identical on every rank), checks
  // every received byte and that the gaps between receive blocks are untouched.
  void CheckAllToAllV(MpiCommunicator& comm, int seed, size_t max_bytes, int silent_rank) {
    const int P = comm.size(), me = comm.rank();
    std::mt19937 rng(seed);
    std::vector<std::vector<size_t>> sizes(P, std::vector<size_t>(P));
    for (int s = 0; s < P; ++s) {
      for (int d = 0; d < P; ++d) {
        const bool zero = s == silent_rank || rng() % 4 == 0;
        sizes[s][d] = zero ? 0 : rng() % (max_bytes + 1);
      }
    }
    // Blocks in reverse rank order with 3-byte gaps, to exercise the offsets.
    std::vector<size_t> send_counts(P), send_offsets(P), recv_counts(P), recv_offsets(P);
    size_t send_total = 0, recv_total = 0;
    for (int r = P - 1; r >= 0; --r) {
      send_counts[r] = sizes[me][r];
      send_offsets[r] = send_total;
      send_total += send_counts[r] + 3;
      recv_counts[r] = sizes[r][me];
      recv_offsets[r] = recv_total;
      recv_total += recv_counts[r] + 3;
    }
    Bytes send(send_total, kSentinel), recv(recv_total, kSentinel);
    for (int r = 0; r < P; ++r) {
      for (size_t i = 0; i < send_counts[r]; ++i) {
        send[send_offsets[r] + i] = Pattern(seed, me, r, i);
      }
    }
    ASSERT_TRUE(comm.AllToAllV(send.data(), send_counts, send_offsets, recv.data(), recv_counts,
                               recv_offsets)
                    .ok());
    for (int r = 0; r < P; ++r) {
      for (size_t i = 0; i < recv_counts[r]; ++i) {
        ASSERT_EQ(recv[recv_offsets[r] + i], Pattern(seed, r, me, i))
            << "from rank " << r << " byte " << i << " seed " << seed;
      }
      for (size_t g = 0; g < 3; ++g) {
        ASSERT_EQ(recv[recv_offsets[r] + recv_counts[r] + g], kSentinel) << "gap after " << r;
      }
    }
  }

  std::unique_ptr<MpiCommunicator> world_;
  int rank_ = 0, P_ = 1;
};

TEST_F(MpiCommunicatorTest, WorldMatchesMpi) {
  EXPECT_EQ(world_->name(), "world");
  EXPECT_EQ(world_->rank(), WorldRank());
  EXPECT_EQ(world_->size(), WorldSize());
  for (int r = 0; r < P_; ++r) EXPECT_EQ(world_->world_rank(r), r);
  EXPECT_FALSE(world_->broken());
}

TEST_F(MpiCommunicatorTest, RuntimeInitIsANoOpWhenMpiIsAlreadyRunning) {
  {
    auto rt = MpiRuntime::Init(nullptr, nullptr);
    ASSERT_TRUE(rt.ok()) << rt.status();
    EXPECT_FALSE((*rt)->owns_mpi());
  }
  int finalized = 1;
  MPI_Finalized(&finalized);
  EXPECT_FALSE(finalized);
  EXPECT_TRUE(world_->Barrier().ok());
}

TEST_F(MpiCommunicatorTest, AllToAllVRandomSizes) {
  for (int trial = 0; trial < 30; ++trial) {
    // Trial t: rank t % P sends nothing at all; sizes up to 20 KiB cross the eager limit.
    CheckAllToAllV(*world_, 1000 + trial, trial % 3 == 0 ? 20000 : 300, trial % P_);
    if (HasFatalFailure()) return;
  }
}

TEST_F(MpiCommunicatorTest, AllToAllVAllZero) {
  std::vector<size_t> zeros(P_, 0);
  EXPECT_TRUE(world_->AllToAllV(nullptr, zeros, zeros, nullptr, zeros, zeros).ok());
}

TEST_F(MpiCommunicatorTest, AllToAllVRejectsBadArguments) {
  std::vector<size_t> short_counts(P_ + 1, 0);
  absl::Status s =
      world_->AllToAllV(nullptr, short_counts, short_counts, nullptr, short_counts, short_counts);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  std::vector<size_t> send_counts(P_, 0), recv_counts(P_, 0), offsets(P_, 0);
  send_counts[rank_] = 1;
  uint8_t byte = 1;
  s = world_->AllToAllV(&byte, send_counts, offsets, &byte, recv_counts, offsets);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_FALSE(world_->broken());
  EXPECT_TRUE(world_->Barrier().ok());
}

TEST_F(MpiCommunicatorTest, AllToAll) {
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{17}, size_t{5000}}) {
    Bytes send(bytes * P_), recv(bytes * P_, kSentinel);
    for (int r = 0; r < P_; ++r) {
      for (size_t i = 0; i < bytes; ++i) send[r * bytes + i] = Pattern(1, rank_, r, i);
    }
    ASSERT_TRUE(world_->AllToAll(send.data(), recv.data(), bytes).ok());
    for (int r = 0; r < P_; ++r) {
      for (size_t i = 0; i < bytes; ++i) {
        ASSERT_EQ(recv[r * bytes + i], Pattern(1, r, rank_, i)) << "from " << r << " at " << i;
      }
    }
  }
}

// Blocks written by the fill callback, once per other peer, just before they are sent; the
// block to itself must be empty.
TEST_F(MpiCommunicatorTest, AllToAllVFilledWritesBlocksJustInTime) {
  const size_t bytes = 3000;
  std::vector<size_t> counts(P_, bytes), offsets(P_);
  for (int r = 0; r < P_; ++r) offsets[r] = r * bytes;
  counts[rank_] = 0;
  Bytes send(bytes * P_, kSentinel), recv(bytes * P_, kSentinel);
  std::vector<int> filled;
  auto fill = [&](int peer) {
    filled.push_back(peer);
    for (size_t i = 0; i < bytes; ++i) send[peer * bytes + i] = Pattern(2, rank_, peer, i);
  };
  ASSERT_TRUE(world_->AllToAllVFilled(fill, send.data(), counts, offsets, recv.data(), counts,
                                      offsets)
                  .ok());
  std::sort(filled.begin(), filled.end());
  std::vector<int> others;
  for (int r = 0; r < P_; ++r) {
    if (r != rank_) others.push_back(r);
  }
  EXPECT_EQ(filled, others);
  for (int r = 0; r < P_; ++r) {
    if (r == rank_) continue;
    for (size_t i = 0; i < bytes; ++i) {
      ASSERT_EQ(recv[r * bytes + i], Pattern(2, r, rank_, i)) << "from " << r << " at " << i;
    }
  }
  counts[rank_] = 1;
  EXPECT_EQ(world_->AllToAllVFilled(fill, send.data(), counts, offsets, recv.data(), counts,
                                    offsets)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(MpiCommunicatorTest, SendRecvRing) {
  if (P_ == 1) GTEST_SKIP() << "needs two ranks";
  const int next = (rank_ + 1) % P_, prev = (rank_ + P_ - 1) % P_;
  for (size_t bytes : {size_t{0}, size_t{100}, size_t{1} << 20}) {
    for (int tag : {0, 5, kMaxUserTag}) {
      Bytes out(bytes), in(bytes, kSentinel);
      for (size_t i = 0; i < bytes; ++i) out[i] = Pattern(tag, rank_, next, i);
      // Even ranks send first, odd ranks receive first: no cycle of blocked senders.
      if (rank_ % 2 == 0) {
        ASSERT_TRUE(world_->Send(out.data(), bytes, next, tag).ok());
        ASSERT_TRUE(world_->Recv(in.data(), bytes, prev, tag).ok());
      } else {
        ASSERT_TRUE(world_->Recv(in.data(), bytes, prev, tag).ok());
        ASSERT_TRUE(world_->Send(out.data(), bytes, next, tag).ok());
      }
      for (size_t i = 0; i < bytes; ++i) {
        ASSERT_EQ(in[i], Pattern(tag, prev, rank_, i)) << bytes << " bytes, tag " << tag;
      }
    }
  }
}

TEST_F(MpiCommunicatorTest, TagsSeparateStreams) {
  if (P_ == 1) GTEST_SKIP() << "needs two ranks";
  if (rank_ == 0) {
    int a = 1, b = 2;
    ASSERT_TRUE(world_->Send(&a, sizeof a, 1, 10).ok());
    ASSERT_TRUE(world_->Send(&b, sizeof b, 1, 11).ok());
  } else if (rank_ == 1) {
    int a = 0, b = 0;  // received in the opposite order
    ASSERT_TRUE(world_->Recv(&b, sizeof b, 0, 11).ok());
    ASSERT_TRUE(world_->Recv(&a, sizeof a, 0, 10).ok());
    EXPECT_EQ(a, 1);
    EXPECT_EQ(b, 2);
  }
  ASSERT_TRUE(world_->Barrier().ok());
}

TEST_F(MpiCommunicatorTest, SendRecvRejectBadArguments) {
  int x = 0;
  EXPECT_EQ(world_->Send(&x, sizeof x, rank_, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(world_->Recv(&x, sizeof x, P_, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(world_->Send(&x, sizeof x, -1, 0).code(), absl::StatusCode::kInvalidArgument);
  if (P_ > 1) {
    const int peer = (rank_ + 1) % P_;
    EXPECT_EQ(world_->Send(&x, sizeof x, peer, kMaxUserTag + 1).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(world_->Recv(&x, sizeof x, peer, -1).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(world_->Broadcast(&x, sizeof x, P_).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(world_->broken());
}

TEST_F(MpiCommunicatorTest, BroadcastFromEachRoot) {
  for (int root = 0; root < P_; ++root) {
    for (size_t bytes : {size_t{0}, size_t{13}, size_t{100000}}) {
      Bytes data(bytes, kSentinel);
      if (rank_ == root) {
        for (size_t i = 0; i < bytes; ++i) data[i] = Pattern(2, root, 0, i);
      }
      ASSERT_TRUE(world_->Broadcast(data.data(), bytes, root).ok());
      for (size_t i = 0; i < bytes; ++i) {
        ASSERT_EQ(data[i], Pattern(2, root, 0, i)) << "root " << root << " byte " << i;
      }
    }
  }
}

TEST_F(MpiCommunicatorTest, GatherToEachRoot) {
  for (int root = 0; root < P_; ++root) {
    for (size_t bytes : {size_t{0}, size_t{9}, size_t{70000}}) {
      Bytes mine(bytes);
      for (size_t i = 0; i < bytes; ++i) mine[i] = Pattern(3, rank_, root, i);
      Bytes all(rank_ == root ? bytes * P_ : 0, kSentinel);
      ASSERT_TRUE(
          world_->Gather(mine.data(), bytes, rank_ == root ? all.data() : nullptr, root).ok());
      if (rank_ != root) continue;
      for (int r = 0; r < P_; ++r) {
        for (size_t i = 0; i < bytes; ++i) {
          ASSERT_EQ(all[r * bytes + i], Pattern(3, r, root, i)) << "from " << r << " at " << i;
        }
      }
    }
  }
}

TEST_F(MpiCommunicatorTest, BarrierWaitsForTheLastRank) {
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(world_->Barrier().ok());
  // The last rank arrives 300 ms late; nobody may leave before it arrives.
  const auto start = std::chrono::steady_clock::now();
  if (rank_ == P_ - 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(world_->Barrier().ok());
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  // Ranks leave the previous barrier a few ms apart, so the bound has slack; a rank that did
  // not wait would measure about 0.
  EXPECT_GE(ms, 200.0);
}

TEST_F(MpiCommunicatorTest, SplitEvenOdd) {
  auto split = world_->Split(rank_ % 2, rank_, "parity");
  ASSERT_TRUE(split.ok()) << split.status();
  MpiCommunicator& sub = **split;
  EXPECT_EQ(sub.name(), "parity");
  EXPECT_EQ(sub.rank(), rank_ / 2);
  EXPECT_EQ(sub.size(), (P_ + 1 - rank_ % 2) / 2);
  for (int r = 0; r < sub.size(); ++r) EXPECT_EQ(sub.world_rank(r), 2 * r + rank_ % 2);
  for (int trial = 0; trial < 10; ++trial) {
    // Both groups run at once, with different sizes: traffic must stay inside each group.
    CheckAllToAllV(sub, 50 + trial + 100 * (rank_ % 2), 9000, trial % sub.size());
    if (HasFatalFailure()) return;
  }
  ASSERT_TRUE(sub.Barrier().ok());
  ASSERT_TRUE(world_->Barrier().ok());
}

TEST_F(MpiCommunicatorTest, SplitKeyOrdersRanksAndNegativeColorOptsOut) {
  // Reverse order; the last rank takes part in no group (unless it is alone).
  const bool out = P_ > 1 && rank_ == P_ - 1;
  auto split = world_->Split(out ? -1 : 0, -rank_, "reversed");
  ASSERT_TRUE(split.ok()) << split.status();
  if (out) {
    EXPECT_EQ(*split, nullptr);
  } else {
    const int n = P_ > 1 ? P_ - 1 : 1;
    ASSERT_NE(*split, nullptr);
    EXPECT_EQ((*split)->size(), n);
    EXPECT_EQ((*split)->rank(), n - 1 - rank_);
    EXPECT_EQ((*split)->world_rank(0), n - 1);
    ASSERT_TRUE((*split)->Barrier().ok());
  }
  ASSERT_TRUE(world_->Barrier().ok());
}

// AllToAllV of 64 MiB each way between world ranks 0 and 1 (plus 1 KiB to self), once with
// whole messages and once chunked into 5 MiB + 3 byte MPI messages. Other ranks opt out.
TEST_F(MpiCommunicatorTest, LargeAllToAllV) {
  if (P_ == 1) GTEST_SKIP() << "needs two ranks";
  auto pair = world_->Split(rank_ < 2 ? 0 : -1, rank_, "pair");
  ASSERT_TRUE(pair.ok()) << pair.status();
  if (rank_ < 2) {
    MpiCommunicator& comm = **pair;
    const int me = comm.rank(), peer = 1 - me;
    const size_t big = size_t{64} << 20, small = 1024;
    std::vector<size_t> counts(2), offsets(2);
    counts[peer] = big;
    counts[me] = small;
    offsets[me] = 0;
    offsets[peer] = small;
    const size_t words = (big + small) / sizeof(uint32_t);
    std::vector<uint32_t> send(words), recv(words);
    for (size_t i = 0; i < words; ++i) send[i] = (me << 28) ^ static_cast<uint32_t>(i);
    for (size_t chunk : {comm.max_message_bytes(), (size_t{5} << 20) + 3}) {
      comm.set_max_message_bytes(chunk);
      std::fill(recv.begin(), recv.end(), 0);
      const auto start = std::chrono::steady_clock::now();
      ASSERT_TRUE(comm.AllToAllV(send.data(), counts, offsets, recv.data(), counts, offsets).ok());
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (rank_ == 0) std::printf("64 MiB AllToAllV, %zu-byte messages: %.3f s\n", chunk, s);
      // Own block at word 0 from this rank; the peer's block starts at word small/4 in both
      // buffers, so word i of recv came from word i of the peer's send.
      size_t bad = 0, first_bad = 0;  // count first: an ASSERT per word is slow
      for (size_t i = 0; i < words; ++i) {
        const int from = i < small / sizeof(uint32_t) ? me : peer;
        if (recv[i] != ((from << 28) ^ static_cast<uint32_t>(i)) && bad++ == 0) first_bad = i;
      }
      ASSERT_EQ(bad, 0u) << "first bad word " << first_bad << ", chunk " << chunk;
    }
  } else {
    EXPECT_EQ(*pair, nullptr);
  }
  ASSERT_TRUE(world_->Barrier().ok());
}

// Ranks that disagree on a size: a longer message than posted is MPI's truncation error
// (kUnavailable, with MPI's text and the call site); a shorter one is caught by the count check
// (kInternal). Either leaves the communicator unusable.
// Ranks of one host get one shared segment: each sees what the others wrote, after their
// posts. Disabled by the options, there is none; ranks asking for different sizes are refused
// on every rank.
TEST_F(MpiCommunicatorTest, AllocateSharedOnOneHost) {
  auto seg = world_->AllocateShared(4096);
  ASSERT_TRUE(seg.ok()) << seg.status();
  if (P_ == 1) {
    EXPECT_EQ(*seg, nullptr) << "a group of one has nobody to share with";
  } else {
    ASSERT_NE(*seg, nullptr) << "the test's ranks share this host";
    SharedSegment& s = **seg;
    EXPECT_EQ(s.size(), P_);
    EXPECT_EQ(s.bytes_per_rank(), 4096u);
    std::memset(s.base(rank_), 'a' + rank_, 4096);
    s.Post(0, 1);
    ASSERT_TRUE(s.WaitAll(0, 1, "test").ok());
    for (int r = 0; r < P_; ++r) {
      EXPECT_EQ(s.base(r)[0], 'a' + r);
      EXPECT_EQ(s.base(r)[4095], 'a' + r);
    }
    s.Post(1, 1);  // nobody rewrites a block before every rank has read them all
    ASSERT_TRUE(s.WaitAll(1, 1, "test").ok());
  }

  auto off = MpiCommunicator::World(
      CommOptions{.timeout = absl::Seconds(60), .shared_memory = false});
  auto none = off->AllocateShared(4096);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, nullptr);

  if (P_ > 1) {
    auto mixed = world_->AllocateShared(rank_ == P_ - 1 ? 8192 : 4096);
    EXPECT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument) << mixed.status();
    EXPECT_NE(std::string(mixed.status().message()).find("the ranks' layouts differ"),
              std::string::npos);
  }
}

TEST_F(MpiCommunicatorTest, SizeMismatchesAreReported) {
  if (P_ == 1) GTEST_SKIP() << "needs two ranks";
  for (const bool longer : {true, false}) {
    auto split = world_->Split(rank_ < 2 ? 0 : -1, rank_, "mismatch");
    ASSERT_TRUE(split.ok()) << split.status();
    if (rank_ < 2) {
      MpiCommunicator& comm = **split;
      uint64_t data[2] = {1, 2};
      if (rank_ == 0) {
        ASSERT_TRUE(comm.Send(data, longer ? 16 : 4, 1, 3).ok());
      } else {
        const absl::Status s = comm.Recv(data, 8, 0, 3);
        if (longer) {
          EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
          EXPECT_NE(s.message().find("MPI_Irecv failed in Recv"), std::string::npos) << s;
          EXPECT_NE(s.message().find("truncated"), std::string::npos) << s;
          EXPECT_NE(s.message().find("comm/mpi_communicator.cc:"), std::string::npos) << s;
        } else {
          EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
          EXPECT_NE(s.message().find("rank 0 sent 4 bytes where rank 1 expected 8"),
                    std::string::npos)
              << s;
        }
        EXPECT_TRUE(comm.broken());
      }
    }
    ASSERT_TRUE(world_->Barrier().ok());
  }
}

// The group used for the deadline tests: all world ranks in reverse order (group rank g is
// world rank P-1-g) with a 1 s timeout. Group rank P-1 (world rank 0) never calls `op`; the
// others must fail with kDeadlineExceeded naming it, and the group becomes unusable.
class DeadlineTest : public MpiCommunicatorTest {
 protected:
  using Op = std::function<absl::Status(MpiCommunicator&, int missing)>;

  // `expect_failure(group_rank)`: whether that rank must time out (others must succeed).
  // `named(group_rank)`: the group rank its error must name (by default the missing one).
  void Run(
      const std::string& op_name, const Op& op,
      const std::function<bool(int)>& expect_failure = [](int) { return true; },
      const std::function<int(int)>& named = [](int) { return -1; }) {
    if (P_ == 1) GTEST_SKIP() << "needs two ranks";
    auto split =
        world_->Split(0, P_ - 1 - rank_, "deadline-test", CommOptions{.timeout = absl::Seconds(1)});
    ASSERT_TRUE(split.ok()) << split.status();
    MpiCommunicator& comm = **split;
    const int missing = P_ - 1;
    if (comm.rank() != missing) {
      const auto start = std::chrono::steady_clock::now();
      const absl::Status s = op(comm, missing);
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (expect_failure(comm.rank())) {
        EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
        EXPECT_GE(elapsed, 1.0);
        EXPECT_LE(elapsed, 5.0);
        const std::string msg(s.message());
        EXPECT_NE(msg.find(op_name), std::string::npos) << msg;
        EXPECT_NE(msg.find("deadline-test"), std::string::npos) << msg;
        const int peer = named(comm.rank()) >= 0 ? named(comm.rank()) : missing;
        EXPECT_NE(msg.find(absl::StrCat("rank(s) ", peer, " (world rank(s) ", P_ - 1 - peer, ")")),
                  std::string::npos)
            << msg;
        EXPECT_NE(msg.find("after 1s"), std::string::npos) << msg;
        EXPECT_TRUE(comm.broken());
        const absl::Status again = comm.Barrier();
        EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
        EXPECT_NE(again.message().find("communicator deadline-test is unusable"), std::string::npos)
            << again;
      } else {
        EXPECT_TRUE(s.ok()) << s;
      }
    }
    // The missing rank waits here (polling, not spinning) until the others have timed out.
    ASSERT_TRUE(world_->Barrier().ok());
  }
};

TEST_F(DeadlineTest, AllToAllV) {
  Run("AllToAllV", [](MpiCommunicator& comm, int) {
    // 1 MiB per peer: sends to the missing rank use the rendezvous protocol and stay pending.
    const size_t n = size_t{1} << 20;
    const int P = comm.size();
    std::vector<size_t> counts(P, n), offsets(P);
    for (int r = 0; r < P; ++r) offsets[r] = r * n;
    Bytes send(n * P, 1), recv(n * P);
    return comm.AllToAllV(send.data(), counts, offsets, recv.data(), counts, offsets);
  });
}

TEST_F(DeadlineTest, Recv) {
  Run("Recv", [](MpiCommunicator& comm, int missing) {
    int x = 0;
    return comm.Recv(&x, sizeof x, missing, 7);
  });
}

TEST_F(DeadlineTest, Broadcast) {
  Run("Broadcast", [](MpiCommunicator& comm, int missing) {
    Bytes data(100);
    return comm.Broadcast(data.data(), data.size(), missing);
  });
}

TEST_F(DeadlineTest, Barrier) {
  // Only group rank 0 knows who is missing; the others time out waiting for rank 0.
  Run(
      "Barrier", [](MpiCommunicator& comm, int) { return comm.Barrier(); },
      [](int) { return true; }, [](int group_rank) { return group_rank == 0 ? -1 : 0; });
}

TEST_F(DeadlineTest, GatherSendersOfSmallDataDoNotNotice) {
  // Small contributions are buffered by MPI: only the root times out.
  Run(
      "Gather",
      [](MpiCommunicator& comm, int) {
        int x = comm.rank();
        std::vector<int> all(comm.size());
        return comm.Gather(&x, sizeof x, comm.rank() == 0 ? all.data() : nullptr, 0);
      },
      [](int group_rank) { return group_rank == 0; });
}

}  // namespace
}  // namespace switchyard
