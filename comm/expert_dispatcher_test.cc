// ExpertDispatcher under mpirun against a single-process reference, with random routings
// (fixed seeds) and the edge cases: ranks that receive nothing, every token on one rank,
// expert counts the group size does not divide, replicated experts, ranks with no tokens.
#include "comm/expert_dispatcher.h"

#include <mpi.h>

#include <algorithm>
#include <omp.h>

#include <chrono>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "comm/mpi_communicator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

constexpr int kHidden = 12;

// Expert e maps x to (e + 1) * x + 0.5 * e, elementwise; records what it was asked to run.
class FakeExperts : public LocalExperts {
 public:
  FakeExperts(std::set<int> held, int num_experts) : held_(std::move(held)), E_(num_experts) {}
  void Run(int layer, const ExpertBatch& b) override {
    int64_t off = 0;
    std::set<const float*> outputs_seen;
    for (int e = 0; e < E_; ++e) {
      if (b.counts[e] == 0) continue;
      EXPECT_TRUE(held_.count(e)) << "expert " << e << " is not held here";
      rows_run += b.counts[e];
      for (int64_t p = off; p < off + b.counts[e]; ++p) {
        // A row's first pair overwrites, and comes before the pairs that add to it.
        EXPECT_EQ(b.accumulate[p] != 0, outputs_seen.count(b.y[p]) > 0) << "pair " << p;
        outputs_seen.insert(b.y[p]);
        for (int i = 0; i < kHidden; ++i) {
          const float v = b.scale[p] * ((e + 1) * b.x[p][i] + 0.5f * e);
          b.y[p][i] = b.accumulate[p] ? b.y[p][i] + v : v;
        }
      }
      off += b.counts[e];
    }
    EXPECT_EQ(off, b.pairs);
  }
  int64_t rows_run = 0;
  void set_held(std::set<int> held) { held_ = std::move(held); }

 private:
  std::set<int> held_;
  int E_;
};

struct Routing {
  std::vector<int32_t> experts;
  std::vector<float> weights;
  std::vector<float> x;
};

// Random top-k choices (distinct experts per token, weights summing to 1) for T tokens.
Routing RandomRouting(int T, int E, int K, std::mt19937& rng, int only_below = -1) {
  Routing r;
  std::uniform_real_distribution<float> u(-1, 1);
  const int pool = only_below > 0 ? only_below : E;
  for (int t = 0; t < T; ++t) {
    std::vector<int> ids(pool);
    for (int e = 0; e < pool; ++e) ids[e] = e;
    std::shuffle(ids.begin(), ids.end(), rng);
    float sum = 0;
    std::vector<float> w(K);
    for (int k = 0; k < K; ++k) sum += (w[k] = 0.1f + std::abs(u(rng)));
    for (int k = 0; k < K; ++k) {
      r.experts.push_back(ids[k]);
      r.weights.push_back(w[k] / sum);
    }
    for (int i = 0; i < kHidden; ++i) r.x.push_back(u(rng));
  }
  return r;
}

std::vector<float> Reference(const Routing& r, int T, int K) {
  std::vector<float> out(static_cast<size_t>(T) * kHidden, 0.0f);
  for (int t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) {
      const int e = r.experts[t * K + k];
      for (int i = 0; i < kHidden; ++i) {
        out[t * kHidden + i] += r.weights[t * K + k] * ((e + 1) * r.x[t * kHidden + i] + 0.5f * e);
      }
    }
  }
  return out;
}

ExpertRanks DefaultRouting(int layers, int E, int P) {
  ExpertRanks ranks(layers, std::vector<std::vector<int>>(E));
  for (int l = 0; l < layers; ++l) {
    for (int e = 0; e < E; ++e) ranks[l][e] = {e % P};
  }
  return ranks;
}

std::set<int> HeldBy(const ExpertRanks& routing, int layer, int rank) {
  std::set<int> held;
  for (size_t e = 0; e < routing[layer].size(); ++e) {
    for (int r : routing[layer][e]) {
      if (r == rank) held.insert(static_cast<int>(e));
    }
  }
  return held;
}

