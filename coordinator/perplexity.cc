#include "coordinator/perplexity.h"

#include <algorithm>
#include <cmath>

namespace switchyard {

void PerplexityAccumulator::Add(int first, int rows, const float* logits) {
  for (int r = 0; r < rows; ++r) {
    const int pos = first + r;
    if (pos + 1 >= static_cast<int>(tokens_.size())) continue;
    const float* row = logits + static_cast<size_t>(r) * vocab_;
    double mx = row[0];
    for (int v = 1; v < vocab_; ++v) mx = std::max<double>(mx, row[v]);
    double sum = 0;
    for (int v = 0; v < vocab_; ++v) sum += std::exp(row[v] - mx);
    nll_ += (mx + std::log(sum)) - row[tokens_[pos + 1]];
    ++count_;
  }
}

double PerplexityAccumulator::perplexity() const {
  return count_ == 0 ? 0.0 : std::exp(nll_ / count_);
}

}  // namespace switchyard
