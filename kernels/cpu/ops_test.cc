// Every CPU op against a naive reference (double loops unless stated) on random inputs with
// fixed seeds and odd shapes (hidden 96/100, head_dim 24, one KV head, 6 experts top-3,
// T = 1, 3, 17).
#include "kernels/cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/bf16.h"
#include "gtest/gtest.h"

namespace switchyard::testing_alloc {
int64_t NewCalls();  // operator new calls so far (sampling_test.cc replaces operator new)
}  // namespace switchyard::testing_alloc

namespace switchyard::cpu {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> RandomVec(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// A weight matrix in a stored type plus its exact fp32 values for the reference.
struct TestWeights {
  DType dtype;
  int rows, cols;
  std::vector<uint16_t> half;  // BF16 / F16 storage
  std::vector<float> full;     // F32 storage
  std::vector<float> ref;      // exact widened values

  WeightMatrix matrix() const {
    return {dtype, dtype == DType::kF32 ? static_cast<const void*>(full.data()) : half.data(), rows,
            cols};
  }
};

TestWeights MakeWeights(DType dtype, int rows, int cols, uint32_t seed, float scale = 0.5f) {
  TestWeights w{dtype, rows, cols, {}, {}, {}};
  const size_t n = static_cast<size_t>(rows) * cols;
  std::vector<float> v = RandomVec(n, seed, -scale, scale);
  w.ref.resize(n);
  if (dtype == DType::kF32) {
    w.full = v;
    w.ref = v;
  } else if (dtype == DType::kBF16) {
    w.half.resize(n);
    for (size_t i = 0; i < n; ++i) {
      w.half[i] = FloatToBf16(v[i]);
      w.ref[i] = Bf16ToFloat(w.half[i]);
    }
  } else {
    // Random halves: random sign and mantissa, exponent 2^-7 .. 2^-1, a few zeros/subnormals.
    std::mt19937 rng(seed);
    w.half.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t r = rng();
      uint16_t h = static_cast<uint16_t>(((r & 1u) << 15) | ((8u + (r >> 1) % 7u) << 10) |
                                         ((r >> 8) & 0x3ffu));
      if (i % 97 == 5) h = 0x0001;  // smallest subnormal
      if (i % 89 == 7) h = 0x8200;  // negative subnormal
      if (i % 83 == 3) h = 0x0000;
      w.half[i] = h;
      w.ref[i] = HalfToFloat(h);
    }
  }
  return w;
}

// y = x W^T in double; also returns sum |x||w| per output for a scale-aware tolerance.
void RefMatMul(const std::vector<float>& x, int T, const TestWeights& w, std::vector<double>* y,
               std::vector<double>* mag) {
  y->assign(static_cast<size_t>(T) * w.rows, 0.0);
  mag->assign(y->size(), 0.0);
  for (int t = 0; t < T; ++t) {
    for (int n = 0; n < w.rows; ++n) {
      double s = 0, m = 0;
      for (int k = 0; k < w.cols; ++k) {
        const double p = static_cast<double>(x[t * w.cols + k]) * w.ref[n * w.cols + k];
        s += p;
        m += std::abs(p);
      }
      (*y)[t * w.rows + n] = s;
      (*mag)[t * w.rows + n] = m;
    }
  }
}

// ---------------------------------------------------------------------------------------
// MatMul

struct MatMulCase {
  DType dtype;
  int T, N, K;
};

class MatMulTest : public testing::TestWithParam<MatMulCase> {};

TEST_P(MatMulTest, MatchesReferenceAndAccumulates) {
  const MatMulCase c = GetParam();
  const TestWeights w = MakeWeights(c.dtype, c.N, c.K, 1000 + c.N * 7 + c.K);
  const std::vector<float> x = RandomVec(static_cast<size_t>(c.T) * c.K, 77 + c.T);
  std::vector<double> ref, mag;
  RefMatMul(x, c.T, w, &ref, &mag);

  // Overwrite: the poison in y must not leak into the result.
  std::vector<float> y(static_cast<size_t>(c.T) * c.N, kNaN);
  MatMul(x.data(), c.T, w.matrix(), y.data());
  for (size_t i = 0; i < y.size(); ++i) {
    // fp32 accumulation over K terms: well within 1e-5 of sum |x w|.
    ASSERT_NEAR(y[i], ref[i], 1e-5 * mag[i] + 1e-7) << "i=" << i;
  }

  // Accumulate: adds to what is there.
  const std::vector<float> y0 = RandomVec(y.size(), 5);
  std::vector<float> ya = y0;
  MatMul(x.data(), c.T, w.matrix(), ya.data(), /*accumulate=*/true);
  for (size_t i = 0; i < ya.size(); ++i) {
    ASSERT_NEAR(ya[i], y0[i] + ref[i], 1e-5 * mag[i] + 1e-6) << "i=" << i;
  }
}

std::vector<MatMulCase> MatMulCases() {
  std::vector<MatMulCase> cases;
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (int T : {1, 3, 17}) {
      // Odd K (tails of every vector width), odd N (row tiles of 4 plus remainders), and
      // sizes above the OpenMP threshold.
      for (auto [N, K] : std::vector<std::pair<int, int>>{
               {1, 5}, {7, 96}, {13, 100}, {6, 256}, {130, 1000}, {512, 256}}) {
        cases.push_back({d, T, N, K});
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatMulTest, testing::ValuesIn(MatMulCases()),
                         [](const testing::TestParamInfo<MatMulCase>& p) {
                           return std::string(DTypeName(p.param.dtype)) + "_T" +
                                  std::to_string(p.param.T) + "_N" + std::to_string(p.param.N) +
                                  "_K" + std::to_string(p.param.K);
                         });

TEST(MatMul, ExactOnSmallIntegers) {
  // Integers are exact in every type and every summation order: the result must be exact.
  const int N = 5, K = 19, T = 3;
  std::vector<float> wf(N * K), x(T * K);
  for (int i = 0; i < N * K; ++i) wf[i] = static_cast<float>((i * 7) % 9 - 4);
  for (int i = 0; i < T * K; ++i) x[i] = static_cast<float>((i * 5) % 7 - 3);
  std::vector<uint16_t> wb(N * K);
  for (int i = 0; i < N * K; ++i) wb[i] = FloatToBf16(wf[i]);
  for (const WeightMatrix& W :
       {WeightMatrix{DType::kF32, wf.data(), N, K}, WeightMatrix{DType::kBF16, wb.data(), N, K}}) {
    std::vector<float> y(T * N);
    MatMul(x.data(), T, W, y.data());
    for (int t = 0; t < T; ++t) {
      for (int n = 0; n < N; ++n) {
        float s = 0;
        for (int k = 0; k < K; ++k) s += x[t * K + k] * wf[n * K + k];
        EXPECT_EQ(y[t * N + n], s) << DTypeName(W.dtype) << " t=" << t << " n=" << n;
      }
    }
  }
}

TEST(MatMul, BitIdenticalAcrossBatchCompositionAndThreadCount) {
  // A row's result does not depend on which other rows share the call or on the thread count.
  const int T = 17;
  const TestWeights w = MakeWeights(DType::kBF16, 130, 100, 3);
  const std::vector<float> x = RandomVec(static_cast<size_t>(T) * 100, 4);
  std::vector<float> all(T * 130), one(130), serial(T * 130);
  MatMul(x.data(), T, w.matrix(), all.data());
  for (int t = 0; t < T; ++t) {
    MatMul(&x[t * 100], 1, w.matrix(), one.data());
    for (int n = 0; n < 130; ++n) ASSERT_EQ(one[n], all[t * 130 + n]) << "t=" << t << " n=" << n;
  }
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  MatMul(x.data(), T, w.matrix(), serial.data());
  omp_set_num_threads(threads);
  EXPECT_EQ(serial, all);
}

// ---------------------------------------------------------------------------------------
// Embedding, RmsNorm, AddInPlace

TEST(Embedding, GathersWidenedRows) {
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (int H : {96, 100, 7}) {
      const TestWeights table = MakeWeights(d, 10, H, 31 + H);
      const std::vector<int32_t> ids = {3, 0, 9, 3, 5};
      std::vector<float> out(ids.size() * H, kNaN);
      Embedding(table.matrix(), ids.data(), static_cast<int>(ids.size()), out.data());
      for (size_t t = 0; t < ids.size(); ++t) {
        for (int i = 0; i < H; ++i) {
          ASSERT_EQ(out[t * H + i], table.ref[ids[t] * H + i])
              << DTypeName(d) << " H=" << H << " t=" << t << " i=" << i;
        }
      }
    }
  }
}

void RefRmsNorm(const std::vector<float>& x, const std::vector<float>& w, int T, int H, double eps,
                std::vector<double>* out) {
  out->resize(x.size());
  for (int t = 0; t < T; ++t) {
    double ss = 0;
    for (int i = 0; i < H; ++i) ss += static_cast<double>(x[t * H + i]) * x[t * H + i];
    const double inv = 1.0 / std::sqrt(ss / H + eps);
    for (int i = 0; i < H; ++i) (*out)[t * H + i] = x[t * H + i] * inv * w[i];
  }
}

TEST(RmsNorm, MatchesReferenceOnOddWidths) {
  for (int H : {96, 100, 4096, 5}) {
    for (int T : {1, 3, 17}) {
      const std::vector<float> x = RandomVec(static_cast<size_t>(T) * H, H + T, -3.0f, 3.0f);
      const std::vector<float> w = RandomVec(H, 9 + H, 0.5f, 1.5f);
      std::vector<double> ref;
      RefRmsNorm(x, w, T, H, 1e-5, &ref);
      std::vector<float> out(x.size(), kNaN);
      RmsNorm(x.data(), w.data(), T, H, 1e-5f, out.data());
      for (size_t i = 0; i < out.size(); ++i) {
        ASSERT_NEAR(out[i], ref[i], 2e-6 * std::abs(ref[i]) + 1e-7)
            << "H=" << H << " T=" << T << " i=" << i;
      }
      // In place gives the same values.
      std::vector<float> inplace = x;
      RmsNorm(inplace.data(), w.data(), T, H, 1e-5f, inplace.data());
      EXPECT_EQ(inplace, out);
    }
  }
}

TEST(RmsNorm, EpsilonMattersForTinyRows) {
  // mean(x^2) = 1e-6 and eps = 1e-6: the scale is 1/sqrt(2e-6), not 1/sqrt(1e-6).
  const int H = 100;
  std::vector<float> x(H, 1e-3f), w(H, 1.0f), out(H);
  RmsNorm(x.data(), w.data(), 1, H, 1e-6f, out.data());
  EXPECT_NEAR(out[0], 1e-3 / std::sqrt(2e-6), 1e-5);
}

TEST(AddInPlace, AddsElementwise) {
  for (int64_t n : {int64_t{1}, int64_t{37}, int64_t{300000}}) {
    std::vector<float> x = RandomVec(n, 1), y = RandomVec(n, 2);
    const std::vector<float> x0 = x;
    AddInPlace(x.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], x0[i] + y[i]) << i;
  }
}

// ---------------------------------------------------------------------------------------
// RoPE

TEST(RopeInvFreq, MatchesFloat32Formula) {
  for (auto [d, theta] : std::vector<std::pair<int, double>>{{24, 10000.0}, {128, 1e6}}) {
    std::vector<float> f(d / 2, kNaN);
    RopeInvFreq(d, theta, f.data());
    EXPECT_EQ(f[0], 1.0f);
    for (int i = 0; i < d / 2; ++i) {
      const double want = 1.0 / std::pow(theta, 2.0 * i / d);
      ASSERT_NEAR(f[i], want, 1e-6 * want) << "d=" << d << " i=" << i;
      if (i > 0) {
        ASSERT_LT(f[i], f[i - 1]);
      }
    }
  }
}

TEST(Rope, RotatesHalvesNotInterleavedPairs) {
  // One head, head_dim 8: a unit vector at index 0 rotates into index 0 and index d/2 = 4
  // (rotate-half), never into index 1 (interleaved).
  const int d = 8;
  std::vector<float> inv(d / 2);
  RopeInvFreq(d, 10000.0, inv.data());
  std::vector<float> x(d, 0.0f);
  x[0] = 1.0f;
  const int32_t pos = 3;
  Rope(x.data(), 1, 1, d, &pos, inv.data());
  EXPECT_NEAR(x[0], std::cos(3.0), 1e-6);
  EXPECT_NEAR(x[4], std::sin(3.0), 1e-6);
  EXPECT_EQ(x[1], 0.0f);
  EXPECT_EQ(x[5], 0.0f);
  // And the upper half rotates back: x[4] = 1 -> x[0] = -sin, x[4] = cos.
  std::vector<float> y(d, 0.0f);
  y[4] = 1.0f;
  Rope(y.data(), 1, 1, d, &pos, inv.data());
  EXPECT_NEAR(y[0], -std::sin(3.0), 1e-6);
  EXPECT_NEAR(y[4], std::cos(3.0), 1e-6);
}

TEST(Rope, MatchesReferenceHeadDim24) {
  for (int n_heads : {4, 1}) {
    const int d = 24, T = 6;
    std::vector<float> inv(d / 2);
    RopeInvFreq(d, 1e6, inv.data());
    const std::vector<int32_t> pos = {0, 1, 7, 100, 4095, 31999};
    std::vector<float> x = RandomVec(static_cast<size_t>(T) * n_heads * d, 3 + n_heads);
    const std::vector<float> x0 = x;
    Rope(x.data(), T, n_heads, d, pos.data(), inv.data());
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < n_heads; ++h) {
        const float* in = &x0[(t * n_heads + h) * d];
        const float* out = &x[(t * n_heads + h) * d];
        for (int i = 0; i < d / 2; ++i) {
          // The angle as the reference forms it: float(pos) * inv_freq in fp32.
          const double a = static_cast<float>(pos[t]) * inv[i];
          const double lo = in[i] * std::cos(a) - in[i + d / 2] * std::sin(a);
          const double hi = in[i + d / 2] * std::cos(a) + in[i] * std::sin(a);
          ASSERT_NEAR(out[i], lo, 2e-6) << "t=" << t << " h=" << h << " i=" << i;
          ASSERT_NEAR(out[i + d / 2], hi, 2e-6) << "t=" << t << " h=" << h << " i=" << i;
        }
      }
    }
    // Position 0 is the identity.
    for (int i = 0; i < n_heads * d; ++i) EXPECT_EQ(x[i], x0[i]);
  }
}