// Every test runs over both transports: "shm" (the ranks share this host, so the dispatcher
// must take shared memory) and "mpi" (shared memory disabled: the all-to-alls).
class DispatcherTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    comm_ = MpiCommunicator::World(
        CommOptions{.timeout = absl::Seconds(30), .shared_memory = GetParam() == "shm"});
    rank_ = comm_->rank();
    P_ = comm_->size();
  }
  // The layout of these tests' groups: hidden kHidden over every rank.
  DispatchLayout Layout(int E, int K, int max_tokens) const {
    return {.hidden = kHidden, .top_k = K, .num_experts = E, .ep = P_, .max_tokens = max_tokens};
  }
  // After a Forward: the transport the parameter asks for.
  void ExpectTransport(const ExpertDispatcher& d) {
    EXPECT_EQ(d.shared_memory(), GetParam() == "shm" && P_ > 1);
  }
  // Runs one Forward per (layer) with this rank's routing and checks against the reference.
  void Check(const ExpertRanks& routing, int E, int K, int T, int max_tokens, Routing r,
             int64_t* rows_sent = nullptr, int64_t* rows_run = nullptr) {
    const DispatchLayout layout = Layout(E, K, max_tokens);
    FakeExperts experts(HeldBy(routing, 0, rank_), E);
    ExpertDispatcher d(comm_.get(), layout, routing, &experts);
    std::vector<float> out(static_cast<size_t>(std::max(T, 1)) * kHidden, -7.0f);
    ASSERT_TRUE(d.Forward(0, r.x.data(), T, r.experts.data(), r.weights.data(), out.data()).ok());
    ExpectTransport(d);
    std::vector<float> want = Reference(r, T, K);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(out[i], want[i], 1e-5) << "at " << i;
    if (rows_sent) *rows_sent = d.last_stats().rows_sent;
    if (rows_run) *rows_run = experts.rows_run;
  }
  std::unique_ptr<MpiCommunicator> comm_;
  int rank_ = 0, P_ = 1;
};

TEST_P(DispatcherTest, RandomRoutingsMatchReference) {
  for (int trial = 0; trial < 20; ++trial) {
    std::mt19937 rng(1000 * trial + rank_);
    const int E = 8, K = 2, max_tokens = 40;
    const int T = std::uniform_int_distribution<int>(0, max_tokens)(rng);
    Check(DefaultRouting(1, E, P_), E, K, T, max_tokens, RandomRouting(T, E, K, rng));
  }
}

// Enough rows x hidden that packing, grouping and both sums run on several threads, with
// three choices per token so a token can have three rows and a row three pairs.
TEST_P(DispatcherTest, LargeStepsTakeTheThreadedPath) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(3);
  std::mt19937 rng(4242 + rank_);
  const int T = 12000, E = 8, K = 3;  // 12000 * 12 floats: over the threading threshold
  Check(DefaultRouting(1, E, P_), E, K, T, T, RandomRouting(T, E, K, rng));
  omp_set_num_threads(saved);
}

TEST_P(DispatcherTest, SixExpertsTopThree) {
  std::mt19937 rng(77 + rank_);
  Check(DefaultRouting(1, 6, P_), 6, 3, 25, 25, RandomRouting(25, 6, 3, rng));
}

TEST_P(DispatcherTest, EveryTokenToRankZeroOthersReceiveNothing) {
  const int E = 8, K = 2;
  ExpertRanks routing(1, std::vector<std::vector<int>>(E, std::vector<int>{0}));
  std::mt19937 rng(5 + rank_);
  int64_t sent = 0, run = 0;
  Check(routing, E, K, 16, 16, RandomRouting(16, E, K, rng), &sent, &run);
  EXPECT_EQ(sent, 16) << "both choices live on rank 0: each token must travel once";
  if (rank_ != 0) {
    EXPECT_EQ(run, 0);
  } else {
    EXPECT_EQ(run, 16 * K * P_);
  }
}

TEST_P(DispatcherTest, RanksWithNoTokens) {
  std::mt19937 rng(9 + rank_);
  const int T = rank_ % 2 == 0 ? 0 : 11;
  Check(DefaultRouting(1, 8, P_), 8, 2, T, 11, RandomRouting(T, 8, 2, rng));
}

