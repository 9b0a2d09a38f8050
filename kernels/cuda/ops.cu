// Elementwise, normalisation, router, MoE permutation and sampling kernels, then their
// launchers. Kernels take one params struct by value and know nothing of runtime classes.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/counter_rng.h"
#include "kernels/cuda/ops.h"

namespace switchyard::cuda {
namespace {

using detail::bf162;
using detail::BlockMax;
using detail::BlockSum;
using detail::CeilDiv;
using detail::ToBf;
using detail::ToF;
using detail::WarpSum;

// =============================================================================================
// Kernels
// =============================================================================================

// One block per token.
__global__ void EmbeddingKernel(EmbeddingParams p) {
  const int t = blockIdx.x;
  const bf16* src = p.table + static_cast<int64_t>(p.ids[t]) * p.hidden;
  float* dst = p.out + static_cast<int64_t>(t) * p.hidden;
  for (int i = threadIdx.x; i < p.hidden; i += blockDim.x) dst[i] = ToF(src[i]);
}

// One block per output row. Each thread re-reads only the x entries it wrote itself.
__global__ void AddRmsNormKernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const int i = blockIdx.x;
  const int64_t r = p.rows != nullptr ? p.rows[i] : i;
  float* x = p.x + r * p.hidden;
  const float* res = p.residual != nullptr ? p.residual + r * p.hidden : nullptr;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < p.hidden; j += blockDim.x) {
    float v = x[j];
    if (res != nullptr) {
      v += res[j];
      x[j] = v;
    }
    ss += v * v;
  }
  ss = BlockSum(ss, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(p.hidden) + p.eps);
  bf16* out = p.out + static_cast<int64_t>(i) * p.hidden;
  float* out_f32 = p.out_f32 != nullptr ? p.out_f32 + static_cast<int64_t>(i) * p.hidden : nullptr;
  for (int j = threadIdx.x; j < p.hidden; j += blockDim.x) {
    const float y = x[j] * inv * p.weight[j];
    out[j] = ToBf(y);
    if (out_f32 != nullptr) out_f32[j] = y;
  }
}

// One block per token; threads over (head, i < head_dim / 2).
__global__ void RopeKernel(RopeParams p) {
  const int t = blockIdx.x;
  const int half = p.head_dim / 2;
  const float pos = static_cast<float>(p.positions[t]);
  float* row = p.x + t * p.row_stride;
  for (int idx = threadIdx.x; idx < p.num_heads * half; idx += blockDim.x) {
    const int h = idx / half;
    const int i = idx - h * half;
    float s, c;
    sincosf(pos * p.inv_freq[i], &s, &c);
    float* xh = row + static_cast<int64_t>(h) * p.head_dim;
    const float x1 = xh[i];
    const float x2 = xh[i + half];
    xh[i] = x1 * c - x2 * s;
    xh[i + half] = x2 * c + x1 * s;
  }
}

// One block per token.
__global__ void KvWriteKernel(KvWriteParams p) {
  const int t = blockIdx.x;
  const int slot = p.slot_mapping[t];
  if (slot < 0) return;
  const float* k = p.k + t * p.row_stride;
  const float* v = p.v + t * p.row_stride;
  bf16* kd = p.cache.k + static_cast<int64_t>(slot) * p.cache.kv_dim;
  bf16* vd = p.cache.v + static_cast<int64_t>(slot) * p.cache.kv_dim;
  for (int j = threadIdx.x; j < p.cache.kv_dim; j += blockDim.x) {
    kd[j] = ToBf(k[j]);
    vd[j] = ToBf(v[j]);
  }
}

// Grid-stride over rows * ffn.
__global__ void SiluGateKernel(SiluGateParams p) {
  const int64_t n = p.rows * p.ffn;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / p.ffn;
    const int j = static_cast<int>(idx - r * p.ffn);
    const bf16* h = p.h + r * 2 * p.ffn;
    const float g = ToF(h[j]);
    const float u = ToF(h[p.ffn + j]);
    p.out[idx] = ToBf(g / (1.0f + expf(-g)) * u);
  }
}