// ---------------------------------------------------------------------------------------
// KV cache and attention

struct AttnCase {
  const char* name;
  int n_heads, n_kv, head_dim, block_size, start_pos, T;
};

class AttentionTest : public testing::TestWithParam<AttnCase> {};

TEST_P(AttentionTest, MatchesReferenceThroughShuffledBlockTable) {
  const AttnCase c = GetParam();
  const int kv_dim = c.n_kv * c.head_dim;
  const int q_dim = c.n_heads * c.head_dim;
  const int ctx = c.start_pos + c.T;
  const int used_blocks = (ctx + c.block_size - 1) / c.block_size;
  const int num_blocks = used_blocks * 2 + 3;

  // A shuffled, non-contiguous block table; every block the table does not list stays NaN,
  // so reading outside the table (or past the context in the last block) poisons the output.
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(c.start_pos * 31 + c.T));
  const std::vector<int32_t> table(perm.begin(), perm.begin() + used_blocks);
  std::vector<float> kc(static_cast<size_t>(num_blocks) * c.block_size * kv_dim, kNaN);
  std::vector<float> vc(kc.size(), kNaN);
  const KvLayer cache{kc.data(), vc.data(), c.block_size, kv_dim};

  // K/V of all positions; earlier steps wrote [0, start_pos), this step writes the rest.
  const std::vector<float> K = RandomVec(static_cast<size_t>(ctx) * kv_dim, 11 + ctx, -2, 2);
  const std::vector<float> V = RandomVec(static_cast<size_t>(ctx) * kv_dim, 12 + ctx);
  if (c.start_pos > 0) KvWrite(cache, table.data(), 0, K.data(), V.data(), c.start_pos);
  KvWrite(cache, table.data(), c.start_pos, &K[c.start_pos * kv_dim], &V[c.start_pos * kv_dim],
          c.T);
  for (int p = 0; p < ctx; ++p) {
    const size_t slot =
        (static_cast<size_t>(table[p / c.block_size]) * c.block_size + p % c.block_size) * kv_dim;
    for (int i = 0; i < kv_dim; ++i) {
      ASSERT_EQ(kc[slot + i], K[p * kv_dim + i]) << "p=" << p;
      ASSERT_EQ(vc[slot + i], V[p * kv_dim + i]) << "p=" << p;
    }
  }

  const std::vector<float> q = RandomVec(static_cast<size_t>(c.T) * q_dim, 13 + c.T, -2, 2);
  const int threads = omp_get_max_threads();
  std::vector<float> scratch(threads * AttentionScratchFloats(ctx), kNaN);
  std::vector<float> out(static_cast<size_t>(c.T) * q_dim, kNaN);
  const AttentionShape shape{c.n_heads, c.n_kv, c.head_dim};
  Attention(q.data(), c.T, c.start_pos, cache, table.data(), shape, out.data(), scratch.data(),
            threads);

  const int group = c.n_heads / c.n_kv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  for (int t = 0; t < c.T; ++t) {
    const int n = c.start_pos + t + 1;  // causal
    for (int h = 0; h < c.n_heads; ++h) {
      const int kvh = h / group;
      std::vector<double> s(n);
      double mx = -1e300;
      for (int j = 0; j < n; ++j) {
        double d = 0;
        for (int i = 0; i < c.head_dim; ++i) {
          d += static_cast<double>(q[t * q_dim + h * c.head_dim + i]) *
               K[j * kv_dim + kvh * c.head_dim + i];
        }
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (double& v : s) sum += (v = std::exp(v - mx));
      for (int i = 0; i < c.head_dim; ++i) {
        double o = 0;
        for (int j = 0; j < n; ++j) o += s[j] / sum * V[j * kv_dim + kvh * c.head_dim + i];
        ASSERT_NEAR(out[t * q_dim + h * c.head_dim + i], o, 2e-5)
            << "t=" << t << " h=" << h << " i=" << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AttentionTest,
    testing::Values(
        // head_dim 24, one KV head shared by 4 query heads.
        AttnCase{"PrefillOneKvHead", 4, 1, 24, 16, 0, 17},
        AttnCase{"DecodeOneKvHead", 4, 1, 24, 16, 40, 1},
        AttnCase{"ChunkedOneKvHead", 4, 1, 24, 16, 23, 9},
        AttnCase{"PrefillGqa2", 4, 2, 24, 16, 0, 3},
        AttnCase{"DecodeAtBlockEdge", 4, 2, 24, 16, 31, 1},
        AttnCase{"SingleToken", 2, 2, 24, 16, 0, 1},
        // Large enough to take the multi-threaded path; head_dim 128 as Mixtral.
        AttnCase{"PrefillMha128", 8, 8, 128, 16, 0, 64},
        AttnCase{"DecodeGqa128", 8, 2, 128, 16, 300, 1},
        AttnCase{"ChunkedGqa128", 8, 2, 128, 16, 100, 17},
        AttnCase{"OddBlockSize", 4, 1, 24, 5, 12, 3}),
    [](const testing::TestParamInfo<AttnCase>& p) { return std::string(p.param.name); });

TEST(Attention, ScratchCoversTheContext) {
  for (int ctx : {1, 16, 17, 4096}) EXPECT_GE(AttentionScratchFloats(ctx), ctx);
}

TEST(Attention, SingleHotKeyPicksItsValue) {
  // A query aligned with one key by a large margin attends (almost) only to it.
  const int d = 24, ctx = 20;
  std::vector<float> kc(2 * 16 * d, 0.0f), vc(kc.size(), 0.0f);
  const std::vector<int32_t> table = {1, 0};
  const KvLayer cache{kc.data(), vc.data(), 16, d};
  std::vector<float> K(ctx * d, 0.0f), V(ctx * d);
  for (int p = 0; p < ctx; ++p)
    for (int i = 0; i < d; ++i) V[p * d + i] = static_cast<float>(p);
  K[13 * d + 2] = 100.0f;
  KvWrite(cache, table.data(), 0, K.data(), V.data(), ctx);
  std::vector<float> q(d, 0.0f);
  q[2] = 10.0f;
  std::vector<float> out(d), scratch(omp_get_max_threads() * AttentionScratchFloats(ctx));
  Attention(q.data(), 1, ctx - 1, cache, table.data(), {1, 1, d}, out.data(), scratch.data(),
            omp_get_max_threads());
  for (int i = 0; i < d; ++i) EXPECT_NEAR(out[i], 13.0f, 1e-4);
}

// ---------------------------------------------------------------------------------------
// Router

void RefRouter(const float* l, int E, int k, std::vector<int32_t>* ex, std::vector<double>* w) {
  double mx = *std::max_element(l, l + E);
  std::vector<double> p(E);
  double sum = 0;
  for (int e = 0; e < E; ++e) sum += (p[e] = std::exp(l[e] - mx));
  for (double& v : p) v /= sum;
  std::vector<int32_t> ids(E);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return p[a] > p[b]; });
  ex->assign(ids.begin(), ids.begin() + k);
  double s = 0;
  for (int j = 0; j < k; ++j) s += p[ids[j]];
  w->resize(k);
  for (int j = 0; j < k; ++j) (*w)[j] = p[ids[j]] / s;
}

TEST(RouterTopK, SixExpertsTopThreeMatchesReference) {
  const int E = 6, k = 3;
  for (int T : {1, 3, 17}) {
    const std::vector<float> logits = RandomVec(static_cast<size_t>(T) * E, 40 + T, -3, 3);
    std::vector<int32_t> ex(T * k, -1);
    std::vector<float> w(T * k, kNaN);
    RouterTopK(logits.data(), T, E, k, ex.data(), w.data());
    for (int t = 0; t < T; ++t) {
      std::vector<int32_t> rex;
      std::vector<double> rw;
      RefRouter(&logits[t * E], E, k, &rex, &rw);
      float sum = 0;
      for (int j = 0; j < k; ++j) {
        EXPECT_EQ(ex[t * k + j], rex[j]) << "t=" << t << " j=" << j;
        EXPECT_NEAR(w[t * k + j], rw[j], 1e-6) << "t=" << t << " j=" << j;
        if (j > 0) {
          EXPECT_GE(w[t * k + j - 1], w[t * k + j]);
        }
        sum += w[t * k + j];
      }
      EXPECT_NEAR(sum, 1.0f, 1e-6);
    }
  }
}

TEST(RouterTopK, TiesGoToTheLowerExpertId) {
  const float l[6] = {1.0f, 3.0f, 3.0f, 0.0f, 3.0f, -1.0f};
  int32_t ex[3];
  float w[3];
  RouterTopK(l, 1, 6, 2, ex, w);
  EXPECT_EQ(ex[0], 1);
  EXPECT_EQ(ex[1], 2);
  EXPECT_FLOAT_EQ(w[0], 0.5f);
  EXPECT_FLOAT_EQ(w[1], 0.5f);
  RouterTopK(l, 1, 6, 3, ex, w);
  EXPECT_EQ((std::vector<int32_t>{ex[0], ex[1], ex[2]}), (std::vector<int32_t>{1, 2, 4}));
  // A tie straddling the cut: the lower id makes it in.
  const float l2[4] = {5.0f, 2.0f, 2.0f, 2.0f};
  RouterTopK(l2, 1, 4, 2, ex, w);
  EXPECT_EQ(ex[0], 0);
  EXPECT_EQ(ex[1], 1);
}

TEST(RouterTopK, RenormalisesTheChosenWeights) {
  // Softmax probabilities proportional to 1, 2, 4, 8 (logits ln 1 .. ln 8), top-2 -> the
  // experts with 8 and 4: weights 8/12 and 4/12, whatever the mass of the others.
  const float l[4] = {0.0f, std::log(2.0f), std::log(4.0f), std::log(8.0f)};
  int32_t ex[2];
  float w[2];
  RouterTopK(l, 1, 4, 2, ex, w);
  EXPECT_EQ(ex[0], 3);
  EXPECT_EQ(ex[1], 2);
  EXPECT_NEAR(w[0], 8.0 / 12.0, 1e-6);
  EXPECT_NEAR(w[1], 4.0 / 12.0, 1e-6);
}

// ---------------------------------------------------------------------------------------
// SwiGLU expert

TEST(SwiGluExpert, MatchesReferenceWithAndWithoutAccumulateScale) {
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (auto [H, F] : std::vector<std::pair<int, int>>{{96, 40}, {100, 64}, {256, 512}}) {
      const TestWeights w1 = MakeWeights(d, F, H, 100 + H, 0.3f);
      const TestWeights w3 = MakeWeights(d, F, H, 200 + H, 0.3f);
      const TestWeights w2 = MakeWeights(d, H, F, 300 + H, 0.3f);
      for (int T : {1, 3, 17}) {
        SCOPED_TRACE(testing::Message() << DTypeName(d) << " H=" << H << " F=" << F << " T=" << T);
        const std::vector<float> x = RandomVec(static_cast<size_t>(T) * H, T + H, -2, 2);
        // Reference in double.
        std::vector<double> ref(static_cast<size_t>(T) * H), mag(ref.size());
        for (int t = 0; t < T; ++t) {
          std::vector<double> h(F);
          for (int f = 0; f < F; ++f) {
            double g = 0, u = 0;
            for (int i = 0; i < H; ++i) {
              g += static_cast<double>(x[t * H + i]) * w1.ref[f * H + i];
              u += static_cast<double>(x[t * H + i]) * w3.ref[f * H + i];
            }
            h[f] = g / (1.0 + std::exp(-g)) * u;
          }
          for (int o = 0; o < H; ++o) {
            double s = 0, m = 0;
            for (int f = 0; f < F; ++f) {
              s += h[f] * w2.ref[o * F + f];
              m += std::abs(h[f] * w2.ref[o * F + f]);
            }
            ref[t * H + o] = s;
            mag[t * H + o] = m;
          }
        }
        std::vector<float> scratch(2 * static_cast<size_t>(T) * F, kNaN);
        std::vector<float> y(static_cast<size_t>(T) * H, kNaN);
        SwiGluExpert(x.data(), T, w1.matrix(), w3.matrix(), w2.matrix(), y.data(), scratch.data());
        for (size_t i = 0; i < y.size(); ++i) {
          ASSERT_NEAR(y[i], ref[i], 2e-5 * mag[i] + 1e-6) << "i=" << i;
        }
        // Accumulating with a per-row scale.
        const std::vector<float> scale = RandomVec(T, 600 + T, 0.1f, 0.9f);
        const std::vector<float> y0 = RandomVec(y.size(), 700 + T);
        std::vector<float> ya = y0;
        SwiGluExpert(x.data(), T, w1.matrix(), w3.matrix(), w2.matrix(), ya.data(), scratch.data(),
                     scale.data());
        for (int t = 0; t < T; ++t) {
          for (int o = 0; o < H; ++o) {
            const size_t i = static_cast<size_t>(t) * H + o;
            ASSERT_NEAR(ya[i], y0[i] + scale[t] * ref[i], 2e-5 * mag[i] + 2e-6) << "i=" << i;
          }
        }
      }
    }
  }
}

