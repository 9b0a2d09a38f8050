// The device dispatch plan's indices, followed on the host as the device follows them (gather,
// exchange, grouped experts, weighted sums, exchange back, combine) for every rank of a group
// in one process, against the MoE computed directly.
#include "worker/device_dispatch.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace switchyard {
namespace {

constexpr int kHidden = 6;

// A stand-in expert: distinct per expert, nonlinear enough to catch a wrong expert.
float ExpertOf(int e, float x) { return std::tanh(x * (e + 1) * 0.3f) + 0.01f * e; }

struct Case {
  int ep, experts, top_k, layers;
  ExpertRanks routing;
};

// Expert e of layer l on rank (e + l) % ep; expert 0 on every rank, the last on two ranks.
ExpertRanks Placement(int ep, int E, int L) {
  ExpertRanks r(L, std::vector<std::vector<int>>(E));
  for (int l = 0; l < L; ++l) {
    for (int e = 0; e < E; ++e) r[l][e] = {(e + l) % ep};
    for (int p = 0; p < ep; ++p) {
      if (p != r[l][0][0]) r[l][0].push_back(p);
    }
    if (ep > 1 && E > 1) r[l][E - 1].push_back((r[l][E - 1][0] + 1) % ep);
  }
  return r;
}

// Runs one layer on every rank and returns each rank's out[T_r, H].
std::vector<std::vector<float>> RunGroup(const Case& c, int layer,
                                         const std::vector<std::vector<float>>& x,
                                         const std::vector<std::vector<int32_t>>& experts,
                                         const std::vector<std::vector<float>>& weights,
                                         std::vector<DeviceDispatchPlan>& plans) {
  const int P = c.ep, K = c.top_k, H = kHidden;
  for (int r = 0; r < P; ++r) {
    const int T = static_cast<int>(x[r].size() / H);
    EXPECT_TRUE(plans[r].PlanSend(layer, T, experts[r].data(), weights[r].data()).ok());
  }
  // Exchange: rank d receives the rows every s packed for it, in source order.
  std::vector<std::vector<float>> partial(P);
  for (int d = 0; d < P; ++d) {
    std::vector<size_t> recv_rows(P);
    std::vector<int32_t> meta;
    std::vector<float> rows;
    for (int s = 0; s < P; ++s) {
      const DeviceDispatchPlan& ps = plans[s];
      recv_rows[s] = ps.send_rows()[d];
      for (size_t i = ps.send_row_offsets()[d]; i < ps.send_row_offsets()[d + 1]; ++i) {
        const int t = ps.send_token()[i];
        rows.insert(rows.end(), x[s].begin() + t * H, x[s].begin() + (t + 1) * H);
        meta.insert(meta.end(), ps.send_meta().begin() + i * ps.meta_words(),
                    ps.send_meta().begin() + (i + 1) * ps.meta_words());
      }
    }
    DeviceDispatchPlan& pd = plans[d];
    EXPECT_TRUE(pd.PlanRecv(layer, recv_rows, meta.data()).ok());
    // Grouped experts: slot s covers slot_counts[s] grouped rows.
    std::vector<float> y(pd.total_pairs() * H);
    int64_t g = 0;
    for (size_t s = 0; s < pd.slot_counts().size(); ++s) {
      const int e = pd.local_experts(layer)[s];
      for (int i = 0; i < pd.slot_counts()[s]; ++i, ++g) {
        const int row = pd.group_row()[g];
        for (int h = 0; h < H; ++h) y[g * H + h] = ExpertOf(e, rows[row * H + h]);
      }
    }
    EXPECT_EQ(g, pd.total_pairs());
    partial[d].assign(pd.total_recv_rows() * H, 0.0f);
    for (int64_t r = 0; r < pd.total_recv_rows(); ++r) {
      for (int k = 0; k < K; ++k) {
        const int pg = pd.pair_group()[r * K + k];
        if (pg < 0) continue;
        for (int h = 0; h < H; ++h) partial[d][r * H + h] += pd.pair_weight()[r * K + k] * y[pg * H + h];
      }
    }
  }
  // Back: source s's rows from d sit at d's recv offset of s; they land at s's send offset.
  std::vector<std::vector<float>> out(P);
  for (int s = 0; s < P; ++s) {
    const DeviceDispatchPlan& ps = plans[s];
    std::vector<float> returned(ps.total_send_rows() * H);
    for (int d = 0; d < P; ++d) {
      const size_t from = plans[d].recv_row_offsets()[s], to = ps.send_row_offsets()[d];
      for (size_t i = 0; i < ps.send_rows()[d]; ++i) {
        std::copy_n(&partial[d][(from + i) * H], H, &returned[(to + i) * H]);
      }
    }
    const int T = static_cast<int>(x[s].size() / H), C = ps.combine_width();
    out[s].assign(T * H, 0.0f);
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < C; ++j) {
        const int row = ps.combine_rows()[t * C + j];
        if (row < 0) continue;
        for (int h = 0; h < H; ++h) out[s][t * H + h] += returned[row * H + h];
      }
    }
  }
  return out;
}

