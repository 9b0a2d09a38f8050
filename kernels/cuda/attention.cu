// Attention over the paged bf16 KV cache: a tiled flash-style prefill kernel and a decode
// kernel (one query row per sequence), then their launchers. Both compute scores and the
// softmax in fp32 with the online (running max / running sum) formulation, so a row's result
// does not depend on how its context is split into tiles or warps beyond fp32 rounding.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace switchyard::cuda {
namespace {

using detail::bf162;
using detail::ToBf;
using detail::ToF;
using detail::WarpSum;

// =============================================================================================
// Kernels
// =============================================================================================

// Decode: block (listed sequence, query head); warps take context positions round-robin, each
// lane holds head_dim / 32 dims of q and of the output accumulator; per position a warp-wide
// dot product, then the online-softmax update. Warps' partial (max, sum, acc) are combined
// through shared memory at the end.
constexpr int kDecodeThreads = 256;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kDimsPerLane = kMaxHeadDim / 32;

__global__ void __launch_bounds__(kDecodeThreads)
    DecodeAttentionKernel(AttentionParams p, DecodeSeqs ds, float scale) {
  __shared__ float s_m[kDecodeWarps];
  __shared__ float s_l[kDecodeWarps];
  __shared__ float s_acc[kDecodeWarps][kMaxHeadDim];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int s = ds.seq[blockIdx.x];
  const int h = blockIdx.y;
  const int D = p.heads.head_dim;
  const int kvh = h / (p.heads.n_heads / p.heads.n_kv_heads);
  const int n_tok = p.seqs.num_tokens[s];
  const int ctx = p.seqs.start_pos[s] + n_tok;
  const int64_t qrow = p.seqs.token_offset[s] + n_tok - 1;
  const int32_t* table = p.seqs.block_tables + static_cast<int64_t>(s) * p.seqs.block_table_stride;
  const int bs = p.cache.block_size;

  const float* q = p.q + qrow * p.q_row_stride + static_cast<int64_t>(h) * D;
  float qv[kDimsPerLane], acc[kDimsPerLane];
#pragma unroll
  for (int j = 0; j < kDimsPerLane; ++j) {
    const int d = lane + 32 * j;
    qv[j] = d < D ? q[d] * scale : 0.0f;
    acc[j] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int pos = warp; pos < ctx; pos += kDecodeWarps) {
    const int64_t base = (static_cast<int64_t>(table[pos / bs]) * bs + pos % bs) * p.cache.kv_dim +
                         static_cast<int64_t>(kvh) * D;
    const bf16* k = p.cache.k + base;
    const bf16* v = p.cache.v + base;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      const int d = lane + 32 * j;
      if (d < D) dot += qv[j] * ToF(k[d]);
    }
    dot = WarpSum(dot);
    const float m_new = fmaxf(m, dot);
    const float corr = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float e = expf(dot - m_new);
    l = l * corr + e;
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      const int d = lane + 32 * j;
      if (d < D) acc[j] = acc[j] * corr + e * ToF(v[d]);
    }
    m = m_new;
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < kDimsPerLane; ++j) {
    const int d = lane + 32 * j;
    if (d < D) s_acc[warp][d] = acc[j];
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, s_m[w]);
  float L = 0.0f;
  for (int w = 0; w < kDecodeWarps; ++w) {
    if (s_m[w] > -INFINITY) L += s_l[w] * expf(s_m[w] - M);
  }
  bf16* out = p.out + qrow * p.out_row_stride + static_cast<int64_t>(h) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kDecodeWarps; ++w) {
      if (s_m[w] > -INFINITY) o += s_acc[w][d] * expf(s_m[w] - M);
    }
    out[d] = ToBf(o / L);
  }
}

// Prefill: block (tile of kTileRows query rows of one sequence, query head), 128 threads.
// Thread (r = tid / 8, sub = tid % 8) owns query row r: score columns sub + 8j of each KV tile
// and output dims sub + 8j. Per KV tile of kTileCols positions:
//   1. stage K and V (bf16) from the paged cache into shared memory;
//   2. scores S = (q * scale) · K^T, causal mask, row max over the 8 threads of the row;
//   3. online softmax: rescale the running sum and accumulator by exp(m_old - m_new);
//   4. P to shared memory, acc += P · V.
// Shared rows are padded (q: D+1 floats, K: D+2 bf16, P: kTileCols+1 floats) so the 8 column
// threads of a row and the 4 rows of a warp hit distinct banks.
constexpr int kTileRows = kPrefillTileRows;
constexpr int kTileCols = 64;
constexpr int kPrefillThreads = 128;
constexpr int kRowThreads = kPrefillThreads / kTileRows;   // 8
constexpr int kColsPerThread = kTileCols / kRowThreads;    // 8
constexpr int kDimsPerThread = kMaxHeadDim / kRowThreads;  // 32
static_assert(kRowThreads == 8, "row reductions shuffle over 8 lanes");

