#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

// Counts operator new calls so tests can assert that sampling (once sized) and the ops
// (ops_test.cc) do not allocate.
namespace {
std::atomic<int64_t> g_new_calls{0};
}  // namespace
namespace switchyard::testing_alloc {
int64_t NewCalls() { return g_new_calls.load(); }
}  // namespace switchyard::testing_alloc

// malloc/free pairs are matched here; GCC flags free() on operator new's result once inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  g_new_calls.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  g_new_calls.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace switchyard {
namespace {

std::vector<float> RandomLogits(int n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// The sampling rule written out directly: full stable sort, no laziness.
int32_t ReferenceSample(const std::vector<float>& logits, const SamplingParams& p, uint64_t step) {
  const int V = static_cast<int>(logits.size());
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  const float inv_t = 1.0f / p.temperature;
  std::vector<float> z(V);
  for (int i = 0; i < V; ++i) z[i] = logits[i] * inv_t;
  std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return z[a] > z[b]; });
  const int n = (p.top_k > 0 && p.top_k < V) ? p.top_k : V;
  float mx = z[ids[0]];
  double sum = 0;
  std::vector<float> pr(V, 0.0f);
  for (int i = 0; i < n; ++i) sum += (pr[ids[i]] = std::exp(z[ids[i]] - mx));
  const float inv_sum = static_cast<float>(1.0 / sum);
  for (int i = 0; i < n; ++i) pr[ids[i]] *= inv_sum;
  std::stable_sort(ids.begin(), ids.begin() + n, [&](int a, int b) { return pr[a] > pr[b]; });
  int prefix = n;
  double mass = 0;
  if (p.top_p < 1.0f) {
    prefix = 0;
    while (prefix < n) {
      mass += pr[ids[prefix++]];
      if (mass >= p.top_p) break;
    }
  } else {
    for (int i = 0; i < n; ++i) mass += pr[ids[i]];
  }
  const double target = UniformFromCounter(p.seed, step) * mass;
  double cum = 0;
  for (int i = 0; i < prefix; ++i) {
    cum += pr[ids[i]];
    if (cum > target) return ids[i];
  }
  return ids[prefix - 1];
}

std::vector<double> Softmax(const std::vector<float>& l, double temperature) {
  std::vector<double> p(l.size());
  double mx = *std::max_element(l.begin(), l.end()), s = 0;
  for (size_t i = 0; i < l.size(); ++i) s += (p[i] = std::exp((l[i] - mx) / temperature));
  for (double& v : p) v /= s;
  return p;
}

std::vector<double> Frequencies(const std::vector<float>& logits, const SamplingParams& p,
                                int steps) {
  SamplingScratch scratch;
  std::vector<double> f(logits.size(), 0.0);
  for (int s = 0; s < steps; ++s) {
    f[SampleToken(logits.data(), static_cast<int>(logits.size()), p, s, &scratch)] += 1.0;
  }
  for (double& v : f) v /= steps;
  return f;
}

TEST(Sampling, GreedyIsArgmaxWithTiesToLowestId) {
  SamplingScratch scratch;
  const std::vector<float> l = {1.0f, 5.0f, -2.0f, 5.0f, 4.9f};
  for (uint64_t step = 0; step < 5; ++step) {
    EXPECT_EQ(SampleToken(l.data(), 5, {.temperature = 0.0f, .seed = step}, step, &scratch), 1);
  }
  const std::vector<float> l2 = {-3.0f, -1.0f, -2.0f};
  EXPECT_EQ(SampleToken(l2.data(), 3, {}, 0, &scratch), 1);
}

TEST(Sampling, SameSeedAndStepGiveTheSameToken) {
  const std::vector<float> l = RandomLogits(1000, 1, 1.0f);
  const SamplingParams p{.temperature = 1.0f, .top_k = 50, .top_p = 0.9f, .seed = 1234};
  SamplingScratch a, b;
  int distinct = 0;
  int32_t first = -1;
  for (uint64_t step = 0; step < 100; ++step) {
    const int32_t x = SampleToken(l.data(), 1000, p, step, &a);
    EXPECT_EQ(x, SampleToken(l.data(), 1000, p, step, &b)) << "step " << step;
    EXPECT_EQ(x, SampleToken(l.data(), 1000, p, step, &a)) << "step " << step;
    if (first < 0) first = x;
    if (x != first) ++distinct;
  }
  EXPECT_GT(distinct, 10);  // and the draws do vary from step to step
}