// One block per token: warps share the experts' dot products, then thread 0 does the fp32
// softmax, the top-k selection (strict >, scanning ids upwards: ties go to the lower id) and
// the renormalisation.
__global__ void RouterKernel(RouterParams p) {
  __shared__ float prob[kMaxExperts];
  const int t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const float* x = p.x + static_cast<int64_t>(t) * p.hidden;
  for (int e = warp; e < p.num_experts; e += nwarps) {
    const bf16* g = p.gate + static_cast<int64_t>(e) * p.hidden;
    float acc = 0.0f;
    for (int h = lane; h < p.hidden; h += 32) acc += x[h] * ToF(g[h]);
    acc = WarpSum(acc);
    if (lane == 0) prob[e] = acc;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  const int E = p.num_experts;
  float m = -INFINITY;
  for (int e = 0; e < E; ++e) m = fmaxf(m, prob[e]);
  float sum = 0.0f;
  for (int e = 0; e < E; ++e) {
    prob[e] = expf(prob[e] - m);
    sum += prob[e];
  }
  for (int e = 0; e < E; ++e) prob[e] /= sum;
  uint32_t taken[kMaxExperts / 32] = {};
  int ids[kMaxTopK];
  float ws[kMaxTopK];
  float kept = 0.0f;
  for (int j = 0; j < p.top_k; ++j) {
    int best = -1;
    float bv = 0.0f;
    for (int e = 0; e < E; ++e) {
      if (taken[e >> 5] & (1u << (e & 31))) continue;
      if (best < 0 || prob[e] > bv) {
        best = e;
        bv = prob[e];
      }
    }
    taken[best >> 5] |= 1u << (best & 31);
    ids[j] = best;
    ws[j] = bv;
    kept += bv;
  }
  for (int j = 0; j < p.top_k; ++j) {
    p.experts[t * p.top_k + j] = ids[j];
    p.weights[t * p.top_k + j] = ws[j] / kept;
  }
}

// The counting pass of MoePermute, one block of kIndexThreads threads. Pairs are taken in
// chunks of the block size; within a chunk a pair's rank among the earlier pairs of the same
// expert comes from __match_any_sync (within its warp) plus per-warp counts (earlier warps),
// plus a running cursor per expert (earlier chunks): a stable counting sort.
constexpr int kIndexThreads = 1024;
constexpr int kIndexWarps = kIndexThreads / 32;

__global__ void __launch_bounds__(kIndexThreads) MoeIndexKernel(MoePermuteParams p) {
  __shared__ int counts[kMaxExperts];
  __shared__ int base[kMaxExperts];
  __shared__ int cursor[kMaxExperts];
  __shared__ int slot_expert[kMaxExperts];
  __shared__ int warp_counts[kIndexWarps][kMaxExperts];
  __shared__ int num_active;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int E = p.ffn.num_experts;
  const int N = p.num_tokens * p.top_k;
  const bool packed = p.capacity == 0;

  for (int e = tid; e < E; e += blockDim.x) {
    counts[e] = 0;
    cursor[e] = 0;
  }
  __syncthreads();
  for (int i = tid; i < N; i += blockDim.x) atomicAdd(&counts[p.experts[i]], 1);
  __syncthreads();
  if (tid == 0) {
    int off = 0, slots = 0;
    for (int e = 0; e < E; ++e) {
      if (packed) {
        base[e] = off;
        off += counts[e];
      } else if (counts[e] > 0) {
        slot_expert[slots] = e;
        base[e] = slots * p.capacity;
        ++slots;
      } else {
        base[e] = 0;
      }
      p.counts[e] = counts[e];
      p.offsets[e] = base[e];
      if (p.routed_totals != nullptr) p.routed_totals[e] += counts[e];
    }
    p.offsets[E] = packed ? off : slots * p.capacity;
    num_active = slots;
  }
  __syncthreads();
  if (!packed) {
    const int64_t rows = static_cast<int64_t>(p.num_slots) * p.capacity;
    for (int64_t r = tid; r < rows; r += blockDim.x) p.row_token[r] = -1;
    const ExpertFfnParams& f = p.ffn;
    const int64_t H = f.hidden, F = f.ffn, cap = p.capacity;
    for (int s = tid; s < p.num_slots; s += blockDim.x) {
      // num_active >= 1 whenever N > 0; with N == 0 the pointers are never used.
      const int e = s < num_active ? slot_expert[s] : (num_active > 0 ? slot_expert[0] : 0);
      p.pointers.a13[s] = f.w13 + e * 2 * F * H;
      p.pointers.b13[s] = f.rows + s * cap * H;
      p.pointers.c13[s] = f.h13 + s * cap * 2 * F;
      p.pointers.a2[s] = f.w2 + e * H * F;
      p.pointers.b2[s] = f.act + s * cap * F;
      p.pointers.c2[s] = f.y + s * cap * H;
    }
  }
  __syncthreads();  // the -1 fill above precedes the row writes below
  const unsigned lanes_below = (1u << lane) - 1u;
  for (int c0 = 0; c0 < N; c0 += blockDim.x) {
    const int i = c0 + tid;
    const int e = i < N ? p.experts[i] : -1;
    for (int j = tid; j < kIndexWarps * E; j += blockDim.x) warp_counts[j / E][j % E] = 0;
    __syncthreads();
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int rank_in_warp = __popc(peers & lanes_below);
    if (e >= 0 && rank_in_warp == 0) warp_counts[warp][e] = __popc(peers);
    __syncthreads();
    if (e >= 0) {
      int before = cursor[e] + rank_in_warp;
      for (int w = 0; w < warp; ++w) before += warp_counts[w][e];
      const int row = (packed || before < p.capacity) ? base[e] + before : -1;
      p.pair_row[i] = row;
      if (row >= 0) p.row_token[row] = i / p.top_k;
    }
    __syncthreads();  // every read of cursor precedes its update
    for (int e2 = tid; e2 < E; e2 += blockDim.x) {
      int s = 0;
      for (int w = 0; w < kIndexWarps; ++w) s += warp_counts[w][e2];
      cursor[e2] += s;
    }
    __syncthreads();
  }
}

// One block per grouped row: rows[r] = x[row_token[r]] (padding rows untouched).
__global__ void GatherRowsKernel(const bf16* __restrict__ x, const int32_t* __restrict__ row_token,
                                 int hidden, bf16* __restrict__ rows) {
  const int64_t r = blockIdx.x;
  const int t = row_token[r];
  if (t < 0) return;
  const bf16* src = x + static_cast<int64_t>(t) * hidden;
  bf16* dst = rows + r * hidden;
  if ((hidden & 7) == 0) {  // 16-byte vectors (buffers are 256-byte aligned)
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint4* d4 = reinterpret_cast<uint4*>(dst);
    for (int j = threadIdx.x; j < hidden / 8; j += blockDim.x) d4[j] = s4[j];
  } else {
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = src[j];
  }
}

// Grid-stride x[i] += y[i].
__global__ void AddInPlaceKernel(float* __restrict__ x, const float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

// One block per token: out[t] = sum_j w[t, j] * y[pair_row[t, j]].
__global__ void UnpermuteKernel(MoeUnpermuteParams p) {
  const int t = blockIdx.x;
  int rows[kMaxTopK];
  float w[kMaxTopK];
#pragma unroll
  for (int j = 0; j < kMaxTopK; ++j) {
    rows[j] = j < p.top_k ? p.pair_row[t * p.top_k + j] : -1;
    w[j] = j < p.top_k ? p.weights[t * p.top_k + j] : 0.0f;
  }
  float* out = p.out + static_cast<int64_t>(t) * p.hidden;
  for (int h = threadIdx.x; h < p.hidden; h += blockDim.x) {
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxTopK; ++j) {
      if (rows[j] >= 0) acc += w[j] * p.y[static_cast<int64_t>(rows[j]) * p.hidden + h];
    }
    out[h] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
// Sampling. A token's key orders the vocabulary as the sampler walks it: the bits of its
// (positive) unnormalised probability above, the complement of its id below, so descending
// keys are (probability descending, id ascending) and every key is distinct. Masses are
// probabilities in 2^-40 fixed point: integer sums are exact, so the selection does not depend
// on summation order.
constexpr int kSampleThreads = 256;
constexpr float kMassScale = 1099511627776.0f;  // 2^40

struct SampleShared {
  unsigned long long hist[256];
  unsigned long long total;
  unsigned long long above;
  int digit;
  float scratch[32];
};

// As the CPU sampler: z = logit * (1 / temperature), p = exp(z - max z), unnormalised.
struct SampleRow {
  const float* logits;
  int vocab;
  float inv_temperature;
  float max_z;
};

__device__ __forceinline__ uint64_t SampleKey(const SampleRow& row, int id) {
  const float prob = expf(row.logits[id] * row.inv_temperature - row.max_z);
  return (static_cast<uint64_t>(__float_as_uint(prob)) << 32) |
         static_cast<uint64_t>(0xffffffffu - static_cast<uint32_t>(id));
}

__device__ __forceinline__ unsigned long long KeyMass(uint64_t key) {
  return __float2ull_rz(__uint_as_float(static_cast<uint32_t>(key >> 32)) * kMassScale);
}

// Total mass of the keys >= lo.
__device__ unsigned long long TotalMass(const SampleRow& row, uint64_t lo, SampleShared& sh) {
  if (threadIdx.x == 0) sh.total = 0;
  __syncthreads();
  unsigned long long local = 0;
  for (int i = threadIdx.x; i < row.vocab; i += blockDim.x) {
    const uint64_t key = SampleKey(row, i);
    if (key >= lo) local += KeyMass(key);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) local += __shfl_xor_sync(0xffffffffu, local, o);
  if ((threadIdx.x & 31) == 0) atomicAdd(&sh.total, local);
  __syncthreads();
  const unsigned long long total = sh.total;
  __syncthreads();
  return total;
}

// The largest key x >= lo whose weight W(x) = sum of weight(k) over keys lo <= k, x <= k
// reaches `target` (W(x) >= target, or > target when `strict`); weight is 1 or the key's mass.
// The caller guarantees such a key exists. Radix walk from the top byte: per byte a 256-bin
// histogram (integer atomics: deterministic), then warp 0 finds the bin where the running
// weight crosses the target.
__device__ uint64_t RadixSelect(const SampleRow& row, uint64_t lo, unsigned long long target,
                                bool by_mass, bool strict, SampleShared& sh) {
  const int tid = threadIdx.x, lane = tid & 31;
  uint64_t prefix = 0;
  unsigned long long above = 0;  // weight of keys >= lo whose higher bytes exceed prefix's
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += blockDim.x) sh.hist[b] = 0;
    __syncthreads();
    for (int i = tid; i < row.vocab; i += blockDim.x) {
      const uint64_t key = SampleKey(row, i);
      if (key < lo) continue;
      if (shift < 56 && (key >> (shift + 8)) != (prefix >> (shift + 8))) continue;
      atomicAdd(&sh.hist[(key >> shift) & 255], by_mass ? KeyMass(key) : 1ull);
    }
    __syncthreads();
    if (tid < 32) {
      // Lane l holds bins [d0, d0 + 8) with d0 = 8 * (31 - l): lane 0 the highest bytes.
      const int d0 = 8 * (31 - lane);
      unsigned long long chunk = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) chunk += sh.hist[d0 + j];
      unsigned long long incl = chunk;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
      }
      const unsigned long long excl = incl - chunk;
      auto reaches = [&](unsigned long long w) { return strict ? w > target : w >= target; };
      const bool mine = !reaches(above + excl) && reaches(above + incl);
      const unsigned ballot = __ballot_sync(0xffffffffu, mine);
      if (mine) {
        unsigned long long w = above + excl;
        int d = d0 + 7;
        for (; d > d0; --d) {
          if (reaches(w + sh.hist[d])) break;
          w += sh.hist[d];
        }
        sh.digit = d;
        sh.above = w;
      } else if (ballot == 0 && lane == 0) {
        sh.digit = 0;  // unreachable when the caller's guarantee holds
        sh.above = above;
      }
    }
    __syncthreads();
    prefix |= static_cast<uint64_t>(sh.digit) << shift;
    above = sh.above;
  }
  return prefix;
}

