// Measures this machine's memory-copy bandwidth, the bound CPU benchmarks print beside their
// achieved weight-read bandwidth.
#pragma once

#include <cstddef>

namespace switchyard {

// Copies a `bytes`-sized buffer (well beyond the last-level cache by default) with all OpenMP
// threads, `reps` times, and returns the best rate in bytes/s counted STREAM-style: bytes
// read plus bytes written.
double MeasureCopyBandwidth(size_t bytes = size_t{512} << 20, int reps = 5);

}  // namespace switchyard