// Rows read and written in place through pointers (scattered, reversed, with a stride) give
// exactly the contiguous expert's rows, scaled on the output, overwriting or accumulating.
TEST(SwiGluExpertRows, MatchesContiguousExpertRowForRow) {
  const int H = 70, F = 36;
  const TestWeights w1 = MakeWeights(DType::kBF16, F, H, 11),
                    w3 = MakeWeights(DType::kBF16, F, H, 12),
                    w2 = MakeWeights(DType::kBF16, H, F, 13);
  for (int T : {1, 2, 5, 13}) {
    SCOPED_TRACE(T);
    const int stride = H + 6;  // rows sit in a wider buffer, as in a dispatch receive buffer
    const std::vector<float> x = RandomVec(static_cast<size_t>(T) * H, 20 + T, -2, 2);
    std::vector<float> wide(static_cast<size_t>(T) * stride, kNaN);
    std::vector<const float*> in(T);
    for (int t = 0; t < T; ++t) {
      const int slot = T - 1 - t;  // reversed order
      std::copy(&x[t * H], &x[t * H] + H, &wide[static_cast<size_t>(slot) * stride]);
      in[t] = &wide[static_cast<size_t>(slot) * stride];
    }
    std::vector<float> scratch(2 * static_cast<size_t>(T) * F), ref(static_cast<size_t>(T) * H);
    SwiGluExpert(x.data(), T, w1.matrix(), w3.matrix(), w2.matrix(), ref.data(), scratch.data());
    const std::vector<float> scale = RandomVec(T, 30 + T, 0.1f, 0.9f);
    const std::vector<float> y0 = RandomVec(static_cast<size_t>(T) * 2 * H, 40 + T);
    std::vector<float> y = y0;  // row t at 2t*H: every other row of the buffer
    std::vector<float*> out(T);
    std::vector<uint8_t> acc(T);
    for (int t = 0; t < T; ++t) {
      out[t] = &y[static_cast<size_t>(2 * t) * H];
      acc[t] = t % 2;
    }
    SwiGluExpertRows(in.data(), T, w1.matrix(), w3.matrix(), w2.matrix(), out.data(),
                     scale.data(), acc.data(), scratch.data());
    for (int t = 0; t < T; ++t) {
      for (int o = 0; o < H; ++o) {
        const size_t i = static_cast<size_t>(2 * t) * H + o;
        const float want = acc[t] ? y0[i] + scale[t] * ref[t * H + o] : scale[t] * ref[t * H + o];
        ASSERT_FLOAT_EQ(y[i], want) << "t=" << t << " o=" << o;
        ASSERT_EQ(y[i + H], y0[i + H]) << "row between outputs written";
      }
    }
    // No scale, no accumulation: the contiguous result exactly.
    SwiGluExpertRows(in.data(), T, w1.matrix(), w3.matrix(), w2.matrix(), out.data(), nullptr,
                     nullptr, scratch.data());
    for (int t = 0; t < T; ++t) {
      for (int o = 0; o < H; ++o) ASSERT_EQ(y[static_cast<size_t>(2 * t) * H + o], ref[t * H + o]);
    }
  }
}

