// Perplexity of a token sequence from its logits, accumulated chunk by chunk:
// exp(mean cross-entropy of predicting tokens[1..T-1] from their prefixes), in double.
//
//   PerplexityAccumulator acc(tokens, vocab);
//   runner.Score(tokens, [&](int first, int rows, const float* l) { acc.Add(first, rows, l); });
//   double ppl = acc.perplexity();
#pragma once

#include <cstdint>
#include <span>

namespace switchyard {

class PerplexityAccumulator {
 public:
  PerplexityAccumulator(std::span<const int32_t> tokens, int vocab)
      : tokens_(tokens), vocab_(vocab) {}
  // logits: [rows, vocab] for positions first .. first+rows-1.
  void Add(int first, int rows, const float* logits);
  int count() const { return count_; }
  double perplexity() const;

 private:
  std::span<const int32_t> tokens_;
  int vocab_;
  double nll_ = 0;
  int count_ = 0;
};

}  // namespace switchyard