// One block per request.
__global__ void __launch_bounds__(kSampleThreads) SampleKernel(SampleParams p) {
  __shared__ SampleShared sh;
  const SampleRequest req = p.requests[blockIdx.x];
  const float* logits = p.logits + static_cast<int64_t>(req.row) * p.vocab;
  const int tid = threadIdx.x;

  if (!(req.temperature > 0.0f) || req.top_k == 1 || p.vocab == 1) {
    // Greedy: argmax, ties to the lowest id.
    float bv = -INFINITY;
    int bi = p.vocab;
    for (int i = tid; i < p.vocab; i += blockDim.x) {  // ids rise: strict > keeps the lowest
      const float v = logits[i];
      if (v > bv) {
        bv = v;
        bi = i;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) {
        bv = ov;
        bi = oi;
      }
    }
    __shared__ float wv[32];
    __shared__ int wi[32];
    if ((tid & 31) == 0) {
      wv[tid >> 5] = bv;
      wi[tid >> 5] = bi;
    }
    __syncthreads();
    if (tid == 0) {
      for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
        if (wv[w] > bv || (wv[w] == bv && wi[w] < bi)) {
          bv = wv[w];
          bi = wi[w];
        }
      }
      p.tokens[blockIdx.x] = bi < p.vocab ? bi : 0;
    }
    return;
  }

  float m = -INFINITY;
  for (int i = tid; i < p.vocab; i += blockDim.x) m = fmaxf(m, logits[i]);
  m = BlockMax(m, sh.scratch);
  const float inv_t = 1.0f / req.temperature;
  const SampleRow row{logits, p.vocab, inv_t, m * inv_t};  // max z = (max logit) * inv_t

  uint64_t lo = 0;
  if (req.top_k > 0 && req.top_k < p.vocab) {
    lo = RadixSelect(row, 0, static_cast<unsigned long long>(req.top_k), /*by_mass=*/false,
                     /*strict=*/false, sh);
  }
  if (req.top_p < 1.0f) {
    const unsigned long long z = TotalMass(row, lo, sh);
    double want = ceil(static_cast<double>(req.top_p) * static_cast<double>(z));
    unsigned long long target = want < 1.0 ? 1ull : static_cast<unsigned long long>(want);
    if (target > z) target = z;
    lo = RadixSelect(row, lo, target, /*by_mass=*/true, /*strict=*/false, sh);
  }
  const unsigned long long z = TotalMass(row, lo, sh);
  const double u = CounterUniform(req.seed, req.step);
  unsigned long long target = static_cast<unsigned long long>(u * static_cast<double>(z));
  if (target >= z) target = z - 1;  // z >= 2^40: the most likely token has mass 1
  const uint64_t key = RadixSelect(row, lo, target, /*by_mass=*/true, /*strict=*/true, sh);
  if (tid == 0)
    p.tokens[blockIdx.x] = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(key));
}