void CheckGroup(int ep, int E, int K, uint32_t seed) {
  const int L = 2;
  Case c{ep, E, K, L, Placement(ep, E, L)};
  const DispatchLayout layout{.hidden = kHidden, .top_k = K, .num_experts = E, .ep = ep,
                              .max_tokens = 40};
  std::vector<DeviceDispatchPlan> plans;
  for (int r = 0; r < ep; ++r) {
    plans.emplace_back(layout, c.routing, r);
    ASSERT_TRUE(plans.back().Validate().ok());
  }
  std::mt19937 rng(seed);
  for (int layer = 0; layer < L; ++layer) {
    std::vector<std::vector<float>> x(ep), w(ep);
    std::vector<std::vector<int32_t>> ex(ep);
    for (int r = 0; r < ep; ++r) {
      const int T = r == 1 ? 0 : 1 + static_cast<int>(rng() % 40);  // rank 1 brings nothing
      std::uniform_real_distribution<float> u(-2, 2);
      for (int i = 0; i < T * kHidden; ++i) x[r].push_back(u(rng));
      for (int t = 0; t < T; ++t) {
        std::vector<int> all(E);
        for (int e = 0; e < E; ++e) all[e] = e;
        std::shuffle(all.begin(), all.end(), rng);
        float sum = 0;
        for (int k = 0; k < K; ++k) {
          ex[r].push_back(all[k]);
          w[r].push_back(0.1f + (rng() % 100) / 100.0f);
          sum += w[r].back();
        }
        for (int k = 0; k < K; ++k) w[r][t * K + k] /= sum;
      }
    }
    auto out = RunGroup(c, layer, x, ex, w, plans);
    for (int r = 0; r < ep; ++r) {
      const int T = static_cast<int>(x[r].size() / kHidden);
      for (int t = 0; t < T; ++t) {
        for (int h = 0; h < kHidden; ++h) {
          float want = 0;
          for (int k = 0; k < K; ++k) {
            want += w[r][t * K + k] * ExpertOf(ex[r][t * K + k], x[r][t * kHidden + h]);
          }
          ASSERT_NEAR(out[r][t * kHidden + h], want, 1e-5)
              << "ep " << ep << " rank " << r << " token " << t << " layer " << layer;
        }
      }
    }
  }
}

TEST(DeviceDispatchPlan, EveryRankGetsTheMoeOfItsTokens) {
  CheckGroup(1, 8, 2, 1);
  CheckGroup(2, 8, 2, 2);
  CheckGroup(3, 8, 2, 3);
  CheckGroup(4, 8, 2, 4);
  CheckGroup(4, 8, 4, 5);  // more choices than... every rank: a token reaches each rank once
  CheckGroup(8, 8, 2, 6);
  CheckGroup(2, 5, 3, 7);
}

TEST(DeviceDispatchPlan, ATokenTravelsOncePerRankAndRowsStayInTokenOrder) {
  // Experts 0, 1 on rank 0; 2, 3 on rank 1.
  ExpertRanks routing = {{{0}, {0}, {1}, {1}}};
  const DispatchLayout layout{.hidden = 4, .top_k = 2, .num_experts = 4, .ep = 2, .max_tokens = 8};
  DeviceDispatchPlan p(layout, routing, 0);
  const int32_t experts[] = {0, 1, 2, 0, 3, 2};
  const float weights[] = {0.6f, 0.4f, 0.7f, 0.3f, 0.5f, 0.5f};
  ASSERT_TRUE(p.PlanSend(0, 3, experts, weights).ok());
  EXPECT_EQ(p.send_rows(), (std::vector<size_t>{2, 2}));
  EXPECT_EQ(p.send_token(), (std::vector<int32_t>{0, 1, 1, 2}));
  // Token 0's row to rank 0 carries both of its experts.
  EXPECT_EQ(p.send_meta()[0], 0);
  EXPECT_EQ(p.send_meta()[1], 1);
  EXPECT_EQ(p.send_meta()[4 + 0], 0);  // token 1's row to rank 0: expert 0 only
  EXPECT_EQ(p.send_meta()[4 + 1], -1);
  // Combine: token 1 first went to rank 1 (expert 2), then rank 0.
  EXPECT_EQ(p.combine_rows(), (std::vector<int32_t>{0, -1, 2, 1, 3, -1}));
  EXPECT_EQ(p.expert_token_counts()[0], (std::vector<int64_t>{2, 1, 2, 1}));
}

TEST(DeviceDispatchPlan, BadInputIsRefusedByName) {
  ExpertRanks routing = {{{0}, {0}, {1}, {1}}};
  const DispatchLayout layout{.hidden = 4, .top_k = 2, .num_experts = 4, .ep = 2, .max_tokens = 2};
  DeviceDispatchPlan p(layout, routing, 0);
  const int32_t twice[] = {1, 1};
  const float w[] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  EXPECT_NE(p.PlanSend(0, 1, twice, w).message().find("twice"), std::string::npos);
  const int32_t out_of_range[] = {0, 7};
  EXPECT_NE(p.PlanSend(0, 1, out_of_range, w).message().find("outside"), std::string::npos);
  const int32_t three[] = {0, 1, 0, 1, 0, 1};
  EXPECT_NE(p.PlanSend(0, 3, three, w).message().find("exceeds"), std::string::npos);
  // A row for expert 2 (held by rank 1) reaching rank 0.
  const int32_t meta[] = {2, -1, 0, 0};
  const size_t rows[] = {1, 0};
  EXPECT_NE(p.PlanRecv(0, rows, meta).message().find("does not hold"), std::string::npos);
  DeviceDispatchPlan outside(layout, {{{0}, {0}, {5}, {1}}}, 0);
  EXPECT_NE(outside.Validate().message().find("outside the EP group"), std::string::npos);
  DeviceDispatchPlan none(layout, {{{0}, {}, {1}, {1}}}, 0);
  EXPECT_NE(none.Validate().message().find("no replica"), std::string::npos);
}

}  // namespace
}  // namespace switchyard