TEST_P(DispatcherTest, TokensTravelOncePerDestination) {
  // Choices among experts {0, P}: with e % P placement both live on rank 0 (when P <= 4).
  if (P_ > 4) GTEST_SKIP() << "needs 2P <= 8 experts";
  const int E = 8, K = 2, T = 10;
  Routing r;
  std::mt19937 rng(3 + rank_);
  r = RandomRouting(T, E, K, rng);
  for (int t = 0; t < T; ++t) {
    r.experts[t * K] = 0;
    r.experts[t * K + 1] = P_ % E == 0 ? 1 : P_;  // P == 1: any other expert, still rank 0
  }
  int64_t sent = 0;
  Check(DefaultRouting(1, E, P_), E, K, T, T, r, &sent);
  EXPECT_EQ(sent, T);
}

TEST_P(DispatcherTest, ReplicatedExpertSpreadsLoad) {
  const int E = 8, K = 2, T = 30;
  ExpertRanks routing = DefaultRouting(1, E, P_);
  for (int e = 0; e < E; ++e) {
    routing[0][e].clear();
    for (int r = 0; r < P_; ++r) routing[0][e].push_back(r);  // every expert everywhere
  }
  std::mt19937 rng(11 + rank_);
  int64_t run = 0;
  Check(routing, E, K, T, T, RandomRouting(T, E, K, rng), nullptr, &run);
  // Replica = (source rank + token) mod P: every rank gets a share of the work.
  std::vector<int64_t> all(P_);
  MPI_Allgather(&run, 1, MPI_INT64_T, all.data(), 1, MPI_INT64_T, MPI_COMM_WORLD);
  int64_t total = 0;
  for (int64_t v : all) {
    EXPECT_GT(v, 0);
    total += v;
  }
  EXPECT_EQ(total, int64_t{T} * K * P_);
}

// The routing changes between Forwards (experts moved while serving): the next Forward sends
// each choice to the new holders; a routing that leaves an expert nowhere is refused and the
// old one stays.
TEST_P(DispatcherTest, SetRoutingMovesExpertsBetweenForwards) {
  const int E = 8, K = 2, T = 17;
  const ExpertRanks before = DefaultRouting(1, E, P_);
  ExpertRanks after(1, std::vector<std::vector<int>>(E, std::vector<int>{P_ - 1}));
  for (int r = 0; r < P_; ++r) after[0][0].push_back(r);  // expert 0 everywhere
  std::sort(after[0][0].begin(), after[0][0].end());
  after[0][0].erase(std::unique(after[0][0].begin(), after[0][0].end()), after[0][0].end());
  const DispatchLayout layout = Layout(E, K, T);
  FakeExperts experts(HeldBy(before, 0, rank_), E);
  ExpertDispatcher d(comm_.get(), layout, before, &experts);
  std::mt19937 rng(31 + rank_);
  for (const ExpertRanks* routing : {&before, static_cast<const ExpertRanks*>(&after)}) {
    if (routing == &after) {
      ASSERT_TRUE(d.SetRouting(after).ok());
      experts.set_held(HeldBy(after, 0, rank_));
    }
    Routing r = RandomRouting(T, E, K, rng);
    std::vector<float> out(static_cast<size_t>(T) * kHidden);
    ASSERT_TRUE(d.Forward(0, r.x.data(), T, r.experts.data(), r.weights.data(), out.data()).ok());
    const std::vector<float> want = Reference(r, T, K);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(out[i], want[i], 1e-5) << "at " << i;
  }
  EXPECT_EQ(d.routing(), after);
  ExpertRanks nowhere = after;
  nowhere[0][3].clear();
  const absl::Status st = d.SetRouting(nowhere);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), testing::HasSubstr("layer 0 expert 3 has no replica"));
  EXPECT_EQ(d.routing(), after);
}

// Unevenly spread experts: rank 0 holds most of them, the last rank one replica more.
TEST_P(DispatcherTest, UnevenPlacementWithReplicas) {
  const int E = 8, K = 2, T = 21;
  ExpertRanks routing(1, std::vector<std::vector<int>>(E, std::vector<int>{0}));
  for (int e = 6; e < E; ++e) routing[0][e] = {P_ - 1};
  routing[0][1] = P_ > 1 ? std::vector<int>{0, P_ - 1} : std::vector<int>{0};
  std::mt19937 rng(21 + rank_);
  Check(routing, E, K, T, T, RandomRouting(T, E, K, rng));
}