size_t PrefillSmemBytes(int D) {
  return sizeof(float) * kTileRows * (D + 1) + sizeof(bf16) * kTileCols * (D + 2) +
         sizeof(bf16) * kTileCols * D + sizeof(float) * kTileRows * (kTileCols + 1);
}

__global__ void __launch_bounds__(kPrefillThreads)
    PrefillAttentionKernel(AttentionParams p, PrefillTiles tiles, float scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int D = p.heads.head_dim;
  const int q_ld = D + 1, k_ld = D + 2, p_ld = kTileCols + 1;
  float* q_s = reinterpret_cast<float*>(smem);
  bf16* k_s = reinterpret_cast<bf16*>(q_s + kTileRows * q_ld);
  bf16* v_s = k_s + kTileCols * k_ld;
  float* p_s = reinterpret_cast<float*>(v_s + kTileCols * D);

  const int tid = threadIdx.x;
  const int tile = blockIdx.x, h = blockIdx.y;
  const int s = tiles.tile_seq[tile];
  const int row0 = tiles.tile_row0[tile];
  const int n_tok = p.seqs.num_tokens[s];
  const int start = p.seqs.start_pos[s];
  const int64_t tok0 = p.seqs.token_offset[s] + row0;
  const int rows = min(kTileRows, n_tok - row0);
  const int kvh = h / (p.heads.n_heads / p.heads.n_kv_heads);
  const int32_t* table = p.seqs.block_tables + static_cast<int64_t>(s) * p.seqs.block_table_stride;
  const int bs = p.cache.block_size;
  const int half = D / 2;

  for (int idx = tid; idx < kTileRows * D; idx += kPrefillThreads) {
    const int r = idx / D, d = idx - r * D;
    q_s[r * q_ld + d] =
        r < rows ? p.q[(tok0 + r) * p.q_row_stride + static_cast<int64_t>(h) * D + d] * scale
                 : 0.0f;
  }

  const int r = tid / kRowThreads, sub = tid % kRowThreads;
  const bool active = r < rows;
  const int qpos = start + row0 + r;
  const int ctx_end = start + row0 + rows;  // one past the tile's last query position
  const int nd = D / kRowThreads;
  float m = -INFINITY, l = 0.0f;
  float acc[kDimsPerThread];
#pragma unroll
  for (int j = 0; j < kDimsPerThread; ++j) acc[j] = 0.0f;

  for (int n0 = 0; n0 < ctx_end; n0 += kTileCols) {
    __syncthreads();  // the previous tile is consumed (and q_s is loaded, first time round)
    for (int idx = tid; idx < kTileCols * half; idx += kPrefillThreads) {
      const int c = idx / half, dp = idx - c * half;
      const int pos = n0 + c;
      bf162 kk = __float2bfloat162_rn(0.0f), vv = kk;
      if (pos < ctx_end) {
        const int64_t base =
            (static_cast<int64_t>(table[pos / bs]) * bs + pos % bs) * p.cache.kv_dim +
            static_cast<int64_t>(kvh) * D + 2 * dp;
        kk = *reinterpret_cast<const bf162*>(p.cache.k + base);
        vv = *reinterpret_cast<const bf162*>(p.cache.v + base);
      }
      *reinterpret_cast<bf162*>(k_s + c * k_ld + 2 * dp) = kk;
      *reinterpret_cast<bf162*>(v_s + c * D + 2 * dp) = vv;
    }
    __syncthreads();

    float sc[kColsPerThread];
    float tmax = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < kColsPerThread; ++jj) {
      const int c = sub + kRowThreads * jj;
      const bf162* krow = reinterpret_cast<const bf162*>(k_s + c * k_ld);
      const float* qrow = q_s + r * q_ld;
      float dot = 0.0f;
      for (int dp = 0; dp < half; ++dp) {
        const float2 kf = __bfloat1622float2(krow[dp]);
        dot += qrow[2 * dp] * kf.x + qrow[2 * dp + 1] * kf.y;
      }
      sc[jj] = (active && n0 + c <= qpos) ? dot : -INFINITY;
      tmax = fmaxf(tmax, sc[jj]);
    }
#pragma unroll
    for (int o = 1; o < kRowThreads; o <<= 1) {
      tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
    }
    const float m_new = fmaxf(m, tmax);
    const float corr = m == -INFINITY ? 0.0f : expf(m - m_new);
    float psum = 0.0f;
#pragma unroll
    for (int jj = 0; jj < kColsPerThread; ++jj) {
      const float e = sc[jj] == -INFINITY ? 0.0f : expf(sc[jj] - m_new);
      p_s[r * p_ld + sub + kRowThreads * jj] = e;
      psum += e;
    }
#pragma unroll
    for (int o = 1; o < kRowThreads; o <<= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
    l = l * corr + psum;
    m = m_new;
    __syncwarp();  // a row's P is written by the 8 lanes of one warp
#pragma unroll
    for (int j = 0; j < kDimsPerThread; ++j) acc[j] *= corr;
    for (int c = 0; c < kTileCols; ++c) {
      const float pc = p_s[r * p_ld + c];
      const bf16* vrow = v_s + c * D + sub;
#pragma unroll
      for (int j = 0; j < kDimsPerThread; ++j) {
        if (j < nd) acc[j] += pc * ToF(vrow[kRowThreads * j]);
      }
    }
  }
  if (!active) return;
  bf16* out = p.out + (tok0 + r) * p.out_row_stride + static_cast<int64_t>(h) * D + sub;
#pragma unroll
  for (int j = 0; j < kDimsPerThread; ++j) {
    if (j < nd) out[kRowThreads * j] = ToBf(acc[j] / l);
  }
}