TEST(SwiGluExpert, BitIdenticalAcrossThreadCount) {
  const int H = 100, F = 40, T = 17;
  const TestWeights w1 = MakeWeights(DType::kBF16, F, H, 1),
                    w3 = MakeWeights(DType::kBF16, F, H, 2),
                    w2 = MakeWeights(DType::kBF16, H, F, 3);
  const std::vector<float> x = RandomVec(static_cast<size_t>(T) * H, 4, -2, 2);
  std::vector<float> scratch(2 * T * F), a(T * H), b(T * H);
  SwiGluExpert(x.data(), T, w1.matrix(), w3.matrix(), w2.matrix(), a.data(), scratch.data());
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  SwiGluExpert(x.data(), T, w1.matrix(), w3.matrix(), w2.matrix(), b.data(), scratch.data());
  omp_set_num_threads(threads);
  EXPECT_EQ(a, b);
}

TEST(SwiGluExpert, SiluOfLargeMagnitudes) {
  // H = 1, x = 1, F = 16 gate values c_f (exact in bf16), w3 = 1, w2 one-hot at f:
  // y = silu(c_f), through the vectorised path (16 lanes) and the scalar one.
  const std::vector<float> c = {-100, -90, -50, -20, -5, -1, -0.5f, 0,
                                0.5f, 1,   2,   5,   20, 30, 50,    88};
  const int F = static_cast<int>(c.size());
  std::vector<uint16_t> g(F), u(F, FloatToBf16(1.0f));
  for (int f = 0; f < F; ++f) g[f] = FloatToBf16(c[f]);
  const WeightMatrix w1{DType::kBF16, g.data(), F, 1}, w3{DType::kBF16, u.data(), F, 1};
  const float x = 1.0f;
  std::vector<float> scratch(2 * F);
  for (int f = 0; f < F; ++f) {
    std::vector<uint16_t> down(F, 0);
    down[f] = FloatToBf16(1.0f);
    const WeightMatrix w2{DType::kBF16, down.data(), 1, F};
    float y = kNaN;
    SwiGluExpert(&x, 1, w1, w3, w2, &y, scratch.data());
    const double want = c[f] / (1.0 + std::exp(-static_cast<double>(c[f])));
    EXPECT_NEAR(y, want, 1e-6 * std::abs(want) + 1e-30) << "c=" << c[f];
  }
}

