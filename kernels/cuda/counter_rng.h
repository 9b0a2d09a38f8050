// The counter-based uniform draw used by token sampling, shared by host and device code.
//
//   double u = CounterUniform(seed, step);   // in [0, 1), a pure function of (seed, step)
//
// This must stay bit-identical to switchyard::UniformFromCounter (kernels/cpu/sampling.h):
// the CUDA sampler and the CPU sampler draw the same number for the same (seed, step), so a
// request reproduces across devices. kernels/cuda/ops_test.cc checks the two agree (on the
// host, no GPU needed).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SY_HOST_DEVICE __host__ __device__
#else
#define SY_HOST_DEVICE
#endif

namespace switchyard::cuda {

// splitmix64 finaliser (Steele, Lea, Flood 2014) of x + golden gamma.
SY_HOST_DEVICE inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// splitmix64 of the pair: the seed is mixed first so that nearby seeds give unrelated
// streams, then the step is folded in and mixed again. The top 53 bits make the double.
SY_HOST_DEVICE inline double CounterUniform(uint64_t seed, uint64_t step) {
  const uint64_t z = SplitMix64(SplitMix64(seed) ^ step);
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

}  // namespace switchyard::cuda
