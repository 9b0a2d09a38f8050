// The GPU path's tolerances against fp32 references, shared by the GPU tests
// (worker/cuda_executor_test.cc explains where they come from: worker/cuda_numerics_test.cc's
// emulation of the GPU's bf16 rounding on the CPU).
#pragma once

namespace switchyard::cuda_test {

// Max |logit - reference| per position...
inline constexpr float kLogitTol = 7.5e-2f;
// ...allowed to be exceeded at this fraction of positions (router near-ties under bf16).
inline constexpr double kOutlierFraction = 0.03;
// A greedy divergence is accepted where the fixture's token is within this of the choice.
inline constexpr float kTieTol = 5e-2f;

}  // namespace switchyard::cuda_test
