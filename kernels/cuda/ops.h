// CUDA compute operations for the Mixtral forward pass: the device twins of kernels/cpu/ops.h
// and kernels/cpu/sampling.h. A plain C++ header (usable from .cc files): raw device pointers,
// sizes and an explicit stream go in, an absl::Status comes out.
//
//   RETURN_IF_ERROR(cuda::AddRmsNorm({.x = hidden, .residual = attn_out, .weight = gamma,
//                                     .num_rows = T, .hidden = H, .eps = eps, .out = normed},
//                                    stream));
//   RETURN_IF_ERROR(cuda::Gemm(ctx, {.x = normed, .rows = T, .w = wqkv, .n = N, .k = H,
//                                    .y = qkv, .out = cuda::GemmOut::kBf16}));
//
// Numerics: activations that feed a GEMM are bf16 and the KV cache is bf16; every
// accumulation, softmax and norm statistic is fp32. The residual stream, q/k/v (through RoPE
// into attention and the cache write), the attention and expert projections' outputs and the
// logits are fp32 (the caller picks each GEMM's output type). Keeping q/k/v in fp32 until the
// cache write costs little and removes the largest avoidable error: on brown-moe a CPU
// emulation of these rounding points gives max |logit error| 0.031 over 17 tokens, 0.086 when
// q/k/v are rounded to bf16 after their GEMM.
//
// Launchers only enqueue work: they return kInvalidArgument for shapes a kernel does not
// support (checked on the host, before launching) and kInternal when the launch itself fails
// (cudaGetLastError, message with file:line). Errors from the kernels' execution surface at
// the caller's next synchronisation. All pointers are device pointers unless a field says
// "host"; buffers do not overlap unless a function says "in place". Kernels never allocate.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace switchyard::cuda {

using bf16 = __nv_bfloat16;

// The one conversion of CUDA/cuBLAS error codes into absl::Status: OK for success, otherwise
// kInternal "WHAT: cudaErrorName (description) at FILE:LINE" (the call site's file and line).
absl::Status CudaCheck(cudaError_t err, const char* what, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE());
absl::Status CublasCheck(cublasStatus_t st, const char* what, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE());

// After a kernel launch on `stream`: the launch error, if any (as CudaCheck). With the
// environment variable SWITCHYARD_CUDA_SYNC=1 (a debug mode) it also synchronises the stream
// and reports an execution error under this kernel's name, so an asynchronous fault names the
// kernel that caused it rather than a later call; never while the stream is capturing a graph.
absl::Status LaunchCheck(const char* what, cudaStream_t stream,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE());

// True when a CUDA device can be used by this process (cudaGetDeviceCount succeeds and is > 0).
bool DeviceAvailable();

// ---------------------------------------------------------------------------------------------
// Elementwise and normalisation.

// out[t, :] = float(table[ids[t], :]). ids must be in [0, vocab) (not checked on the device).
struct EmbeddingParams {
  const bf16* table = nullptr;   // [vocab, hidden]
  const int32_t* ids = nullptr;  // [num_tokens]
  int num_tokens = 0;
  int hidden = 0;
  float* out = nullptr;  // [num_tokens, hidden]
};
absl::Status Embedding(const EmbeddingParams& p, cudaStream_t stream);

// Fused residual add + RMSNorm over `num_rows` rows. Row i reads row r = rows ? rows[i] : i:
//   if residual: x[r] += residual[r]   (in place, fp32)
//   out[i] = bf16(x[r] / sqrt(mean(x[r]^2) + eps) * weight)   (statistics in fp32)
//   out_f32[i] = the same before rounding, when out_f32 is set (the router's input)
// `rows` must not repeat a row when `residual` is set (x is updated in place).
struct RmsNormParams {
  float* x = nullptr;               // [*, hidden]
  const float* residual = nullptr;  // [*, hidden] or null
  const float* weight = nullptr;    // [hidden]
  const int32_t* rows = nullptr;    // [num_rows] or null (identity)
  int num_rows = 0;
  int hidden = 0;
  float eps = 1e-5f;
  bf16* out = nullptr;       // [num_rows, hidden]
  float* out_f32 = nullptr;  // [num_rows, hidden] or null
};
absl::Status AddRmsNorm(const RmsNormParams& p, cudaStream_t stream);