// =============================================================================================
// Launchers
// =============================================================================================


// Threads for a block that walks `n` elements of a row: n rounded up to a multiple of 32,
// within [32, 256].
int RowThreads(int64_t n) {
  return static_cast<int>(std::clamp<int64_t>((n + 31) / 32 * 32, 32, 256));
}

}  // namespace

absl::Status Embedding(const EmbeddingParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return absl::OkStatus();
  EmbeddingKernel<<<p.num_tokens, RowThreads(p.hidden), 0, stream>>>(p);
  return LaunchCheck("Embedding", stream);
}

absl::Status AddRmsNorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.num_rows == 0) return absl::OkStatus();
  AddRmsNormKernel<<<p.num_rows, RowThreads(p.hidden), 0, stream>>>(p);
  return LaunchCheck("AddRmsNorm", stream);
}

absl::Status Rope(const RopeParams& p, cudaStream_t stream) {
  if (p.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: odd head_dim ", p.head_dim));
  }
  if (p.num_tokens == 0) return absl::OkStatus();
  RopeKernel<<<p.num_tokens, RowThreads(p.num_heads * p.head_dim / 2), 0, stream>>>(p);
  return LaunchCheck("Rope", stream);
}

absl::Status SiluGate(const SiluGateParams& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.ffn;
  if (n == 0) return absl::OkStatus();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(CeilDiv(n, 256), 1 << 16));
  SiluGateKernel<<<blocks, 256, 0, stream>>>(p);
  return LaunchCheck("SiluGate", stream);
}

