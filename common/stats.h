// Order statistics of samples, shared by the benchmarks, preflight and the simulator.
//
//   double m = Median(samples);                  // middle, or mean of the two middles
//   std::sort(v.begin(), v.end());
//   double p99 = NearestRank(v, 0.99);           // the ceil(0.99 n)-th smallest
#pragma once

#include <vector>

namespace switchyard {

// The median: the middle sample, or the mean of the two middle ones; 0 for none.
double Median(std::vector<double> v);

// Nearest-rank quantile of `sorted` samples (ascending), q in [0, 1]: the ceil(q n)-th
// smallest (the smallest for q = 0). `sorted` must not be empty.
double NearestRank(const std::vector<double>& sorted, double q);

}  // namespace switchyard