// Rotate-half RoPE, in place, on the first `num_heads` heads of each row of x (row t at
// positions[t]); matches cpu::Rope: angle = float(pos) * inv_freq[i] in fp32, then cos/sin.
// With a fused [q | k | v] row, num_heads = n_heads + n_kv_heads rotates q and k together.
struct RopeParams {
  float* x = nullptr;
  int64_t row_stride = 0;  // elements between rows
  int num_tokens = 0;
  int num_heads = 0;
  int head_dim = 0;                    // even
  const int32_t* positions = nullptr;  // [num_tokens]
  const float* inv_freq = nullptr;     // [head_dim / 2], from cpu::RopeInvFreq
};
absl::Status Rope(const RopeParams& p, cudaStream_t stream);

// out[r, j] = bf16(silu(h[r, j]) * h[r, ffn + j]) for a fused [gate | up] row of 2*ffn values.
struct SiluGateParams {
  const bf16* h = nullptr;  // [rows, 2 * ffn]
  int64_t rows = 0;
  int ffn = 0;
  bf16* out = nullptr;  // [rows, ffn]
};
absl::Status SiluGate(const SiluGateParams& p, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Paged KV cache and attention.

// One layer of the device KV cache: the layout of cpu::KvLayer in bf16. Slot s (= block *
// block_size + offset) holds kv_dim = n_kv_heads * head_dim values at s * kv_dim.
struct PagedKv {
  bf16* k = nullptr;  // [num_blocks, block_size, kv_dim]
  bf16* v = nullptr;
  int block_size = 0;
  int kv_dim = 0;
};

// cache[slot_mapping[t]] = bf16(k[t], v[t]); a negative slot skips the row.
struct KvWriteParams {
  const float* k = nullptr;  // row t at k + t * row_stride, kv_dim values
  const float* v = nullptr;
  int64_t row_stride = 0;
  int num_tokens = 0;
  const int32_t* slot_mapping = nullptr;  // [num_tokens]
  PagedKv cache;
};
absl::Status KvWrite(const KvWriteParams& p, cudaStream_t stream);

// The sequences of a step as attention sees them (arrays indexed by sequence):
// sequence s owns token rows [token_offset[s], + num_tokens[s]) at positions start_pos[s] + i,
// and its block table is block_tables[s * block_table_stride .. + ceil(ctx / block_size)).
struct SeqBatch {
  const int32_t* token_offset = nullptr;
  const int32_t* start_pos = nullptr;
  const int32_t* num_tokens = nullptr;
  const int32_t* block_tables = nullptr;
  int block_table_stride = 0;
};

struct AttentionHeads {
  int n_heads = 0;
  int n_kv_heads = 0;  // divides n_heads; head h reads KV head h / (n_heads / n_kv_heads)
  int head_dim = 0;
};

// Query rows of the prefill kernel's blocks: one block covers up to kPrefillTileRows rows of
// one sequence. Callers list tiles (sequence, first row within the sequence).
inline constexpr int kPrefillTileRows = 16;
inline constexpr int kMaxHeadDim = 256;

// Causal attention of query rows over the paged cache (K/V of every position up to the query's
// already written): row t of sequence s attends to positions [0, start_pos[s] + i]. Scale
// 1/sqrt(head_dim), softmax in fp32. q rows at q + t * q_row_stride (head h at h * head_dim),
// out rows at out + t * out_row_stride.
struct AttentionParams {
  const float* q = nullptr;
  int64_t q_row_stride = 0;
  bf16* out = nullptr;
  int64_t out_row_stride = 0;
  AttentionHeads heads;
  PagedKv cache;
  SeqBatch seqs;
};

// Flash-style prefill: tiles of kPrefillTileRows query rows, online softmax over KV tiles
// staged in shared memory. tile_seq/tile_row0 list the tiles. head_dim % 8 == 0, <= 256.
struct PrefillTiles {
  const int32_t* tile_seq = nullptr;   // [num_tiles] sequence index
  const int32_t* tile_row0 = nullptr;  // [num_tiles] first query row within the sequence
  int num_tiles = 0;
};
absl::Status PrefillAttention(const AttentionParams& p, const PrefillTiles& tiles,
                              cudaStream_t stream);

// Decode: the last query row of each listed sequence (one token per sequence in a decode
// step) over its whole context. head_dim <= 256.
struct DecodeSeqs {
  const int32_t* seq = nullptr;  // [num_seqs] sequence indices into SeqBatch
  int num_seqs = 0;
};
absl::Status DecodeAttention(const AttentionParams& p, const DecodeSeqs& seqs, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Mixture of experts.

inline constexpr int kMaxExperts = 256;
inline constexpr int kMaxTopK = 8;

// Router, one block per token: logits = x · gate^T (fp32 accumulation) -> softmax over all E in
// fp32 -> top-k (ties to the lower expert id) -> weights renormalised to sum 1; experts and
// weights [T, top_k] in descending weight order (as cpu::RouterTopK). x is fp32 (the norm's
// unrounded output): routing decisions are discrete, and a bf16 input flips near-ties that the
// fp32 reference does not.
struct RouterParams {
  const float* x = nullptr;    // [num_tokens, hidden]
  const bf16* gate = nullptr;  // [num_experts, hidden]
  int num_tokens = 0;
  int hidden = 0;
  int num_experts = 0;         // <= kMaxExperts
  int top_k = 0;               // <= min(kMaxTopK, num_experts)
  int32_t* experts = nullptr;  // [num_tokens, top_k]
  float* weights = nullptr;    // [num_tokens, top_k]
};
absl::Status Router(const RouterParams& p, cudaStream_t stream);

// Device pointer tables for the batched expert GEMMs (cublasGemmBatchedEx), one entry per slot,
// filled by MoePermute in padded mode: slot s runs expert slot_expert[s] over `capacity` rows.
struct BatchedExpertPointers {
  const void** a13 = nullptr;  // [num_slots] expert w13 (2F x H)
  const void** b13 = nullptr;  // grouped rows of the slot
  void** c13 = nullptr;        // h13 rows of the slot
  const void** a2 = nullptr;   // expert w2 (H x F)
  const void** b2 = nullptr;   // act rows of the slot
  void** c2 = nullptr;         // y rows of the slot
};

// Expert weights of one layer and the grouped buffers the expert FFN runs over.
struct ExpertFfnParams {
  const bf16* w13 = nullptr;  // [E, 2F, H]: per expert w1 rows then w3 rows
  const bf16* w2 = nullptr;   // [E, H, F]
  int num_experts = 0;
  int hidden = 0;        // H
  int ffn = 0;           // F
  bf16* rows = nullptr;  // [R, H] grouped input rows
  bf16* h13 = nullptr;   // [R, 2F]
  bf16* act = nullptr;   // [R, F]
  float* y = nullptr;    // [R, H] expert outputs, fp32
};

// Permutation of token rows into per-expert order, fused with packing. A counting pass over
// the (token, choice) pairs, stable in (token, choice) order like worker/moe.cc, gives:
//   counts[e]       rows routed to expert e
//   row_token[r]    source token of grouped row r (-1 for padding rows)
//   pair_row[t*k+j] grouped row of token t's j-th choice (-1 if dropped)
// and copies x[row_token[r]] into ffn.rows[r].
// Packed mode (capacity == 0): expert e's rows are [offsets[e], offsets[e] + counts[e]), in
//   increasing e, R = num_tokens * top_k rows.
// Padded mode (capacity > 0, for static shapes): the active experts in increasing id take slots
//   0, 1, ..., slot s owns rows [s * capacity, (s + 1) * capacity); num_slots * capacity rows,
//   rows past a slot's count are padding; unused slots repeat slot 0's expert. `pointers` is
//   filled for cublasGemmBatchedEx. capacity >= num_tokens suffices when a token's choices are
//   distinct (the router's are); rows over capacity are dropped (pair_row -1), never written
//   out of bounds. num_slots >= min(num_experts, num_tokens * top_k).
// Experts ids must be in [0, num_experts).
struct MoePermuteParams {
  const bf16* x = nullptr;           // [num_tokens, hidden]
  const int32_t* experts = nullptr;  // [num_tokens, top_k]
  int num_tokens = 0;
  int top_k = 0;
  int capacity = 0;                  // 0: packed
  int num_slots = 0;                 // padded mode only
  ExpertFfnParams ffn;               // rows written; w13/w2/h13/act/y used for the pointer tables
  int32_t* counts = nullptr;         // [num_experts]
  int32_t* offsets = nullptr;        // [num_experts + 1] packed offsets (padded: slot * capacity)
  int32_t* row_token = nullptr;      // [R]
  int32_t* pair_row = nullptr;       // [num_tokens * top_k]
  BatchedExpertPointers pointers;    // padded mode only
  int64_t* routed_totals = nullptr;  // [num_experts] or null: += counts (observability)
};
absl::Status MoePermute(const MoePermuteParams& p, cudaStream_t stream);

// out[t] = sum_j weights[t, j] * y[pair_row[t, j]] (fp32; each token gathers its k rows, no
// atomics; a row of -1 contributes nothing).
struct MoeUnpermuteParams {
  const float* y = nullptr;           // [R, hidden]
  const int32_t* pair_row = nullptr;  // [num_tokens, top_k]
  const float* weights = nullptr;     // [num_tokens, top_k]
  int num_tokens = 0;
  int top_k = 0;
  int hidden = 0;
  float* out = nullptr;  // [num_tokens, hidden]
};
absl::Status MoeUnpermute(const MoeUnpermuteParams& p, cudaStream_t stream);

// rows[r] = x[row_of[r]] for r < num_rows (bf16 rows of `hidden`; a negative index leaves
// the row untouched): the gather of a device dispatch (worker/device_dispatch.h) packing rows
// by destination or by expert.
struct GatherRowsParams {
  const bf16* x = nullptr;          // [*, hidden]
  const int32_t* row_of = nullptr;  // [num_rows]
  int64_t num_rows = 0;
  int hidden = 0;
  bf16* rows = nullptr;  // [num_rows, hidden]
};
absl::Status GatherRows(const GatherRowsParams& p, cudaStream_t stream);

// x[i] += y[i] for i < n (fp32, in place): a stage's last residual add.
absl::Status AddInPlace(float* x, const float* y, int64_t n, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// GEMMs (cuBLAS, bf16 inputs, fp32 compute).

// The cuBLAS handle and the stream it is bound to. Bind once with BindCublas (which also gives
// cuBLAS a fixed workspace so calls can be captured in CUDA graphs); cublasSetStream resets
// the workspace, so the GEMM functions never rebind.
struct GemmContext {
  cublasHandle_t handle = nullptr;
  cudaStream_t stream = nullptr;
};
absl::Status BindCublas(const GemmContext& ctx, void* workspace, size_t workspace_bytes);

enum class GemmOut { kBf16, kF32 };

// y[rows, n] = x[rows, k] · w[n, k]^T (the Hugging Face Linear layout), fp32 accumulation.
struct GemmParams {
  const bf16* x = nullptr;
  int rows = 0;
  const bf16* w = nullptr;
  int n = 0;
  int k = 0;
  void* y = nullptr;  // bf16 or float per `out`
  GemmOut out = GemmOut::kBf16;
};
absl::Status Gemm(const GemmContext& ctx, const GemmParams& p);

// SwiGLU experts over packed grouped rows: for each expert with host_counts[e] > 0, one
// cublasGemmEx for [gate | up] = rows · w13_e^T, then one SiluGate over all rows, then one
// cublasGemmEx per expert for y = act · w2_e^T. `host_counts` is host memory (from
// MoePermute's counts, copied back); rows are in MoePermute's packed order.
absl::Status ExpertFfnPacked(const GemmContext& ctx, const ExpertFfnParams& p,
                             const int32_t* host_counts);

// The same over MoePermute's padded slots with two cublasGemmBatchedEx calls whose shapes
// depend only on (num_slots, capacity): capturable in a CUDA graph. Rows past a slot's count
// are computed and ignored (rows are independent in a GEMM).
absl::Status ExpertFfnBatched(const GemmContext& ctx, const ExpertFfnParams& p,
                              const BatchedExpertPointers& ptrs, int num_slots, int capacity);

// ---------------------------------------------------------------------------------------------
// Sampling.

// One sampling request: a row of logits and the parameters of SamplingParams
// (kernels/cpu/sampling.h). Plain data, copied host -> device as is.
struct SampleRequest {
  int32_t row = 0;           // logits row
  int32_t top_k = 0;         // 0: no top-k filter
  float temperature = 0.0f;  // <= 0: greedy
  float top_p = 1.0f;        // >= 1: no nucleus filter
  uint64_t seed = 0;
  uint64_t step = 0;  // RNG counter (SeqEntry::sample_index)
};

// tokens[i] = the token drawn for requests[i], one block per request:
// - greedy (temperature not > 0, or top_k == 1): argmax, ties to the lowest id;
// - otherwise, as SampleToken: z = logit * (1 / temperature), p = exp(z - max z), tokens
//   ordered by (p descending, id ascending); keep the first top_k; of those keep the smallest
//   prefix whose mass reaches top_p of the kept mass; draw u = CounterUniform(seed, step) and
//   return the first token of the prefix whose cumulative mass exceeds u * prefix mass.
//   Masses are summed in 2^-40 fixed point, so the draw is exact and deterministic on the
//   device; it can differ from the CPU's (double sums) when u * mass falls within rounding
//   of a cumulative boundary, or at the top_k cut when tokens of different z share one
//   rounded p (the CPU orders by z): both are near-zero-mass cases.
struct SampleParams {
  const float* logits = nullptr;  // [*, vocab]
  int vocab = 0;
  const SampleRequest* requests = nullptr;  // [num_requests]
  int num_requests = 0;
  int32_t* tokens = nullptr;  // [num_requests]
};
absl::Status Sample(const SampleParams& p, cudaStream_t stream);

}  // namespace switchyard::cuda