TEST(Ops, DoNotAllocate) {
  const int T = 17, H = 100, F = 40, E = 6, k = 3, heads = 4, kv = 1, d = 24, bs = 16;
  const TestWeights w1 = MakeWeights(DType::kBF16, F, H, 1), w3 = MakeWeights(DType::kF16, F, H, 2),
                    w2 = MakeWeights(DType::kF32, H, F, 3), wr = MakeWeights(DType::kBF16, E, H, 4),
                    emb = MakeWeights(DType::kBF16, 50, H, 5);
  const std::vector<float> x = RandomVec(T * H, 6), gamma(H, 1.0f);
  std::vector<float> y(T * H), scratch(2 * T * F), logits(T * E), weights(T * k), inv(d / 2);
  std::vector<int32_t> experts(T * k), ids(T, 7), pos(T), table = {2, 0};
  for (int t = 0; t < T; ++t) pos[t] = t;
  std::vector<float> q(T * heads * d, 0.5f), kvv(T * kv * d, 0.25f), kc(3 * bs * kv * d);
  std::vector<float> vc(kc.size()), out(q.size());
  std::vector<float> attn_scratch(omp_get_max_threads() * AttentionScratchFloats(T));
  const KvLayer cache{kc.data(), vc.data(), bs, kv * d};

  const int64_t before = testing_alloc::NewCalls();
  Embedding(emb.matrix(), ids.data(), T, y.data());
  RmsNorm(x.data(), gamma.data(), T, H, 1e-5f, y.data());
  MatMul(x.data(), T, wr.matrix(), logits.data());
  RouterTopK(logits.data(), T, E, k, experts.data(), weights.data());
  SwiGluExpert(x.data(), T, w1.matrix(), w3.matrix(), w2.matrix(), y.data(), scratch.data(),
               weights.data());
  RopeInvFreq(d, 1e6, inv.data());
  Rope(q.data(), T, heads, d, pos.data(), inv.data());
  KvWrite(cache, table.data(), 0, kvv.data(), kvv.data(), T);
  Attention(q.data(), T, 0, cache, table.data(), {heads, kv, d}, out.data(), attn_scratch.data(),
            omp_get_max_threads());
  AddInPlace(y.data(), x.data(), T * H);
  EXPECT_EQ(testing_alloc::NewCalls(), before);
  // The calls did their work (constant V of 0.25 gives 0.25 out of every head).
  EXPECT_FLOAT_EQ(out[5], 0.25f);
}

}  // namespace
}  // namespace switchyard::cpu