// =============================================================================================
// Launchers
// =============================================================================================

absl::Status CheckHeads(const AttentionParams& p, const char* what) {
  const AttentionHeads& a = p.heads;
  if (a.n_heads < 1 || a.n_kv_heads < 1 || a.n_heads % a.n_kv_heads != 0 || a.head_dim < 2 ||
      a.head_dim > kMaxHeadDim || a.head_dim % 2 != 0 ||
      p.cache.kv_dim != a.n_kv_heads * a.head_dim || p.cache.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": unsupported heads ", a.n_heads, "/", a.n_kv_heads, " x ", a.head_dim,
                     " (kv_dim ", p.cache.kv_dim, ", block size ", p.cache.block_size, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PrefillAttention(const AttentionParams& p, const PrefillTiles& tiles,
                              cudaStream_t stream) {
  RETURN_IF_ERROR(CheckHeads(p, "PrefillAttention"));
  if (p.heads.head_dim % kRowThreads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("PrefillAttention: head_dim ", p.heads.head_dim, " is not a multiple of 8"));
  }
  if (tiles.num_tiles == 0) return absl::OkStatus();
  const size_t smem = PrefillSmemBytes(p.heads.head_dim);
  if (smem > 48 * 1024) {
    RETURN_IF_ERROR(CudaCheck(
        cudaFuncSetAttribute(PrefillAttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)),
        "PrefillAttention: shared memory opt-in"));
  }
  const dim3 grid(tiles.num_tiles, p.heads.n_heads);
  const float scale = 1.0f / sqrtf(static_cast<float>(p.heads.head_dim));
  PrefillAttentionKernel<<<grid, kPrefillThreads, smem, stream>>>(p, tiles, scale);
  return LaunchCheck("PrefillAttention", stream);
}

absl::Status DecodeAttention(const AttentionParams& p, const DecodeSeqs& seqs,
                             cudaStream_t stream) {
  RETURN_IF_ERROR(CheckHeads(p, "DecodeAttention"));
  if (seqs.num_seqs == 0) return absl::OkStatus();
  const dim3 grid(seqs.num_seqs, p.heads.n_heads);
  const float scale = 1.0f / sqrtf(static_cast<float>(p.heads.head_dim));
  DecodeAttentionKernel<<<grid, kDecodeThreads, 0, stream>>>(p, seqs, scale);
  return LaunchCheck("DecodeAttention", stream);
}

}  // namespace switchyard::cuda
