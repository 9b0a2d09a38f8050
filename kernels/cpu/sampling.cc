// Seeded token sampling: greedy, temperature, top-k, top-p.
//
// Order of operations for temperature > 0:
//   1. z = logits / temperature
//   2. top-k (k > 0 and k < vocab): keep the k largest z, ties to the lower id
//   3. p = softmax(z) over the kept tokens (fp32, max-subtracted, sum in double)
//   4. sort kept tokens by p descending, ties by ascending id
//   5. top-p (< 1): keep the smallest prefix whose cumulative p reaches top_p
//   6. draw u = UniformFromCounter(seed, step); return the first token of the prefix whose
//      cumulative p exceeds u * (prefix mass)
// Step 4 is done lazily: the sorted prefix is grown (doubling; select, then sort) until it holds
// the top-p cut and the draw, so a peaked distribution never sorts the whole vocabulary. The
// comparator is a strict total order, so the result equals that of a full sort.
#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace switchyard {
namespace {

uint64_t SplitMix64(uint64_t x) {
  uint64_t z = x + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int32_t Argmax(const float* logits, int vocab) {
  int32_t best = 0;
  for (int i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

}  // namespace

double UniformFromCounter(uint64_t seed, uint64_t step) {
  const uint64_t h = SplitMix64(SplitMix64(seed) ^ step);
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

int32_t SampleToken(const float* logits, int vocab, const SamplingParams& params, uint64_t step,
                    SamplingScratch* scratch) {
  if (vocab <= 1) return 0;
  if (!(params.temperature > 0.0f)) return Argmax(logits, vocab);
  if (params.top_k == 1) return Argmax(logits, vocab);

  // The only allocation: sized on first use (or a larger vocabulary).
  if (scratch->ids.size() < static_cast<size_t>(vocab)) scratch->ids.resize(vocab);
  if (scratch->probs.size() < static_cast<size_t>(vocab)) scratch->probs.resize(vocab);
  int32_t* ids = scratch->ids.data();
  float* z = scratch->probs.data();  // scaled logits, then probabilities, indexed by token id

  const float inv_t = 1.0f / params.temperature;
  for (int i = 0; i < vocab; ++i) {
    z[i] = logits[i] * inv_t;
    ids[i] = i;
  }

  int n = vocab;  // kept tokens: ids[0, n)
  if (params.top_k > 0 && params.top_k < vocab) {
    n = params.top_k;
    std::nth_element(ids, ids + n - 1, ids + vocab,
                     [z](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
  }

  float max = -INFINITY;
  for (int i = 0; i < n; ++i) max = std::max(max, z[ids[i]]);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    const float e = std::exp(z[ids[i]] - max);
    z[ids[i]] = e;
    sum += e;
  }
  const float inv_sum = static_cast<float>(1.0 / sum);
  for (int i = 0; i < n; ++i) z[ids[i]] *= inv_sum;

  auto by_prob = [z](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
  const double u = UniformFromCounter(params.seed, step);
  const bool nucleus = params.top_p < 1.0f;
  const double top_p = params.top_p;

  // Walk the sorted order; `sorted` is how much of ids[0, n) is known to be in order.
  int sorted = 0;
  auto ensure_sorted = [&](int upto) {
    if (upto <= sorted) return;
    const int m = std::min(n, std::max(upto, 2 * sorted + 64));
    // Select the next (m - sorted) tokens in O(n), then order just those.
    if (m < n) std::nth_element(ids + sorted, ids + m - 1, ids + n, by_prob);
    std::sort(ids + sorted, ids + m, by_prob);
    sorted = m;
  };

  // Prefix length: the whole kept set, or the top-p cut.
  int prefix = n;
  double mass = 0.0;
  if (nucleus) {
    double cum = 0.0;
    prefix = 0;
    while (prefix < n) {
      ensure_sorted(prefix + 1);
      cum += z[ids[prefix]];
      ++prefix;
      if (cum >= top_p) break;
    }
    mass = cum;
  } else {
    for (int i = 0; i < n; ++i) mass += z[ids[i]];
  }

  const double target = u * mass;
  double cum = 0.0;
  for (int i = 0; i < prefix; ++i) {
    ensure_sorted(i + 1);
    cum += z[ids[i]];
    if (cum > target) return ids[i];
  }
  ensure_sorted(prefix);
  return ids[prefix - 1];
}

float TokenLogprobs(const float* logits, int vocab, int32_t token, int top,
                    std::vector<TokenLogprob>* top_out, SamplingScratch* scratch) {
  float max = logits[0];
  for (int i = 1; i < vocab; ++i) max = std::max(max, logits[i]);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - max));
  // log p[i] = (logits[i] - max) - log(sum): subtracting first keeps the precision that
  // max + log(sum) would lose at large logits.
  const float log_sum = static_cast<float>(std::log(sum));
  top_out->clear();
  top = std::clamp(top, 0, vocab);
  if (top > 0) {
    std::vector<int32_t>& ids = scratch->ids;
    ids.resize(vocab);
    for (int i = 0; i < vocab; ++i) ids[i] = i;
    auto before = [logits](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    std::partial_sort(ids.begin(), ids.begin() + top, ids.end(), before);
    for (int k = 0; k < top; ++k) top_out->push_back({ids[k], (logits[ids[k]] - max) - log_sum});
  }
  return (logits[token] - max) - log_sum;
}

}  // namespace switchyard