TEST(Sampling, DifferentSeedsGiveDifferentDraws) {
  const std::vector<float> l(1000, 0.0f);  // uniform: two streams agree w.p. 1/1000 per step
  SamplingScratch scratch;
  int same = 0;
  for (uint64_t step = 0; step < 500; ++step) {
    const int32_t a = SampleToken(l.data(), 1000, {.temperature = 1.0f, .seed = 1}, step, &scratch);
    const int32_t b = SampleToken(l.data(), 1000, {.temperature = 1.0f, .seed = 2}, step, &scratch);
    same += a == b;
  }
  EXPECT_LT(same, 10);
}

TEST(Sampling, TopKOneEqualsGreedy) {
  SamplingScratch scratch;
  for (uint32_t s = 0; s < 50; ++s) {
    const std::vector<float> l = RandomLogits(777, 100 + s, 2.0f);
    const int32_t greedy = SampleToken(l.data(), 777, {}, s, &scratch);
    EXPECT_EQ(greedy, std::max_element(l.begin(), l.end()) - l.begin());
    EXPECT_EQ(SampleToken(l.data(), 777, {.temperature = 1.5f, .top_k = 1, .seed = s}, s, &scratch),
              greedy);
  }
}

TEST(Sampling, TinyTopPEqualsGreedy) {
  SamplingScratch scratch;
  for (uint32_t s = 0; s < 50; ++s) {
    const std::vector<float> l = RandomLogits(777, 200 + s, 2.0f);
    const int32_t greedy = SampleToken(l.data(), 777, {}, s, &scratch);
    EXPECT_EQ(
        SampleToken(l.data(), 777, {.temperature = 1.0f, .top_p = 1e-6f, .seed = s}, s, &scratch),
        greedy);
  }
}

TEST(Sampling, EmpiricalDistributionMatchesSoftmax) {
  const std::vector<float> l = {0.0f, 1.0f, 2.0f, 0.5f};
  const std::vector<double> want = Softmax(l, 1.0);
  const std::vector<double> got = Frequencies(l, {.temperature = 1.0f, .seed = 42}, 20000);
  for (int i = 0; i < 4; ++i) {
    // Binomial sd <= 0.0035 at 20k draws.
    EXPECT_NEAR(got[i], want[i], 0.015) << "token " << i;
  }
}

TEST(Sampling, TemperatureSharpensAndFlattens) {
  const std::vector<float> l = {0.0f, 1.0f, 2.0f, 0.5f};
  for (float temp : {0.5f, 2.0f}) {
    const std::vector<double> want = Softmax(l, temp);
    const std::vector<double> got = Frequencies(l, {.temperature = temp, .seed = 9}, 20000);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(got[i], want[i], 0.015) << "T=" << temp << " " << i;
  }
}

TEST(Sampling, TopKRestrictsAndRenormalises) {
  const std::vector<float> l = {0.0f, 1.0f, 2.0f, 0.5f};
  const std::vector<double> got =
      Frequencies(l, {.temperature = 1.0f, .top_k = 2, .seed = 5}, 20000);
  const double e1 = std::exp(1.0), e2 = std::exp(2.0);
  EXPECT_EQ(got[0], 0.0);
  EXPECT_EQ(got[3], 0.0);
  EXPECT_NEAR(got[2], e2 / (e1 + e2), 0.015);
  EXPECT_NEAR(got[1], e1 / (e1 + e2), 0.015);
}