absl::Status KvWrite(const KvWriteParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return absl::OkStatus();
  KvWriteKernel<<<p.num_tokens, RowThreads(p.cache.kv_dim), 0, stream>>>(p);
  return LaunchCheck("KvWrite", stream);
}

absl::Status Router(const RouterParams& p, cudaStream_t stream) {
  if (p.num_experts < 1 || p.num_experts > kMaxExperts || p.top_k < 1 || p.top_k > kMaxTopK ||
      p.top_k > p.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("Router: unsupported experts ", p.num_experts, " / top-k ", p.top_k));
  }
  if (p.num_tokens == 0) return absl::OkStatus();
  RouterKernel<<<p.num_tokens, 128, 0, stream>>>(p);
  return LaunchCheck("Router", stream);
}

absl::Status MoePermute(const MoePermuteParams& p, cudaStream_t stream) {
  const int E = p.ffn.num_experts;
  if (E < 1 || E > kMaxExperts || p.top_k < 1 || p.top_k > kMaxTopK || p.capacity < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoePermute: unsupported experts ", E, " / top-k ", p.top_k));
  }
  const int64_t pairs = static_cast<int64_t>(p.num_tokens) * p.top_k;
  if (p.capacity > 0 &&
      (p.num_slots < std::min<int64_t>(E, pairs) || p.num_slots > E || p.pointers.a13 == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MoePermute: padded mode needs min(E, T*k) <= num_slots <= E and pointer tables; got ",
        p.num_slots, " slots"));
  }
  MoeIndexKernel<<<1, kIndexThreads, 0, stream>>>(p);
  RETURN_IF_ERROR(LaunchCheck("MoePermute(index)", stream));
  const int64_t rows = p.capacity == 0 ? pairs : static_cast<int64_t>(p.num_slots) * p.capacity;
  if (rows == 0) return absl::OkStatus();
  GatherRowsKernel<<<static_cast<unsigned>(rows), 128, 0, stream>>>(p.x, p.row_token, p.ffn.hidden,
                                                                    p.ffn.rows);
  return LaunchCheck("MoePermute(gather)", stream);
}

