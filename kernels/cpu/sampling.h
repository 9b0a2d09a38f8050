// Token sampling from logits: greedy, temperature, top-k, top-p, seeded.
//
//   SamplingParams p{.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 7};
//   int32_t tok = SampleToken(logits, vocab, p, /*step=*/i, &scratch);
//
// The draw is a pure function of (logits, params, step): the random number for a step comes
// from a counter-based generator keyed by (seed, step), so any rank, any batch composition
// and any replay reproduce the same token.
#pragma once

#include <cstdint>
#include <vector>

namespace switchyard {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, ties to the lowest id)
  int top_k = 0;             // 0: no top-k filter
  float top_p = 1.0f;        // 1: no nucleus filter; otherwise keep the smallest prefix of
                             // the sorted distribution whose mass reaches top_p
  uint64_t seed = 0;
};

// Reusable buffers so sampling does not allocate per step once sized.
struct SamplingScratch {
  std::vector<int32_t> ids;
  std::vector<float> probs;
};

// Returns the chosen token id in [0, vocab). temperature <= 0 or top_k == 1: argmax. Otherwise:
// z = logits / temperature; top-k keeps the k largest z (ties to the lower id); p = softmax(z)
// over the kept tokens (fp32, max-subtracted); tokens ordered by p descending, ties by
// ascending id; top-p keeps the smallest prefix of that order whose cumulative p >= top_p;
// u = UniformFromCounter(seed, step) picks the first token of the prefix whose cumulative p
// exceeds u * (prefix mass). Allocates only to size `scratch` on first use for a vocabulary.
int32_t SampleToken(const float* logits, int vocab, const SamplingParams& params, uint64_t step,
                    SamplingScratch* scratch);

// One token's log-probability.
struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
};

// Log-probabilities of the model's distribution p = softmax(logits) (before temperature,
// top-k and top-p, as vLLM reports them by default), in fp32 with the maximum subtracted:
// returns log p[token], and writes the `top` most likely ids (descending, ties to the lower
// id; top <= vocab) to `*top_out`. `token` must be in [0, vocab). Uses `scratch`.
float TokenLogprobs(const float* logits, int vocab, int32_t token, int top,
                    std::vector<TokenLogprob>* top_out, SamplingScratch* scratch);

// A uniform double in [0, 1) from (seed, step): splitmix64 of the pair,
// h = SplitMix64(SplitMix64(seed) ^ step), u = (h >> 11) * 2^-53.
double UniformFromCounter(uint64_t seed, uint64_t step);

}  // namespace switchyard