TEST(Sampling, TopKTiesKeepTheLowerIds) {
  const std::vector<float> l(50, 0.25f);
  SamplingScratch scratch;
  std::vector<int> seen(50, 0);
  for (uint64_t s = 0; s < 3000; ++s) {
    ++seen[SampleToken(l.data(), 50, {.temperature = 1.0f, .top_k = 3, .seed = 3}, s, &scratch)];
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(seen[i] / 3000.0, 1.0 / 3, 0.04) << i;
  for (int i = 3; i < 50; ++i) EXPECT_EQ(seen[i], 0) << i;
}

TEST(Sampling, TopPKeepsTheSmallestNucleus) {
  // p = .579 (id 2), .213 (id 1), .129 (id 3), .078 (id 0): top_p 0.7 keeps {2, 1} (cumulative
  // .792); 0.5 keeps {2} alone; 0.79 still {2, 1}; 0.8 adds id 3.
  const std::vector<float> l = {0.0f, 1.0f, 2.0f, 0.5f};
  const std::vector<double> p = Softmax(l, 1.0);
  std::vector<double> got = Frequencies(l, {.temperature = 1.0f, .top_p = 0.7f, .seed = 8}, 20000);
  EXPECT_EQ(got[0], 0.0);
  EXPECT_EQ(got[3], 0.0);
  EXPECT_NEAR(got[2], p[2] / (p[1] + p[2]), 0.015);
  got = Frequencies(l, {.temperature = 1.0f, .top_p = 0.5f, .seed = 8}, 2000);
  EXPECT_EQ(got[2], 1.0);
  got = Frequencies(l, {.temperature = 1.0f, .top_p = 0.8f, .seed = 8}, 20000);
  EXPECT_EQ(got[0], 0.0);
  EXPECT_GT(got[3], 0.1);
  EXPECT_NEAR(got[3], p[3] / (p[1] + p[2] + p[3]), 0.015);
}

TEST(Sampling, MatchesFullSortReference) {
  // The lazy partial sort must pick exactly what the written-out rule picks.
  SamplingScratch scratch;
  const std::vector<SamplingParams> params = {
      {.temperature = 1.0f, .seed = 1},
      {.temperature = 0.7f, .top_k = 40, .seed = 2},
      {.temperature = 1.3f, .top_p = 0.9f, .seed = 3},
      {.temperature = 0.9f, .top_k = 200, .top_p = 0.95f, .seed = 4},
      {.temperature = 2.0f, .top_k = 4999, .top_p = 0.5f, .seed = 5},
  };
  for (size_t pi = 0; pi < params.size(); ++pi) {
    for (uint32_t s = 0; s < 40; ++s) {
      const std::vector<float> l = RandomLogits(5000, 1000 * pi + s, 1.0f + 0.1f * s);
      ASSERT_EQ(SampleToken(l.data(), 5000, params[pi], s, &scratch),
                ReferenceSample(l, params[pi], s))
          << "params " << pi << " step " << s;
    }
  }
}

TEST(Sampling, DoesNotAllocateOnceSized) {
  const std::vector<float> l = RandomLogits(32000, 7, 3.0f);
  SamplingScratch scratch;
  const SamplingParams p{.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 1};
  SampleToken(l.data(), 32000, p, 0, &scratch);  // sizes the scratch
  const int64_t before = g_new_calls.load();
  int64_t sum = 0;
  for (uint64_t s = 1; s < 50; ++s) {
    sum += SampleToken(l.data(), 32000, p, s, &scratch);
    sum += SampleToken(l.data(), 32000, {.temperature = 1.0f, .top_p = 0.9f}, s, &scratch);
    sum += SampleToken(l.data(), 32000, {.temperature = 1.0f}, s, &scratch);
  }
  EXPECT_EQ(g_new_calls.load(), before);
  EXPECT_GT(sum, 0);
}

TEST(UniformFromCounter, IsDeterministicUniformAndKeyedBySeed) {
  EXPECT_EQ(UniformFromCounter(5, 17), UniformFromCounter(5, 17));
  EXPECT_NE(UniformFromCounter(5, 17), UniformFromCounter(6, 17));
  EXPECT_NE(UniformFromCounter(5, 17), UniformFromCounter(5, 18));
  EXPECT_NE(UniformFromCounter(0, 1), UniformFromCounter(1, 0));
  double sum = 0;
  int below_tenth = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double u = UniformFromCounter(99, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    below_tenth += u < 0.1;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_NEAR(below_tenth / static_cast<double>(n), 0.1, 0.005);
}

}  // namespace
}  // namespace switchyard

namespace switchyard {
namespace {

TEST(Sampling, LogprobsAreTheLogSoftmaxOfTheRawLogits) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};
  double z = 0;
  for (float l : logits) z += std::exp(static_cast<double>(l));
  SamplingScratch scratch;
  std::vector<TokenLogprob> top;
  const float lp = TokenLogprobs(logits.data(), 5, 4, 3, &top, &scratch);
  EXPECT_NEAR(lp, 0.5 - std::log(z), 1e-5);
  ASSERT_EQ(top.size(), 3u);
  // Descending, ties to the lower id.
  EXPECT_EQ(top[0].id, 1);
  EXPECT_EQ(top[1].id, 3);
  EXPECT_EQ(top[2].id, 0);
  EXPECT_NEAR(top[0].logprob, 3.0 - std::log(z), 1e-5);
  EXPECT_NEAR(top[2].logprob, 1.0 - std::log(z), 1e-5);
  double mass = 0;
  for (int i = 0; i < 5; ++i) {
    mass += std::exp(TokenLogprobs(logits.data(), 5, i, 0, &top, &scratch));
  }
  EXPECT_NEAR(mass, 1.0, 1e-5);
  EXPECT_TRUE(top.empty());
  // Large logits do not overflow (the maximum is subtracted).
  const std::vector<float> big = {1000.0f, 999.0f};
  EXPECT_NEAR(TokenLogprobs(big.data(), 2, 0, 0, &top, &scratch), -std::log1p(std::exp(-1.0)), 1e-5);
}

}  // namespace
}  // namespace switchyard