absl::Status GatherRows(const GatherRowsParams& p, cudaStream_t stream) {
  if (p.num_rows < 0 || p.hidden < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("GatherRows: ", p.num_rows, " rows of ", p.hidden, " values"));
  }
  if (p.num_rows == 0) return absl::OkStatus();
  GatherRowsKernel<<<static_cast<unsigned>(p.num_rows), 128, 0, stream>>>(p.x, p.row_of, p.hidden,
                                                                         p.rows);
  return LaunchCheck("GatherRows", stream);
}

absl::Status AddInPlace(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n < 0) return absl::InvalidArgumentError("AddInPlace: negative length");
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{1} << 20);
  AddInPlaceKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, y, n);
  return LaunchCheck("AddInPlace", stream);
}

absl::Status MoeUnpermute(const MoeUnpermuteParams& p, cudaStream_t stream) {
  if (p.top_k < 1 || p.top_k > kMaxTopK) {
    return absl::InvalidArgumentError(absl::StrCat("MoeUnpermute: top-k ", p.top_k));
  }
  if (p.num_tokens == 0) return absl::OkStatus();
  UnpermuteKernel<<<p.num_tokens, RowThreads(p.hidden), 0, stream>>>(p);
  return LaunchCheck("MoeUnpermute", stream);
}

absl::Status Sample(const SampleParams& p, cudaStream_t stream) {
  if (p.vocab < 1) return absl::InvalidArgumentError("Sample: empty vocabulary");
  if (p.num_requests == 0) return absl::OkStatus();
  SampleKernel<<<p.num_requests, kSampleThreads, 0, stream>>>(p);
  return LaunchCheck("Sample", stream);
}

}  // namespace switchyard::cuda