// Own tokens' rows are read where they are and never travel: a group of one sends nothing.
TEST_P(DispatcherTest, OwnRowsStayInPlace) {
  const int E = 8, K = 2, T = 9;
  ExpertRanks routing(1, std::vector<std::vector<int>>(E, std::vector<int>{rank_}));
  FakeExperts experts(HeldBy(routing, 0, rank_), E);
  ExpertDispatcher d(comm_.get(), Layout(E, K, T), routing, &experts);
  std::mt19937 rng(31 + rank_);
  Routing r = RandomRouting(T, E, K, rng);
  std::vector<float> out(T * kHidden);
  ASSERT_TRUE(d.Forward(0, r.x.data(), T, r.experts.data(), r.weights.data(), out.data()).ok());
  EXPECT_EQ(d.last_stats().bytes_sent, 0);
  EXPECT_EQ(d.last_stats().rows_sent, T);
  const std::vector<float> want = Reference(r, T, K);
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(out[i], want[i], 1e-5);
}

// The same inputs give bit-identical outputs, step after step.
TEST_P(DispatcherTest, Deterministic) {
  const int E = 8, K = 2, T = 33;
  FakeExperts experts(HeldBy(DefaultRouting(1, E, P_), 0, rank_), E);
  ExpertDispatcher d(comm_.get(), Layout(E, K, T), DefaultRouting(1, E, P_), &experts);
  std::mt19937 rng(41 + rank_);
  Routing r = RandomRouting(T, E, K, rng);
  std::vector<float> a(T * kHidden), b(T * kHidden);
  ASSERT_TRUE(d.Forward(0, r.x.data(), T, r.experts.data(), r.weights.data(), a.data()).ok());
  ASSERT_TRUE(d.Forward(0, r.x.data(), T, r.experts.data(), r.weights.data(), b.data()).ok());
  EXPECT_EQ(a, b);
}

TEST_P(DispatcherTest, RejectsBadChoicesBeforeCommunicating) {
  const int E = 8, K = 2;
  FakeExperts experts({}, E);
  ExpertDispatcher d(comm_.get(), Layout(E, K, 4), DefaultRouting(1, E, P_), &experts);
  std::vector<float> x(2 * kHidden), out(2 * kHidden), w(4, 0.5f);
  std::vector<int32_t> out_of_range = {0, 1, 2, E};
  auto st = d.Forward(0, x.data(), 2, out_of_range.data(), w.data(), out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), testing::HasSubstr("token 1 chooses expert 8"));
  std::vector<int32_t> twice = {3, 3, 0, 1};
  st = d.Forward(0, x.data(), 2, twice.data(), w.data(), out.data());
  EXPECT_THAT(st.message(), testing::HasSubstr("token 0 chooses expert 3 twice"));
}

