#include "common/memory_bandwidth.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

namespace switchyard {

double MeasureCopyBandwidth(size_t bytes, int reps) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
    {
      const size_t n = omp_get_num_threads(), i = omp_get_thread_num();
      const size_t chunk = (bytes + n - 1) / n;
      const size_t begin = std::min(bytes, i * chunk), end = std::min(bytes, begin + chunk);
      std::memcpy(dst.data() + begin, src.data() + begin, end - begin);
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * bytes / secs);
  }
  return best;
}

}  // namespace switchyard