TEST_P(DispatcherTest, RejectsMoreTokensThanTheLayout) {
  const DispatchLayout layout = Layout(8, 2, 4);
  FakeExperts experts({}, 8);
  ExpertDispatcher d(comm_.get(), layout, DefaultRouting(1, 8, P_), &experts);
  std::vector<float> x(5 * kHidden), out(5 * kHidden), w(10, 0.5f);
  std::vector<int32_t> e(10, 0);
  auto st = d.Forward(0, x.data(), 5, e.data(), w.data(), out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
}

// Many Forwards on one dispatcher, with a different token count each and one rank late now
// and then: a rank must never rewrite its rows or partial sums while a peer still reads them.
TEST_P(DispatcherTest, ManyForwardsWithLateRanks) {
  const int E = 8, K = 3, max_tokens = 24;
  ExpertRanks routing = DefaultRouting(2, E, P_);
  routing[1][2] = P_ > 1 ? std::vector<int>{1, 0} : std::vector<int>{0};
  FakeExperts experts(HeldBy(routing, 0, rank_), E);
  // Layer 1's replica of expert 2 on rank 0 is outside HeldBy(layer 0): hold both layers'.
  std::set<int> held = HeldBy(routing, 0, rank_);
  for (int e : HeldBy(routing, 1, rank_)) held.insert(e);
  experts.set_held(held);
  ExpertDispatcher d(comm_.get(), Layout(E, K, max_tokens), routing, &experts);
  std::mt19937 rng(97 + rank_);
  for (int step = 0; step < 60; ++step) {
    const int T = std::uniform_int_distribution<int>(0, max_tokens)(rng);
    if ((step + rank_) % 7 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    Routing r = RandomRouting(T, E, K, rng);
    std::vector<float> out(static_cast<size_t>(std::max(T, 1)) * kHidden, -3.0f);
    ASSERT_TRUE(
        d.Forward(step % 2, r.x.data(), T, r.experts.data(), r.weights.data(), out.data()).ok())
        << "step " << step;
    const std::vector<float> want = Reference(r, T, K);
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(out[i], want[i], 1e-5) << "step " << step << " at " << i;
    }
  }
  ExpectTransport(d);
}

// Both transports add the same partial sums in the same order: identical bits.
TEST_P(DispatcherTest, TransportsGiveIdenticalBits) {
  if (GetParam() != "shm") GTEST_SKIP() << "compares both transports once";
  const int E = 8, K = 3, T = 37;
  ExpertRanks routing = DefaultRouting(1, E, P_);
  routing[0][5].clear();
  for (int r = 0; r < P_; ++r) routing[0][5].push_back(r);
  auto mpi = MpiCommunicator::World(
      CommOptions{.timeout = absl::Seconds(30), .shared_memory = false});
  std::mt19937 rng(123 + rank_);
  Routing r = RandomRouting(T, E, K, rng);
  std::vector<std::vector<float>> outs;
  for (Communicator* c : {static_cast<Communicator*>(comm_.get()),
                          static_cast<Communicator*>(mpi.get())}) {
    FakeExperts experts(HeldBy(routing, 0, rank_), E);
    ExpertDispatcher d(c, Layout(E, K, T), routing, &experts);
    outs.emplace_back(static_cast<size_t>(T) * kHidden);
    ASSERT_TRUE(
        d.Forward(0, r.x.data(), T, r.experts.data(), r.weights.data(), outs.back().data()).ok());
    EXPECT_EQ(d.shared_memory(), c == comm_.get() && P_ > 1);
  }
  EXPECT_EQ(outs[0], outs[1]);
}

// A rank that does not come to a Forward is named by the others within the deadline (the
// shared-memory wait keeps the communicator's deadline, like the all-to-alls).
TEST_P(DispatcherTest, AbsentRankIsNamedWithinTheDeadline) {
  if (P_ < 2) GTEST_SKIP() << "needs a peer";
  auto world = MpiCommunicator::World(CommOptions{.timeout = absl::Seconds(30)});
  auto split = world->Split(0, rank_, "ep(test)",
                            CommOptions{.timeout = absl::Milliseconds(800),
                                        .shared_memory = GetParam() == "shm"});
  ASSERT_TRUE(split.ok()) << split.status();
  std::unique_ptr<MpiCommunicator> comm = *std::move(split);
  const int E = 8, K = 2, T = 6;
  FakeExperts experts(HeldBy(DefaultRouting(1, E, P_), 0, rank_), E);
  ExpertDispatcher d(comm.get(), Layout(E, K, T), DefaultRouting(1, E, P_), &experts);
  std::mt19937 rng(7 + rank_);
  Routing r = RandomRouting(T, E, K, rng);
  std::vector<float> out(T * kHidden);
  ASSERT_TRUE(d.Forward(0, r.x.data(), T, r.experts.data(), r.weights.data(), out.data()).ok());
  ExpectTransport(d);
  if (rank_ != 0) {  // rank 0 stays away from the second Forward
    const auto t0 = std::chrono::steady_clock::now();
    const absl::Status st = d.Forward(0, r.x.data(), T, r.experts.data(), r.weights.data(),
                                      out.data());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
    EXPECT_THAT(std::string(st.message()), testing::HasSubstr("rank(s) 0 (world rank(s) 0)"));
    EXPECT_LT(s, 10.0);
  }
  // Everyone meets again on the healthy world group before the next test.
  ASSERT_TRUE(world->Barrier().ok());
}

INSTANTIATE_TEST_SUITE_P(Transports, DispatcherTest, testing::Values("shm", "mpi"),
                         [](const testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace switchyard
